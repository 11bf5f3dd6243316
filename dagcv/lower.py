"""Lowering: our graph → a straight-line program per mode → ``torch.fx`` GraphModules and ejected Python.

Nothing is traced: each mode's program is emitted node by node, blocks as leaf ``call_module`` nodes named after
the spec's nodes. :class:`DagModule` holds the blocks as children (``state_dict`` keys start with node names)
and dispatches ``forward`` on ``self.training`` to the GraphModule of that mode::

    >>> model = lower(built)                        # doctest: +SKIP
    >>> print(model.code)                           # doctest: +SKIP
    def forward(self, image, label = None):
        features = self.features(image);  image = None
        classifier = self.classifier(features);  features = None
        return {'logits': classifier}
"""

from __future__ import annotations

import inspect
import keyword
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from dagcv.build import BuiltGraph
from dagcv.graph import INPUT_PORT, MODES, SpecGraph, source_argument
from dagcv.types import KINDS


@dataclass(frozen=True)
class Value:
    """A run-time value: output ``port`` of ``node``."""

    node: str
    port: str


@dataclass
class Step:
    """One block call."""

    node: str
    args: list[Value | None]
    multi: bool  # returns a dict of its output ports
    target: str = ""  # the module it calls: its own, or the one of the node it shares

    def __post_init__(self) -> None:
        self.target = self.target or self.node


@dataclass(frozen=True)
class Arg:
    """A ``forward`` argument: ``used`` in this mode or not; ``optional`` args default to None."""

    name: str
    value: Value
    used: bool
    optional: bool


@dataclass
class Program:
    """What one mode computes: run-time inputs, block calls in order, and outputs."""

    mode: str
    inputs: list[Arg] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    outputs: dict[str, Value] = field(default_factory=dict)

    def signature(self) -> tuple:
        return (tuple(self.inputs), tuple((s.node, tuple(s.args)) for s in self.steps), tuple(self.outputs.items()))


def runtime_inputs(sg: SpecGraph) -> list[tuple[str, Value]]:
    """Arguments of ``forward``: spec inputs, then the run-time outputs of source blocks (an env's observation)."""
    out = [(name, Value(name, INPUT_PORT)) for name in sg.spec.inputs if not _static_input(sg, name)]
    for name in sg.blocks():
        contract = sg.node(name)["contract"]
        if contract.is_source:
            for port in contract.outputs:
                if not KINDS[port.parsed.kind].static:
                    out.append((source_argument(name, port.name), Value(name, port.name)))
    return out


def _static_input(sg: SpecGraph, name: str) -> bool:
    """An input of a static kind (``ActionSpace[5]``) only carries dims for inference; it is no argument."""
    port_type = sg.node(name).get("type")
    return port_type is not None and KINDS[port_type.kind].static


def program_output(sg: SpecGraph, name: str) -> tuple[str, str]:
    """What a program output names: a spec output, else a block's output written as in the spec (``node`` for
    its first output port, ``node.port``): a sampler's ``denoise`` program computes the denoiser's output, which
    no spec lists among its outputs."""
    if name in sg.outputs:
        return sg.outputs[name]
    node, _, port = name.partition(".")
    if node not in sg.g or sg.node(node)["kind"] != "block" or "contract" not in sg.node(node):
        raise KeyError(f"no spec output or block {name!r}; outputs: {', '.join(sg.outputs)}")
    ports = [p.name for p in sg.node(node)["contract"].outputs]
    if port and port not in ports:
        raise KeyError(f"block '{node}' has no output port '{port}'; ports: {', '.join(ports)}")
    return node, port or ports[0]


