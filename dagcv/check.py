"""Type passes: port kinds and symbolic shapes, unified edge by edge before any torch code runs.

``infer_shapes`` walks the graph in topological order. For each block it binds the symbols of its input
patterns to the dims flowing in (``FeatureMap[B, C, H, W]`` binds ``C``), computes the constructor arguments
its contract infers (``in_channels = C``), then evaluates its output patterns. Results land in node data:
``shapes`` (output port → dims) and ``inferred`` (argument → int).
"""

from __future__ import annotations

import ast
import math
from typing import Any

from dagcv import rules
from dagcv.errors import Span
from dagcv.files import checkpoint_problem
from dagcv.graph import INPUT_PORT, SpecGraph, _inside
from dagcv.limits import limits
from dagcv.types import (
    KINDS,
    Dim,
    DimPattern,
    Mismatch,
    ShapeError,
    bind_shape,
    evaluate,
    evaluate_dims,
    format_shape,
    is_subkind,
)

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
            # A variant of the same thing (a Box action space where a Discrete one goes): name the blocks that take it.
            variants = _common_parent(src_type.kind, dst.parsed.kind) not in (None, "Any", "Tensor")
            others = _blocks_taking(sg, contract, d["dst_port"], src_type.kind) if variants else []
            if fits:
                hint = f"use {u}.{fits[0]}, which is a {dst.parsed.kind}"
            elif others:
                hint = (
                    f"{', '.join(others)} take{'s' if len(others) == 1 else ''} a {src_type.kind} as '{d['dst_port']}'"
                )
            else:
                hint = f"'{v}.{d['dst_port']}' needs {dst.parsed.kind}; check which node should feed it"
            sg.error(f"kind mismatch: {_where(u, d['src_port'], sg)} is {src_type.kind} but "
                     f"{v}.{d['dst_port']} expects {dst.parsed.kind}", d["span"], node=v, port=d["dst_port"],
                     hint=hint)  # fmt: skip


def _common_parent(a: str, b: str) -> str | None:
    """The nearest kind both ``a`` and ``b`` are subkinds of."""
    parent: str | None = a
    while parent is not None and not is_subkind(b, parent):
        parent = KINDS[parent].parent
    return parent


def _blocks_taking(sg: SpecGraph, contract: object, port: str, kind: str) -> list[str]:
    """Blocks of the same family whose port of that name takes ``kind`` (a policy for a continuous env)."""
    out = []
    for name in sg.registry.names():
        other = sg.registry.contracts[name]
        take = other.input(port)
        if (
            other.family == contract.family
            and other.name != contract.name
            and take
            and is_subkind(kind, take.parsed.kind)
        ):
            out.append(other.name)
    return out[:3]


def _where(node: str, port: str, sg: SpecGraph) -> str:
    """``input`` for a spec input, ``node.port`` for a block output."""
    return node if sg.node(node)["kind"] == "input" else f"{node}.{port}"


