"""The block graph: a networkx multigraph of typed nodes and port-to-port edges, plus the structural passes.

Each pass is a function over a :class:`SpecGraph` that reads and writes node data and appends diagnostics;
:mod:`dagcv.compiler` runs them in order. A node that a pass finds broken is marked ``poisoned`` so that later
passes skip it instead of reporting the same mistake again in other words.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import ConfigDict, Field, ValidationError, create_model

from dagcv.errors import Diagnostic, Span, did_you_mean
from dagcv.names import identifier_problem
from dagcv.registry import Contract, Registry, annotation_type
from dagcv.spec.ir import Spec
from dagcv.spec.parse import validation_diagnostics
from dagcv.types import KINDS, PortType, ShapeError, parse_port_type

INPUT_PORT = "out"  # the one output port of a spec input
# The programs a node runs in. `sample` nodes only run when a sampler draws from the model (`dagcv sample`): a VAE's
# prior → decoder path, which neither training nor evaluation computes.
MODES = {"train": {"train"}, "eval": {"eval"}, "both": {"train", "eval", "sample"}, "sample": {"sample"}}


@dataclass
class Ref:
    """A connection's source: ``node`` or ``node.port`` as written, with its span."""

    node: str
    port: str | None
    span: Span | None

    def __str__(self) -> str:
        return self.node if self.port is None else f"{self.node}.{self.port}"


@dataclass
class SpecGraph:
    """The spec as a graph, with everything the passes learned about it."""

    spec: Spec
    registry: Registry
    g: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # output name -> (node, port)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None, *, node: str | None = None, port: str | None = None,
              hint: str | None = None, notes: list | None = None) -> None:  # fmt: skip
        self.diagnostics.append(Diagnostic(message, span, hint=hint, node=node, port=port, notes=notes or []))
        if node is not None and node in self.g:
            self.g.nodes[node]["poisoned"] = True

    def node(self, name: str) -> dict[str, Any]:
        return self.g.nodes[name]

    def blocks(self) -> list[str]:
        return [n for n, d in self.g.nodes(data=True) if d["kind"] == "block"]

    def healthy(self, name: str) -> bool:
        return not self.g.nodes[name].get("poisoned", False)

    def order(self) -> list[str]:
        """Nodes in a deterministic topological order (spec order breaks ties)."""
        rank = {n: i for i, n in enumerate(self.g.nodes)}
        # A node that shares another's module comes after its owner, which decides the module's sizes.
        shared = [(d["shares"], n) for n, d in self.g.nodes(data=True) if d.get("shares") in self.g]
        g = self.g
        if shared:
            g = nx.DiGraph(self.g)
            g.add_edges_from(e for e in shared if not nx.has_path(self.g, e[1], e[0]))
        return list(nx.lexicographical_topological_sort(g, key=lambda n: rank[n]))

    def out_type(self, node: str, port: str) -> PortType | None:
        data = self.g.nodes[node]
        if data["kind"] == "input":
            return data.get("type")
        if port in data.get("out_types", {}):
            return data["out_types"][port]  # refined from the block's parameters (an env's spaces)
        contract = data.get("contract")
        decl = contract.output(port) if contract else None
        return decl.parsed if decl else None

    def upstream(self, nodes: Iterable[str], stop: Collection[str] = ()) -> set[str]:
        """``nodes`` and every node they read from, directly or not, not reading past the nodes in ``stop``."""
        seen = set(nodes)
        todo = [n for n in seen if n not in stop]
        while todo:
            for u in self.g.predecessors(todo.pop()):
                if u not in seen:
                    seen.add(u)
                    if u not in stop:
                        todo.append(u)
        return seen

    def downstream(self, nodes: Iterable[str]) -> set[str]:
        """``nodes`` and every node that reads from them, directly or not."""
        seen = set(nodes)
        for n in list(seen):
            seen |= nx.descendants(self.g, n)
        return seen

    def in_edges(self, node: str) -> list[tuple[str, dict]]:
        """(source node, edge data) for each connected input port of ``node``, in port order."""
        return [(u, d) for u, _, d in self.g.in_edges(node, data=True)]

    @property
    def source_file(self) -> str:
        return self.spec.source.file


# ---------------------------------------------------------------------------------------------------------------
# Passes


def add_inputs(sg: SpecGraph) -> None:
    """Spec inputs become nodes with one output port; their type text is parsed here."""
    smap = sg.spec.source
    for name, text in sg.spec.inputs.items():
        sg.g.add_node(name, kind="input", span=smap.key("inputs", name), mode="both")
        check_name(sg, name, smap.key("inputs", name), "input")
        span = smap.value("inputs", name)
        try:
            sg.node(name)["type"] = parse_port_type(text)
        except ShapeError as exc:
            sg.error(f"input '{name}': {exc}", _inside(span, text, exc), node=name,
                     hint="write a kind and its dims, e.g. Image[B, 3, H, W]")  # fmt: skip