def make_program(sg: SpecGraph, mode: str, outputs: Sequence[str] | None = None, given: Sequence[str] = ()) -> Program:
    """The straight-line program of ``mode``: every node of that mode and every spec output, or, given
    ``outputs`` (spec output names), only those outputs and the nodes they depend on (a *named program*: a loop's
    ``act`` computes the action distribution without the losses). Its inputs are then the ones it reads.

    ``given`` names nodes whose outputs the caller passes in instead (arguments ``<node>_<port>``): the program
    is cut there (a spec output stands for its node). A GAN's critic step is given the generator's fake batch,
    detached; a second stage is given the codes a frozen first stage computed once."""
    program = Program(mode)
    used: set[Value] = set()
    needed: set[Value] = set()  # values some required port reads; an input read only by optional ports may be None
    given = [sg.outputs[g][0] if g in sg.outputs else g for g in given]  # spec outputs name their nodes
    targets = sg.outputs if outputs is None else {o: program_output(sg, o) for o in outputs}
    wanted = None if outputs is None else sg.upstream([node for node, _ in targets.values()], stop=given)
    for name in sg.order():
        data = sg.node(name)
        if data["kind"] != "block" or mode not in MODES[data["mode"]] or data["contract"].is_source:
            continue
        if (wanted is not None and name not in wanted) or name in given:
            continue
        contract = data["contract"]
        wired = {d["dst_port"]: Value(u, d["src_port"]) for u, d in sg.in_edges(name)}
        ports = [p for p in contract.inputs if not KINDS[p.parsed.kind].static]
        args = [wired.get(p.name) for p in ports]
        while args and args[-1] is None:
            args.pop()
        args = [a if a is None or mode in MODES[sg.node(a.node)["mode"]] else None for a in args]
        used.update(a for a in args if a is not None)
        needed.update(a for a, p in zip(args, ports, strict=False) if a is not None and not p.parsed.optional)
        program.steps.append(Step(name, args, multi=len(contract.outputs) > 1, target=data.get("shares", name)))
    for out, (node, port) in targets.items():
        if mode in MODES[sg.node(node)["mode"]]:
            program.outputs[out] = Value(node, port)
            used.add(Value(node, port))
            needed.add(Value(node, port))
    optional = False
    cut = [(source_argument(v.node, v.port), v) for v in sorted(used, key=lambda v: (v.node, v.port))]
    cut = [(name, v) for name, v in cut if v.node in given]
    for name, value in [*cut, *runtime_inputs(sg)]:
        if outputs is not None and value not in used:
            continue  # a named program takes only what it reads
        optional = optional or value not in needed  # Python: no required argument after an optional one
        program.inputs.append(Arg(name, value, value in used, optional))
    return program


# ---------------------------------------------------------------------------------------------------------------
# torch.fx


def to_fx(program: Program, root: nn.Module, class_name: str) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[Value, fx.Node] = {}
    for arg in program.inputs:
        default = None if arg.optional else inspect.Parameter.empty
        env[arg.value] = graph.placeholder(arg.name, default_value=default)
    for step in program.steps:
        args = tuple(env[a] if a is not None else None for a in step.args)
        call = graph.create_node("call_module", step.target, args, name=step.node)  # named after the spec's node
        if not step.multi:
            env[Value(step.node, _only_port(root, step))] = call
            continue
        for port in _ports(root, step):
            item = graph.create_node("call_function", operator.getitem, (call, port), name=f"{step.node}_{port}")
            env[Value(step.node, port)] = item
    graph.output({name: env[v] for name, v in program.outputs.items()})
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name=class_name)
    return gm


def _ports(root: nn.Module, step: Step) -> list[str]:
    return root.output_ports[step.node]  # type: ignore[index]


def _only_port(root: nn.Module, step: Step) -> str:
    return _ports(root, step)[0]