def input_shapes(sg: SpecGraph) -> None:
    """Spec inputs get concrete example dims from ``sizes:`` (``B`` defaults to 2)."""
    smap = sg.spec.source
    cap = limits().dim_value
    bad = {name for name, size in sg.spec.sizes.items() if not 0 < size <= cap}
    for name, size in sg.spec.sizes.items():
        if size <= 0:
            sg.error(f"example size of '{name}' must be positive, found {size}", smap.value("sizes", name))
        elif size > cap:
            sg.error(
                f"example size of '{name}' is {size:,}, above the limit {cap:,}",
                smap.value("sizes", name),
                hint="example sizes only need to be large enough to check the shapes (see `dagcv --limit`)",
            )
    env = _example_sizes(sg)
    for name, text in sg.spec.inputs.items():
        data = sg.node(name)
        port_type = data.get("type")
        if port_type is None or port_type.dims is None:
            data["shapes"] = {INPUT_PORT: None}
            continue
        if any(p.symbol in bad for p in port_type.dims):
            data["poisoned"] = True  # its example size is already reported
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
            if port_type.vocab is not None:
                data["vocabs"] = {INPUT_PORT: evaluate(port_type.vocab.expr, env)}
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
        if mismatch is None:
            mismatch = _bind_vocab(port.parsed.vocab, sg.node(u).get("vocabs", {}).get(d["src_port"]), env, ints)
        if mismatch is not None:
            _shape_error(sg, name, u, d, shape, port.type, mismatch.message)
            return
    if data.get("shares"):
        _sizes_of_owner(sg, data["shares"], contract, env)
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
        given = params.get(arg) if not data.get("shares") else None  # a sharer: the owner reports its own
        if given is not None and given != value:
            span = sg.spec.source.value("blocks", name, arg)
            sg.error(f"'{name}.{arg}' is {given} but its input implies {arg}={value} ({expr})", span, node=name,
                     hint=f"remove '{arg}' and let dagcv infer it, or fix the upstream block")  # fmt: skip
            return
        inferred[arg] = value
    env_all.update({k: v for k, v in inferred.items() if k not in env and v is not None})
    # An output symbol that no input, parameter or size binds is decided by the data (the number of RoIs).
    out_types = {port.name: sg.out_type(name, port.name) or port.parsed for port in contract.outputs}
    for port_type in out_types.values():
        for p in port_type.dims or ():
            if p.symbol is not None and not p.variadic and p.symbol not in env_all:
                env_all[p.symbol] = Dim.at_runtime(p.symbol)
    shapes = {}
    for port in contract.outputs:
        port_type = out_types[port.name]
        if port_type.dims is None:
            shapes[port.name] = None
            continue
        try:
            shapes[port.name] = evaluate_dims(port_type.dims, env_all)
            empty = [(i, d) for i, d in enumerate(shapes[port.name]) if d.value <= 0 and not d.runtime]
            if empty:
                i, d = empty[0]
                what = f"dim {i}" if d.is_const else f"dim {i} ({d.text})"
                raise ShapeError(f"{what} would be {d.value}: the input is too small")
        except ShapeError as exc:
            sg.error(
                f"'{name}' ({contract.name}) cannot produce its output '{port.name}' ({port_type}): {exc}",
                data["span"],
                node=name,
                port=port.name,
                hint="change the input size (`sizes:`) or the block's parameters",
            )
            return  # fmt: skip
    vocabs = {}
    for port in contract.outputs:
        pattern = out_types[port.name].vocab
        if pattern is not None and shapes.get(port.name) is not None:
            try:
                vocabs[port.name] = evaluate(pattern.expr, env_all)
            except ShapeError as exc:
                sg.error(f"'{name}' ({contract.name}) cannot size the vocabulary of '{port.name}': {exc}",
                         data["span"], node=name, port=port.name)  # fmt: skip
                return
    data["inferred"] = inferred
    data["shapes"] = shapes
    data["vocabs"] = vocabs
    values = {k: ([d.value for d in v] if isinstance(v, list) else v.value) for k, v in env.items()}
    check_rules(sg, name, {**values, **params, **{k: v for k, v in inferred.items() if v is not None}})


def _sizes_of_owner(sg: SpecGraph, owner: str, contract: Any, env: dict[str, object]) -> None:
    """A sharing node calls a module built for its owner's sizes: an argument its own inputs leave unbound (a
    quantizer decoding codes has no latents to read ``D`` from) is the owner's."""
    theirs = sg.node(owner).get("inferred", {})
    for arg, expr in contract.infer.items():
        if expr.isidentifier() and expr not in env and isinstance(theirs.get(arg), int):
            env[expr] = Dim.symbol(expr, theirs[arg])


def _bind_vocab(pattern: DimPattern | None, vocab: Dim | None, env: dict[str, object], ints: dict) -> Mismatch | None:
    """Unify the vocabulary a port expects (``Codes[B, H, W] vocab V``) with the one its producer declares."""
    if pattern is None or vocab is None:
        return None  # codes from a dataset or a spec input without `vocab`: nothing to compare
    scope = {**ints, **env}  # `vocab num_codes`: compared with the block's own parameter
    mismatch = bind_shape([pattern], [vocab], scope, lambda s: s in ints)
    env.update({k: v for k, v in scope.items() if k not in ints})
    if mismatch is None:
        return None
    want = evaluate(pattern.expr, scope)
    return Mismatch(None, f"codes over a vocabulary of {vocab.value}, expected vocab {pattern.expr}={want.value}")