def _inside(span: Span | None, text: str, exc: ShapeError) -> Span | None:
    """The span of the part of a scalar an error points at (the scalar may be quoted in the file)."""
    if span is None or span.end_line not in (None, span.line):
        return span
    quoted = span.end_col is not None and (span.end_col - span.col) > len(text)
    return span.shifted(exc.offset + (1 if quoted else 0), exc.length or 1)


def check_name(sg: SpecGraph, name: str, span: Span | None, what: str, *, reserved: bool = True) -> bool:
    """Whether ``name`` can be a Python name in generated code (reported as an error otherwise)."""
    problem = identifier_problem(name, reserved)
    if problem is not None:
        message, hint = problem
        sg.error(f"{what} name {message}", span, node=name if name in sg.g else None, hint=hint)
    return problem is None


def resolve_blocks(sg: SpecGraph) -> None:
    """Block names → registered contracts; parameters validated by each block's own parameters model."""
    smap = sg.spec.source
    for name, decl in sg.spec.blocks.items():
        span = smap.key("blocks", name)
        if name in sg.g:
            sg.error(f"block '{name}' has the same name as an input", span, node=name,
                     notes=[(sg.node(name)["span"], "the input is declared here")])  # fmt: skip
            continue
        sg.g.add_node(name, kind="block", span=span, decl=decl, mode=decl.mode or "both")
        check_name(sg, name, span, "block")
        if decl.shares is not None:
            continue  # takes its owner's contract below, once every owner is resolved
        contract = sg.registry.get(decl.type)
        if contract is None:
            sg.error(
                f"unknown block type '{decl.type}'",
                smap.value("blocks", name, "type"),
                node=name,
                hint=did_you_mean(decl.type, sg.registry.names()) or "`dagcv blocks` lists every block",
            )
            continue  # fmt: skip
        data = sg.node(name)
        data["contract"] = contract
        data["mode"] = decl.mode or contract.default_mode
        data["params"] = validate_params(sg, name, contract, decl.params)
    for name, decl in sg.spec.blocks.items():
        if decl.shares is not None and name in sg.g and sg.node(name)["kind"] == "block":
            _resolve_shared(sg, name, decl)


def _resolve_shared(sg: SpecGraph, name: str, decl: Any) -> None:
    """A node that ``shares`` another calls the same module: the owner's contract and parameters, its own wiring.

    The owner must be a block of the model that owns its module (no chains of sharing); that the inputs of both
    calls size the module alike is checked after shapes are inferred (:func:`dagcv.check.check_shared`).
    """
    smap = sg.spec.source
    owner = decl.shares
    span = smap.value("blocks", name, "shares")
    blocks = [n for n, d in sg.spec.blocks.items() if n != name and d.shares is None]
    if owner not in sg.spec.blocks or owner == name:
        sg.error(f"'{name}' shares unknown block '{owner}'", span, node=name,
                 hint=did_you_mean(owner, blocks) or f"blocks: {', '.join(blocks)}")  # fmt: skip
        return
    if sg.spec.blocks[owner].shares is not None:
        root = sg.spec.blocks[owner].shares
        sg.error(f"'{name}' shares '{owner}', which itself shares '{root}'", span, node=name,
                 hint=f"write `shares: {root}`: every sharing node names the node that owns the module")  # fmt: skip
        return
    data, source = sg.node(name), sg.node(owner)
    if decl.params:
        first = next(iter(decl.params))
        sg.error(f"'{name}' shares '{owner}' and takes no parameters of its own, found '{first}'",
                 smap.key("blocks", name, first), node=name,
                 hint=f"set them on '{owner}': both calls run one module")  # fmt: skip
    contract = source.get("contract")
    if contract is None:
        data["unresolved_inputs"] = True  # the owner's type is unknown: already reported
        return
    if not contract.module:
        sg.error(f"'{name}' shares '{owner}' ({contract.name}), which is not a module of the model", span,
                 node=name, hint="only blocks with weights of their own can be called twice")  # fmt: skip
        return
    data["shares"] = owner
    data["contract"] = contract
    data["mode"] = decl.mode or contract.default_mode
    data["params"] = dict(source.get("params", {}))