class DagModule(nn.Module):
    """The lowered model: blocks as children, one fx GraphModule per mode, ``forward`` picked by ``training``.

    ``state_dict`` keys start with the spec's node names; ``print(model.code)`` shows the current mode's
    program. Works with ``torch.compile`` and ``torch.export``.
    """

    def __init__(self, blocks: dict[str, nn.Module], output_ports: dict[str, list[str]], name: str) -> None:
        super().__init__()
        for node, module in blocks.items():
            self.add_module(node, module)
        self.spec_name = name
        self.output_ports = output_ports
        # Plain attributes (not submodules): the GraphModules share our children, so state_dict lists each
        # parameter once and .to()/.train() reach them through us.
        self._graph_modules: dict[str, fx.GraphModule] = {}
        self._programs: dict[tuple[tuple[str, ...], str, tuple[str, ...]], fx.GraphModule] = {}
        self._sg: SpecGraph | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        gm = self._graph_modules["train" if self.training else "eval"]
        return gm.forward(*args, **kwargs)

    def graph_module(self, mode: str | None = None) -> fx.GraphModule:
        """The GraphModule of ``mode`` (default: the current one)."""
        return self._graph_modules[mode or ("train" if self.training else "eval")]

    def program(self, outputs: Sequence[str], mode: str = "eval", given: Sequence[str] = ()) -> fx.GraphModule:
        """The named program computing ``outputs`` (spec output names, or blocks' outputs: see
        :func:`program_output`) from what they need, lowered once.

        All programs call this module's children, so they share parameters, optimizer state and state_dict keys::

            act = model.program(["policy", "value"])          # observation → distribution, value
            update = model.program(["pg_loss", "v_loss"], "train")
        """
        key = (tuple(outputs), mode, tuple(given))
        if key not in self._programs:
            assert self._sg is not None, "a DagModule made by lower() knows its graph"
            program = make_program(self._sg, mode, outputs, given)
            self._programs[key] = to_fx(program, self, f"{class_name_for(self.spec_name)}Program")
        return self._programs[key]

    @property
    def code(self) -> str:
        return self.graph_module().code

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module().graph


def program_arguments(program: fx.GraphModule) -> list[str]:
    """The argument names of a lowered program, in order (what a loop must pass it)."""
    return [n.target for n in program.graph.nodes if n.op == "placeholder"]  # type: ignore[misc]


def output_ports(sg: SpecGraph) -> dict[str, list[str]]:
    """Output port names of every block node (sharing nodes included: they return what their module returns)."""
    return {n: [p.name for p in sg.node(n)["contract"].outputs] for n in sg.blocks() if "contract" in sg.node(n)}


def lower(built: BuiltGraph) -> DagModule:
    """Lower a built graph to a :class:`DagModule` (train and eval programs share one GraphModule if equal)."""
    sg = built.sg
    ports = output_ports(sg)
    model = DagModule(built.modules, ports, sg.spec.name)
    model._sg = sg
    class_name = class_name_for(sg.spec.name)
    programs = {mode: make_program(sg, mode) for mode in ("train", "eval")}
    if programs["train"].signature() == programs["eval"].signature():
        gm = to_fx(programs["train"], model, class_name)
        model._graph_modules = {"train": gm, "eval": gm}
    else:
        model._graph_modules = {m: to_fx(p, model, f"{class_name}{m.title()}") for m, p in programs.items()}
    return model


def class_name_for(name: str) -> str:
    """``lenet_mnist`` → ``LenetMnist``."""
    out = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Model"
    return out if out.isidentifier() and not keyword.iskeyword(out) else f"Model{out}"


def export_example_inputs(built: BuiltGraph, mode: str) -> tuple[torch.Tensor, ...]:
    """Real example tensors for the run-time inputs of ``mode`` (for tests, torch.export and benchmarks)."""
    from dagcv.build import example_value

    sg = built.sg
    program = make_program(sg, mode)
    args = []
    for arg in program.inputs:
        value = arg.value
        data = sg.node(value.node)
        kind = data["type"].kind if data["kind"] == "input" else data["contract"].output(value.port).parsed.kind
        dims = data["shapes"][value.port]
        args.append(example_value(kind, [d.value for d in dims]))
    return tuple(args)
