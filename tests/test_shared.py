"""Shared weights: a node that ``shares`` another calls the same module (a Siamese tower, a GAN critic on real and
fake batches), checked, drawn as one block used twice, stored once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dagcv.compiler import check_file, compile_file
from dagcv.errors import SpecError
from dagcv.spec import parse_spec_text
from dagcv.spec.printer import to_dsl

SIAMESE = """dagcv: 1
name: siamese
inputs:
  left: Image[B, 1, 28, 28]
  right: Image[B, 1, 28, 28]
blocks:
  tower: {type: lenet_features, in: left}
  tower_right: {shares: tower, in: right}
  head: {type: mlp_head, in: tower, num_classes: 4}
  head_right: {shares: head, in: tower_right}
outputs:
  a: head
  b: head_right
"""


def test_one_module_two_calls_stored_once_and_trained_by_both(write_spec) -> None:
    compiled = compile_file(write_spec(SIAMESE))
    model = compiled.module
    keys = list(model.state_dict())
    assert all(k.startswith(("tower.", "head.")) for k in keys) and len(keys) == 6
    left, right = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    out = model(left=left, right=right)
    assert torch.equal(out["b"], model.head(model.tower(right)))
    out["b"].sum().backward()  # the second call alone trains the one module
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    files = compiled.files()
    assert "tower_right = self.tower(right)" in files["model.py"]
    namespace: dict = {}
    exec(compile(files["model.py"], "model.py", "exec"), namespace)
    ejected = namespace["Siamese"]()
    ejected.load_state_dict(model.state_dict())
    assert torch.equal(ejected(left, right)["b"], out["b"])
    again = compile_file(write_spec(files["spec.resolved.yaml"], "resolved.yaml"))  # the resolved spec is a spec
    assert list(again.module.state_dict()) == keys


def test_the_dsl_writes_a_shared_node_as_an_ampersand(write_spec) -> None:
    spec = parse_spec_text(SIAMESE, "s.yaml")
    dsl = to_dsl(spec)
    assert "tower_right = &tower <- right" in dsl
    assert parse_spec_text(dsl, "s.dagcv").model_dump() == spec.model_dump()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("tower_right: {shares: towr, in: right}", "'tower_right' shares unknown block 'towr'"),
        ("tower_right: {shares: head_right, in: right}", "which itself shares 'head'"),
        ("tower_right: {shares: tower, in: right, in_channels: 1}", "takes no parameters of its own"),
        ("tower_right: {shares: tower, type: lenet_features, in: right}", "give a block 'type', or 'shares"),
    ],
)
def test_sharing_mistakes_are_positioned_errors(write_spec, change: str, message: str) -> None:
    text = SIAMESE.replace("tower_right: {shares: tower, in: right}", change)
    with pytest.raises(SpecError) as info:
        check_file(write_spec(text))
    d = info.value.diagnostics[0]
    assert message in d.message and d.span is not None and d.span.line == 8, info.value.format()


def test_a_shared_module_must_fit_both_inputs(write_spec) -> None:
    text = SIAMESE.replace("right: Image[B, 1, 28, 28]", "right: Image[B, 3, 28, 28]")
    with pytest.raises(SpecError) as info:
        check_file(write_spec(text))
    d = info.value.diagnostics[0]
    assert "'tower_right' shares 'tower', but its inputs imply in_channels=3 where 'tower' has 1" in d.message
    assert d.span.line == 8


def test_a_shared_node_is_drawn_as_the_same_block(write_spec, tmp_path: Path) -> None:
    from dagcv.render import render_file

    target = tmp_path / "g.dot"
    render_file(write_spec(SIAMESE), target)
    assert "shares tower" in target.read_text()
