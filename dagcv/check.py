"""Type passes: port kinds and symbolic shapes, unified edge by edge before any torch code runs.

``infer_shapes`` walks the graph in topological order. For each block it binds the symbols of its input
patterns to the dims flowing in (``FeatureMap[B, C, H, W]`` binds ``C``), computes the constructor arguments
its contract infers (``in_channels = C``), then evaluates its output patterns. Results land in node data:
``shapes`` (output port → dims) and ``inferred`` (argument → int).
"""

from __future__ import annotations

import ast

from dagcv.errors import Span
from dagcv.graph import INPUT_PORT, SpecGraph, _inside
from dagcv.types import Dim, ShapeError, bind_shape, evaluate, evaluate_dims, format_shape, is_subkind

DEFAULT_SIZES = {"B": 2}


def check_kinds(sg: SpecGraph) -> None:
    """Each edge carries a kind that is a subkind of what the consuming port accepts."""
    for u, v, d in sg.g.edges(data=True):
        src_type = sg.out_type(u, d["src_port"])
        contract = sg.node(v).get("contract")
        dst = contract.input(d["dst_port"]) if contract else None
        if src_type is None or dst is None:
            continue
        if not is_subkind(src_type.kind, dst.parsed.kind):
            fits = (
                [p.name for p in sg.node(u)["contract"].outputs if is_subkind(p.parsed.kind, dst.parsed.kind)]
                if sg.node(u)["kind"] == "block"
                else []
            )
            hint = (
                f"use {u}.{fits[0]}, which is a {dst.parsed.kind}"
                if fits
                else f"'{v}.{d['dst_port']}' needs {dst.parsed.kind}; check which node should feed it"
            )
            sg.error(f"kind mismatch: {_where(u, d['src_port'], sg)} is {src_type.kind} but "
                     f"{v}.{d['dst_port']} expects {dst.parsed.kind}", d["span"], node=v, port=d["dst_port"],
                     hint=hint)  # fmt: skip


def _where(node: str, port: str, sg: SpecGraph) -> str:
    """``input`` for a spec input, ``node.port`` for a block output."""
    return node if sg.node(node)["kind"] == "input" else f"{node}.{port}"


def input_shapes(sg: SpecGraph) -> None:
    """Spec inputs get concrete example dims from ``sizes:`` (``B`` defaults to 2)."""
    smap = sg.spec.source
    for name, size in sg.spec.sizes.items():
        if size <= 0:
            sg.error(f"example size of '{name}' must be positive, found {size}", smap.value("sizes", name))
    env = _example_sizes(sg)
    for name, text in sg.spec.inputs.items():
        data = sg.node(name)
        port_type = data.get("type")
        if port_type is None or port_type.dims is None:
            data["shapes"] = {INPUT_PORT: None}
            continue
        missing = [p.expr for p in port_type.dims if p.variadic or (p.symbol and p.symbol not in env)]
        if missing:
            sg.error(
                f"input '{name}': no example size for {', '.join(repr(m) for m in missing)}",
                smap.value("inputs", name),
                node=name,
                hint=f"add `sizes: {{{', '.join(f'{m}: <int>' for m in missing)}}}` to the spec",
            )
            continue  # fmt: skip
        try:
            data["shapes"] = {INPUT_PORT: evaluate_dims(port_type.dims, env)}
            if any(d.value <= 0 for d in data["shapes"][INPUT_PORT]):
                raise ShapeError("every dim must be positive")
        except ShapeError as exc:
            sg.error(f"input '{name}': {exc}", _inside(smap.value("inputs", name), text, exc), node=name)


def infer_shapes(sg: SpecGraph) -> None:
    """Unify each block's input patterns, infer its arguments, and compute its output shapes."""
    for name in sg.order():
        data = sg.node(name)
        if data["kind"] != "block" or not sg.healthy(name) or "contract" not in data:
            continue
        if data.get("unresolved_inputs"):
            continue  # fed by a node whose own type is unknown
        if any(not sg.healthy(u) or "shapes" not in sg.node(u) for u, _ in sg.in_edges(name)):
            continue  # an upstream error was already reported
        _infer_block(sg, name)