def check_rules(sg: SpecGraph, name: str, env: dict[str, object]) -> None:
    """The block's own rules (``requires`` in its contract) over its parameters and input sizes."""
    contract = sg.node(name)["contract"]
    given = sg.spec.blocks[name].params if name in sg.spec.blocks else {}
    for expr, why in contract.requires.items():
        if rules.holds(expr, env) is False:
            read = rules.names(expr)
            shown = ", ".join(f"{n}={env[n]!r}" for n in read if n in env)
            param = next((n for n in read if n in given), None)
            span = sg.spec.source.value("blocks", name, param) if param else sg.node(name)["span"]
            sg.error(f"'{name}' ({contract.name}) needs {expr}: {why}", span, node=name,
                     hint=f"here {shown}" if shown else None)  # fmt: skip
            return


def check_checkpoints(sg: SpecGraph) -> None:
    """Parameters that name a checkpoint (``weights``) name a file ``torch.load`` can read."""
    for name in sg.blocks():
        data = sg.node(name)
        contract = data.get("contract") if not data.get("shares") else None
        for param in contract.checkpoints if contract else ():
            path = data.get("params", {}).get(param)
            problem = checkpoint_problem(path) if isinstance(path, str) else None
            if problem is not None:
                sg.error(f"'{name}.{param}': {problem}", sg.spec.source.value("blocks", name, param), node=name,
                         hint=f"{param} names a local file written by torch.save (a state_dict)")  # fmt: skip


def check_class_conditioning(sg: SpecGraph) -> None:
    """A block whose ``num_classes`` is left None has no class embedding: a class-label input wired into it would
    fail when the block is built (an unconditional denoiser given ``y``)."""
    for name in sg.blocks():
        data = sg.node(name)
        contract = data.get("contract")
        decl = contract.param("num_classes") if contract else None
        if decl is None:
            continue
        owner = data.get("shares") or name
        if sg.node(owner).get("params", {}).get("num_classes", decl.default) is not None:
            continue
        wired = {d["dst_port"] for _, d in sg.in_edges(name)}
        for port in (p for p in contract.inputs if p.name in wired and p.parsed.kind == "Labels"):
            sg.error(f"'{name}' reads class labels at '{port.name}' but has no num_classes",
                     sg.spec.source.key("blocks", owner), node=name, port=port.name,
                     hint=f"set num_classes (a row of its class embedding per class), or leave '{port.name}' "
                     "unconnected")  # fmt: skip


def check_shared(sg: SpecGraph) -> None:
    """A node that shares another's module must size it alike: the arguments its inputs imply are the owner's."""
    for name in sg.blocks():
        data = sg.node(name)
        owner = data.get("shares")
        if owner is None or "inferred" not in data or "inferred" not in sg.node(owner):
            continue
        theirs = sg.node(owner)["inferred"]
        for arg, value in data["inferred"].items():
            if value is not None and theirs.get(arg) is not None and theirs[arg] != value:
                sg.error(
                    f"'{name}' shares '{owner}', but its inputs imply {arg}={value} where '{owner}' has {theirs[arg]}",
                    sg.spec.source.value("blocks", name, "in"),
                    node=name,
                    hint="one module runs on both inputs: they must have the sizes it was built for",
                    notes=[(sg.node(owner)["span"], f"'{owner}' is defined here")],
                )
                break


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


# ---------------------------------------------------------------------------------------------------------------
# Resources: what the spec would cost, estimated from the checked shapes before anything is allocated

# Families whose blocks hold weights; losses, post-processing, datasets and environments hold none.
WEIGHTED_FAMILIES = frozenset(
    "backbone neck head layer encoder quantizer decoder prior generator discriminator policy critic denoiser".split()
)