def refine_ports(sg: SpecGraph) -> None:
    """Blocks whose output types follow from their parameters (an env block's spaces) get them here."""
    import importlib

    for name in sg.blocks():
        data = sg.node(name)
        contract = data.get("contract")
        if contract is None or contract.refine is None or not sg.healthy(name):
            continue
        module, _, function = contract.refine.partition(":")
        hook = getattr(importlib.import_module(module), function)
        try:
            types = hook(data["params"])
        except ValueError as exc:
            param = getattr(exc, "param", None)
            span = sg.spec.source.value("blocks", name, param) if param else data["span"]
            sg.error(f"'{name}' ({contract.name}): {exc}", span, node=name, hint=getattr(exc, "hint", None))
            continue
        data["out_types"] = {port: parse_port_type(text) for port, text in types.items()}


def validate_params(
    sg: SpecGraph, node: str, contract: Contract, params: dict[str, Any], path: tuple | None = None
) -> dict[str, Any]:
    """Validate a block's parameters; ``path`` locates them in the spec (default: the node's entry)."""
    smap = sg.spec.source
    path = path or ("blocks", node)
    allowed = [p.name for p in contract.params]
    for key in params:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or (f"{contract.name} takes: {', '.join(allowed)}" if allowed else
                                                  f"{contract.name} takes no parameters")  # fmt: skip
            sg.error(f"unknown parameter '{key}' for block type '{contract.name}'", smap.key(*path, key),
                     node=node, hint=hint)  # fmt: skip
    try:
        model = params_model(contract)
        return model.model_validate({k: v for k, v in params.items() if k in allowed}).model_dump()
    except ValidationError as exc:
        for d in validation_diagnostics(exc, smap, None, path, node=node, data=params):
            if d.message.startswith("missing required key"):
                param = d.message.split("'")[1]
                d.message = f"block '{node}' ({contract.name}) needs parameter '{param}'"
                doc = contract.param(param).doc if contract.param(param) else ""
                d.hint = f"{param}: {doc}" if doc else f"`dagcv blocks {contract.name}` lists its parameters"
            else:
                d.message = d.message.replace(": ", f" (parameter of {contract.name}): ", 1)
            sg.diagnostics.append(d)
        sg.node(node)["poisoned"] = True
        return {}


_PARAM_MODELS: dict[tuple[str, str], type] = {}


def params_model(contract: Contract) -> type:
    """The Pydantic model of a block's parameters, rebuilt from the contract (no block import needed).

    Arguments that ``infer`` fills in are optional: when a spec gives one anyway, the shape pass checks it.
    """
    key = (contract.name, contract.target)
    if key in _PARAM_MODELS:
        return _PARAM_MODELS[key]
    fields: dict[str, Any] = {}
    for p in contract.params:
        tp = annotation_type(p.annotation)
        if p.name in contract.infer:
            fields[p.name] = (tp | None, Field(default=None, description=p.doc))
        elif p.required:
            fields[p.name] = (tp, Field(description=p.doc))
        else:
            fields[p.name] = (tp, Field(default=p.default, description=p.doc))
    config = ConfigDict(extra="forbid", validate_default=True)
    model = create_model(f"{contract.name}_params", __config__=config, **fields)
    _PARAM_MODELS[key] = model
    return model


def parse_ref(sg: SpecGraph, text: Any, span: Span | None, node: str | None) -> Ref | None:
    """``node`` or ``node.port`` → :class:`Ref`, checking that the node and port exist."""
    if not isinstance(text, str) or not text.strip():
        sg.error(f"a connection must be written 'node' or 'node.port', found {text!r}", span, node=node)
        return None
    name, _, port = text.strip().partition(".")
    if name not in sg.g:
        known = [n for n in sg.g.nodes if n != node]
        sg.error(f"unknown node '{name}'" + (f" (input of '{node}')" if node else ""), span, node=node,
                 hint=did_you_mean(name, known) or f"nodes and inputs: {', '.join(known)}")  # fmt: skip
        return None
    ports = output_ports(sg, name)
    if ports is None and node is not None:
        sg.node(node)["unresolved_inputs"] = True
    if port and ports is not None and port not in ports:
        sg.error(f"node '{name}' has no output port '{port}'", span.shifted(len(name) + 1, len(port)) if span and
                 span.end_line == span.line else span, node=node,
                 hint=did_you_mean(port, ports) or f"'{name}' outputs: {', '.join(ports)}")  # fmt: skip
        return None
    return Ref(name, port or None, span)


def output_ports(sg: SpecGraph, node: str) -> list[str] | None:
    data = sg.node(node)
    if data["kind"] == "input":
        return [INPUT_PORT]
    contract = data.get("contract")
    return [p.name for p in contract.outputs] if contract else None


