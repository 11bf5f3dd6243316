"""Every registered model block, compiled through dagcv as a one-block spec: it checks, builds (the build
verifies the declared contract on meta tensors), lowers to fx, and computes what the block computes when
called by hand with the same weights, in train and eval mode."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.distributions import Categorical, Distribution

from dagcv.compiler import compile_spec
from dagcv.registry import Contract
from dagcv.spec import parse_spec_text
from dagcv.types import KINDS, evaluate, parse_port_type
from tests.blocks.test_contracts import EXAMPLE_PARAMS, EXAMPLE_SIZES, UNCONNECTED, shipped_modules


def one_block_spec(contract: Contract, sizes: dict[str, Any]) -> str:
    """A spec with one input per port of ``contract`` (dims from the example sizes) feeding one node."""
    inputs, wires = [], []
    env = {k: v for k, v in {**EXAMPLE_PARAMS.get(contract.name, {}), **sizes}.items() if type(v) is int}
    for port in contract.inputs:
        if port.name in UNCONNECTED.get(contract.name, ()):
            continue
        ptype = parse_port_type(port.type)
        dims = []
        for d in ptype.dims:
            value = sizes.get(d.expr)
            if d.variadic:
                dims += [str(v) for v in value]
            elif d.expr == "B":
                dims.append("B")
            else:
                dims.append(str(value if value is not None else evaluate(d.expr, env).value))
        vocab = f" vocab {evaluate(ptype.vocab.expr, env).value}" if ptype.vocab is not None else ""
        inputs.append(f"  in_{port.name}: {ptype.kind}[{', '.join(dims)}]{vocab}")
        wires.append(f"{port.name}: in_{port.name}")
    params = "".join(f", {k}: {v!r}" for k, v in EXAMPLE_PARAMS.get(contract.name, {}).items())
    return "\n".join([
        "dagcv: 1", f"name: one_{contract.name}", "inputs:", *inputs, f"sizes: {{B: {sizes.get('B', 2)}}}",
        "blocks:", f"  node: {{type: {contract.name}, in: {{{', '.join(wires)}}}, mode: both{params}}}",
        "outputs:", *(f"  {p.name}: node.{p.name}" for p in contract.outputs),
    ]) + "\n"  # fmt: skip


def runtime_example(contract: Contract, built) -> list[torch.Tensor]:
    from dagcv.lower import export_example_inputs

    return list(export_example_inputs(built, "eval"))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, Categorical):
        return torch.equal(a.logits, b.logits)
    if isinstance(a, Distribution):  # a Gaussian
        return torch.equal(a.mean, b.mean) and torch.equal(a.stddev, b.stddev)
    return torch.equal(a, b)


@pytest.mark.parametrize(("contract", "obj"), [pytest.param(c, o, id=c.name) for c, o in shipped_modules()])
def test_block_lowers_and_matches_direct_call(contract: Contract, obj: Any) -> None:
    sizes = EXAMPLE_SIZES[contract.name][0]
    compiled = compile_spec(parse_spec_text(one_block_spec(contract, sizes), f"{contract.name}.yaml"))
    model = compiled.module
    block = model.node
    gm = model.graph_module("train")
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["node"]
    torch.manual_seed(0)
    args = runtime_example(contract, compiled.built)
    for mode in ("eval", "train"):
        model.train(mode == "train")
        state = copy.deepcopy(block.state_dict())  # blocks with running state (an EMA codebook) move it per call
        torch.manual_seed(1)
        out = model(*args)
        block.load_state_dict(state)
        torch.manual_seed(1)
        direct = block(*args)
        direct = direct if isinstance(direct, dict) else {contract.outputs[0].name: direct}
        for port in contract.outputs:
            assert same(out[port.name], direct[port.name]), f"{contract.name}.{port.name} differs in {mode} mode"
            if KINDS[parse_port_type(port.type).kind].tensor:
                assert tuple(out[port.name].shape) == compiled.built.shapes[("node", port.name)]