def _infer_block(sg: SpecGraph, name: str) -> None:
    data = sg.node(name)
    contract = data["contract"]
    params = data["params"]
    ints = {k: v for k, v in params.items() if type(v) is int}
    env: dict[str, object] = {}
    for u, d in sorted(sg.in_edges(name), key=lambda e: [p.name for p in contract.inputs].index(e[1]["dst_port"])):
        port = contract.input(d["dst_port"])
        shape = sg.node(u)["shapes"].get(d["src_port"])
        if port.parsed.dims is None or shape is None:
            continue
        mismatch = bind_shape(port.parsed.dims, shape, env, lambda s: s in ints)
        if mismatch is not None:
            _shape_error(sg, name, u, d, shape, port.type, mismatch.message)
            return
    # Output shapes may use params; symbols bound by inputs take precedence; symbols still free (a source
    # block's batch B) take the spec's example sizes.
    env_all = {**_example_sizes(sg), **ints, **env}
    inferred = {}
    absent = _absent_symbols(sg, name, env_all)
    for arg, expr in contract.infer.items():
        if _names(expr) & absent:
            inferred[arg] = None  # follows an optional port left unconnected
            continue
        try:
            dim = evaluate(expr, env_all)
            if dim.runtime:
                raise ShapeError(f"{expr} = {dim.text} is only known at run time")
            value = dim.value
        except ShapeError as exc:
            sg.error(f"cannot infer '{arg}' of '{name}' ({contract.name}): {exc}", data["span"], node=name,
                     hint=f"connect the input that defines {expr}")  # fmt: skip
            return
        given = params.get(arg)
        if given is not None and given != value:
            span = sg.spec.source.value("blocks", name, arg)
            sg.error(f"'{name}.{arg}' is {given} but its input implies {arg}={value} ({expr})", span, node=name,
                     hint=f"remove '{arg}' and let dagcv infer it, or fix the upstream block")  # fmt: skip
            return
        inferred[arg] = value
    env_all.update({k: v for k, v in inferred.items() if k not in env and v is not None})
    # An output symbol that no input, parameter or size binds is decided by the data (the number of RoIs).
    for port in contract.outputs:
        for p in port.parsed.dims or ():
            if p.symbol is not None and not p.variadic and p.symbol not in env_all:
                env_all[p.symbol] = Dim.at_runtime(p.symbol)
    shapes = {}
    for port in contract.outputs:
        if port.parsed.dims is None:
            shapes[port.name] = None
            continue
        try:
            shapes[port.name] = evaluate_dims(port.parsed.dims, env_all)
            empty = [(i, d) for i, d in enumerate(shapes[port.name]) if d.value <= 0 and not d.runtime]
            if empty:
                i, d = empty[0]
                what = f"dim {i}" if d.is_const else f"dim {i} ({d.text})"
                raise ShapeError(f"{what} would be {d.value}: the input is too small")
        except ShapeError as exc:
            sg.error(
                f"'{name}' ({contract.name}) cannot produce its output '{port.name}' ({port.type}): {exc}",
                data["span"],
                node=name,
                port=port.name,
                hint="change the input size (`sizes:`) or the block's parameters",
            )
            return  # fmt: skip
    data["inferred"] = inferred
    data["shapes"] = shapes


def _absent_symbols(sg: SpecGraph, name: str, env: dict[str, object]) -> set[str]:
    """Symbols bound only by optional input ports that nothing feeds (an FPN level left out)."""
    contract = sg.node(name)["contract"]
    connected = {d["dst_port"] for _, d in sg.in_edges(name)}
    return {
        p.expr
        for port in contract.inputs
        if port.parsed.optional and port.name not in connected and port.parsed.dims
        for p in port.parsed.dims
        if p.symbol is not None and p.expr not in env
    }


def _names(expr: str) -> set[str]:
    try:
        return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    except SyntaxError:
        return set()


def _example_sizes(sg: SpecGraph) -> dict[str, Dim]:
    return {k: Dim.symbol(k, v) for k, v in {**DEFAULT_SIZES, **sg.spec.sizes}.items()}


def _shape_error(sg: SpecGraph, node: str, src: str, edge: dict, shape: list[Dim], want: str, why: str) -> None:
    got = format_shape(shape)
    message = (
        f"shape mismatch: {_where(src, edge['src_port'], sg)} gives {got} "
        f"({format_shape(shape, concrete=True)}) but {node}.{edge['dst_port']} expects {want}: {why}"
    )
    notes = []
    src_span: Span | None = sg.node(src).get("span")
    if src_span is not None:
        notes.append((src_span, f"'{src}' is defined here"))
    sg.error(message, edge["span"], node=node, port=edge["dst_port"], notes=notes,
             hint="insert a block that adapts the shape, or change one of the two blocks")  # fmt: skip