def connect(sg: SpecGraph) -> None:
    """``in:`` entries become edges from an output port to an input port."""
    smap = sg.spec.source
    for name, decl in sg.spec.blocks.items():
        data = sg.node(name) if name in sg.g else None
        if data is None or data.get("kind") != "block" or "contract" not in data:
            continue
        contract: Contract = data["contract"]
        wires = decl.inputs
        if isinstance(wires, dict):
            for port, src in wires.items():
                span = smap.value("blocks", name, "in", port)
                if contract.input(port) is None:
                    names = [p.name for p in contract.inputs]
                    sg.error(
                        f"block type '{contract.name}' has no input port '{port}'",
                        smap.key("blocks", name, "in", port),
                        node=name,
                        port=port,
                        hint=did_you_mean(port, names) or f"its inputs: {', '.join(names) or 'none'}",
                    )
                    continue  # fmt: skip
                ref = parse_ref(sg, src, span, name)
                if ref is not None:
                    _add_edge(sg, ref, name, port)
        elif wires is not None:
            span = smap.value("blocks", name, "in")
            if isinstance(wires, list):
                sg.error(
                    f"'in' of '{name}' is a list; write one source or a mapping port → source",
                    span,
                    node=name,
                    hint=f"e.g. in: {{{', '.join(f'{p.name}: ...' for p in contract.inputs)}}}",
                )
                continue  # fmt: skip
            ref = parse_ref(sg, wires, span, name)
            if ref is not None:
                _connect_single(sg, ref, name, contract)
        _check_required(sg, name, contract)


def _connect_single(sg: SpecGraph, ref: Ref, node: str, contract: Contract) -> None:
    """One source for a whole block: one port, or several matched by kind from a multi-output node."""
    ports = [p for p in contract.inputs]
    if not ports:
        sg.error(f"block type '{contract.name}' takes no inputs", ref.span, node=node, hint="remove 'in'")
        return
    src_ports = output_ports(sg, ref.node)
    src = sg.node(ref.node)
    refined = src.get("contract") is not None and src["contract"].refine is not None
    if src_ports is None or (refined and "out_types" not in src):
        sg.node(node)["unresolved_inputs"] = True  # the source's own types are unknown: already reported
        return
    if ref.port is not None or len(src_ports) == 1:
        required = [p for p in ports if not p.parsed.optional]
        # One source feeds the only port, the only required one, or the first when every port is optional (a
        # quantizer encodes `x` unless told to decode `codes`).
        target = ports[0] if len(ports) == 1 or not required else (required[0] if len(required) == 1 else None)
        if target is None:
            sg.error(
                f"'{node}' has several inputs ({', '.join(p.name for p in ports)}); say which is which",
                ref.span,
                node=node,
                hint=f"in: {{{', '.join(f'{p.name}: ...' for p in ports)}}}",
            )
            return  # fmt: skip
        _add_edge(sg, Ref(ref.node, ref.port or src_ports[0], ref.span), node, target.name)
        return
    # A multi-output source feeding a multi-input block: pair ports of the same name (a backbone's c3 into an
    # FPN's c3), then by kind where that is unambiguous.
    matched = {}
    for port in ports:
        fits = [s for s in src_ports if _fits(sg, ref.node, s, port.parsed)]
        if port.name in fits:
            matched[port.name] = port.name
        elif len(fits) == 1:
            matched[port.name] = fits[0]
        elif not port.parsed.optional:
            sg.error(
                f"node '{ref.node}' has several outputs ({', '.join(src_ports)}); cannot tell which feeds "
                f"'{node}.{port.name}'",
                ref.span,
                node=node,
                port=port.name,
                hint=f"write {ref.node}.<port>, e.g. {ref.node}.{(fits or src_ports)[0]}",
            )
            return  # fmt: skip
    for port, src in matched.items():
        _add_edge(sg, Ref(ref.node, src, ref.span), node, port)


def _fits(sg: SpecGraph, src: str, port: str, target: PortType) -> bool:
    t = sg.out_type(src, port)
    from dagcv.types import is_subkind

    return t is not None and is_subkind(t.kind, target.kind)


def _add_edge(sg: SpecGraph, ref: Ref, dst: str, dst_port: str) -> None:
    port = ref.port or (output_ports(sg, ref.node) or [INPUT_PORT])[0]
    if ref.port is None and len(output_ports(sg, ref.node) or []) > 1:
        ports = output_ports(sg, ref.node) or []
        sg.error(
            f"node '{ref.node}' has several outputs ({', '.join(ports)}); say which feeds '{dst}.{dst_port}'",
            ref.span,
            node=dst,
            port=dst_port,
            hint=f"write {ref.node}.{ports[0]} (or another port)",
        )
        return  # fmt: skip
    sg.g.add_edge(ref.node, dst, key=dst_port, src_port=port, dst_port=dst_port, span=ref.span)