def _sizes(value: object) -> list[int]:
    """Every positive integer inside a parameter value (lists of channels, nested anchor sizes)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value] if value > 0 else []
    if isinstance(value, list | tuple):
        return [n for v in value for n in _sizes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _sizes(v)]
    return []


def estimate_params(sg: SpecGraph, node: str) -> int:
    """A size estimate of a block's weights from the sizes it is given and the sizes inferred for it.

    Weights grow with the product of the widths a layer connects and with the number of layers: the estimate is
    the largest given size squared times the number of given sizes, plus the largest inferred size (an input
    width) times the largest given size. An MLP with ``hidden: [4096] * 10`` gets 4096² × 11 + ... for its 1.7e8
    weights, a two-layer box head over 256×7×7 RoI features 1024² + 12544 × 1024 for its 1.4e7. It refuses
    absurd sizes without importing the block; it is no parameter count (``dagcv compile`` prints that). A block
    whose layers multiply its sizes (3×3 convolutions, stages that double their width) states its own estimate
    in its contract (``param_count``).
    """
    data = sg.node(node)
    contract = data.get("contract")
    if contract is None or not contract.module or contract.family not in WEIGHTED_FAMILIES or data.get("shares"):
        return 0  # no weights, or the owner's (counted there)
    if contract.param_count:
        env = {**data.get("params", {}), **{k: v for k, v in data.get("inferred", {}).items() if v is not None}}
        counted = rules.value(contract.param_count, env)
        if isinstance(counted, int | float):
            return int(counted)
    given = _sizes([v for k, v in data.get("params", {}).items() if k not in contract.infer])
    inferred = _sizes(list(data.get("inferred", {}).values()))
    estimate = max(given) ** 2 * len(given) if given else 0
    if inferred:
        estimate += max(inferred) * max(given, default=1)
    return estimate


def activation_bytes(sg: SpecGraph, node: str) -> int:
    """Bytes of a node's tensor outputs at the example sizes."""
    total = 0
    for port, dims in (sg.node(node).get("shapes") or {}).items():
        kind = sg.out_type(node, port)
        if dims is None or kind is None or not KINDS[kind.kind].tensor:
            continue
        total += math.prod(max(d.value, 0) for d in dims) * (8 if KINDS[kind.kind].dtype == "int64" else 4)
    return total


def check_resources(sg: SpecGraph) -> None:
    """Refuse, before anything is built, a model whose estimated weights or activations pass the limits."""
    cap = limits()
    params = {n: estimate_params(sg, n) for n in sg.blocks()}
    acts = {n: activation_bytes(sg, n) for n in sg.g.nodes}
    for n in sg.g.nodes:
        sg.node(n)["estimate"] = {"params": params.get(n, 0), "activation_bytes": acts[n]}
    total_params, total_acts = sum(params.values()), sum(acts.values())
    if total_params > cap.params:
        worst = max(params, key=params.__getitem__)
        sg.error(
            f"the model would have about {_count(total_params)} parameters (a size estimate), above the limit "
            f"{_count(cap.params)}; '{worst}' alone about {_count(params[worst])}",
            sg.node(worst)["span"],
            node=worst,
            hint="check its sizes; to allow bigger models: dagcv --limit params=<n>",
        )
    for name in sg.blocks():
        _check_real_values(sg, name, cap.real_values)
    if total_acts > cap.activation_gib * 2**30:
        worst = max(acts, key=acts.__getitem__)
        sg.error(f"the model's outputs at the example sizes would take about {_gib(total_acts)} of memory, above the "
                 f"limit {cap.activation_gib:g} GiB; '{worst}' alone {_gib(acts[worst])}", sg.node(worst)["span"],
                 node=worst, hint="check `sizes:` and the sizes of this block; to allow more: dagcv --limit "
                 "activation_gib=<n>")  # fmt: skip


def _check_real_values(sg: SpecGraph, name: str, cap: int) -> None:
    """A block that outputs boxes or detections runs on real values when compile propagates shapes (NMS and top-k
    decide its output sizes): the tensors it reads must stay within the limit. Non-tensor inputs (pyramids, boxes)
    have no size here; ``dagcv compile`` checks those when it runs the block."""
    contract = sg.node(name).get("contract")
    if contract is None or not any(p.parsed.kind in ("Boxes", "Detections") for p in contract.outputs):
        return
    values = 0
    for u, d in sg.in_edges(name):
        dims = (sg.node(u).get("shapes") or {}).get(d["src_port"])
        kind = sg.out_type(u, d["src_port"])
        if dims is not None and kind is not None and KINDS[kind.kind].tensor:
            values += math.prod(max(x.value, 0) for x in dims)
    if values > cap:
        sg.error(
            f"'{name}' ({contract.name}) runs on real values when compile propagates shapes, and its inputs hold "
            f"{values:,} at the example sizes (limit {cap:,})",
            sg.node(name)["span"],
            node=name,
            hint="give smaller example sizes (sizes:); to allow more: dagcv --limit real_values=<n>",
        )


def _count(n: int) -> str:
    """``74,000`` or ``2.1e9``."""
    if n < 10**6:
        return f"{n:,}"
    exponent = len(str(int(n))) - 1
    return f"{n / 10**exponent:.2g}e{exponent}"


def _gib(n: int) -> str:
    gib = n / 2**30
    if gib >= 100:
        return f"{gib:,.0f} GiB"
    return f"{gib:.3g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"