def _check_required(sg: SpecGraph, node: str, contract: Contract) -> None:
    connected = {k for _, _, k in sg.g.in_edges(node, keys=True)}
    missing = [p.name for p in contract.inputs if not p.parsed.optional and p.name not in connected]
    decl = sg.spec.blocks[node]
    quiet = sg.node(node).get("unresolved_inputs") or (sg.node(node).get("poisoned") and decl.inputs is not None)
    if missing and not quiet:
        types = ", ".join(f"{p.name}: {p.type}" for p in contract.inputs if p.name in missing)
        ports = ", ".join(repr(m) for m in missing)
        wiring = ", ".join(f"{m}: <source>" for m in missing)
        sg.error(f"input port{'s' if len(missing) > 1 else ''} {ports} of '{node}' ({contract.name}) not connected",
                 sg.spec.source.key("blocks", node), node=node, port=missing[0],
                 hint=f"add `in: {{{wiring}}}` ({types})")  # fmt: skip


def source_argument(node: str, port: str) -> str:
    """The ``forward`` argument that carries a source block's run-time output (an env's observation)."""
    return f"{node}_{port}"


def check_argument_names(sg: SpecGraph) -> None:
    """The arguments of ``forward`` for source blocks' outputs clash with no input and no node."""
    for name in sg.blocks():
        contract = sg.node(name).get("contract")
        if contract is None or not contract.is_source:
            continue
        for port in contract.outputs:
            arg = source_argument(name, port.name)
            if arg in sg.g:
                what = "input" if sg.node(arg)["kind"] == "input" else "block"
                sg.error(f"{what} name '{arg}' clashes with the forward argument that carries {name}.{port.name}",
                         sg.node(arg)["span"], node=arg, hint=f"rename the {what}")  # fmt: skip


def check_outputs(sg: SpecGraph) -> None:
    smap = sg.spec.source
    for out, src in sg.spec.outputs.items():
        if not check_name(sg, out, smap.key("outputs", out), "output", reserved=False):
            continue
        ref = parse_ref(sg, src, smap.value("outputs", out), None)
        if ref is None:
            continue
        ports = output_ports(sg, ref.node) or []
        if ref.port is None and len(ports) > 1:
            sg.error(
                f"output '{out}': node '{ref.node}' has several outputs ({', '.join(ports)})",
                ref.span,
                hint=f"write {ref.node}.{ports[0]} (or another port)",
            )
            continue  # fmt: skip
        if ports:
            sg.outputs[out] = (ref.node, ref.port or ports[0])


def check_acyclic(sg: SpecGraph) -> None:
    """Every strongly connected component larger than one node (or a self-loop) is one error."""
    for comp in nx.strongly_connected_components(sg.g):
        first = next(iter(comp))
        if len(comp) == 1 and not sg.g.has_edge(first, first):
            continue
        cycle = nx.find_cycle(sg.g.subgraph(comp))
        path = " -> ".join([cycle[0][0], *(e[1] for e in cycle)])
        u, v, key = cycle[-1][:3]
        span = sg.g.edges[u, v, key]["span"]
        sg.error(f"cycle in the block graph: {path}", span, node=v,
                 hint="a spec is a DAG; recurrent state belongs inside a block")  # fmt: skip
        for n in comp:
            sg.g.nodes[n]["poisoned"] = True
        # Edges in a cycle would make later passes loop; drop them once reported.
        sg.g.remove_edges_from(list(sg.g.subgraph(comp).edges(keys=True)))


def check_modes(sg: SpecGraph) -> None:
    """A node may only read values that exist in every mode it runs in (optional and static ports excepted)."""
    for u, v, d in sg.g.edges(data=True):
        need, have = MODES[sg.node(v)["mode"]], MODES[sg.node(u)["mode"]]
        target = sg.node(v).get("contract")
        port = target.input(d["dst_port"]) if target else None
        if port is None or port.parsed.optional or KINDS[port.parsed.kind].static or need <= have:
            continue
        missing = "/".join(sorted(need - have))
        sg.error(f"'{v}' runs in {missing} mode but its input '{u}' (mode: {sg.node(u)['mode']}) does not",
                 d["span"], node=v, port=d["dst_port"],
                 hint=f"tag '{v}' with `mode: {sg.node(u)['mode']}`, or change the mode of '{u}'")  # fmt: skip
