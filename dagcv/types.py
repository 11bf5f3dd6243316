"""Port kinds and symbolic shapes, checked before any torch code runs.

A port type is written ``Kind[dim, dim, ...]``: ``Image[B, 3, H, W]``, ``FeatureMap[B, C, H/8, W/8]``,
``Loss[]`` (a scalar), ``Logits[B, *F]`` (``*F`` binds any number of dims), or a bare ``Kind`` (any shape).
Dims are small integer expressions over symbols: ``+ - * // % /`` (``/`` must divide exactly), ``cdiv(a, b)``
(ceil division), ``prod(F)``, ``min``, ``max``, ``rcnn_resize(X, H, W, min_size, max_size)`` (torchvision's detection
resize of ``X``, a height or width of an ``H×W`` image).

Every symbol gets an example size (``sizes:`` in the spec, ``B`` defaults to 2), so each dim carries both its
symbolic text (``H/8``, for reading and rendering) and a concrete value (for checking)::

    >>> t = parse_port_type("FeatureMap[B, C, H/8, W/8]")
    >>> env = {"B": Dim.symbol("B", 2), "C": Dim.const(16), "H": Dim.symbol("H", 64), "W": Dim.symbol("W", 64)}
    >>> format_shape(evaluate_dims(t.dims, env))
    'B×16×H/8×W/8'
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dagcv.limits import limits

# ---------------------------------------------------------------------------------------------------------------
# The kind vocabulary: a closed set with single inheritance. Extending it is a reviewed change.


@dataclass(frozen=True)
class Kind:
    """A port kind: its parent in the subtype tree, whether it is a tensor, and how to make an example of it."""

    name: str
    parent: str | None
    tensor: bool = True
    dtype: str = "float32"  # example dtype for tensors
    static: bool = False  # known at build time only; never passed at run time
    doc: str = ""


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("Any", None, tensor=False, doc="anything"),
        Kind("Tensor", "Any", doc="any tensor"),
        Kind("FeatureMap", "Tensor", doc="dense features, channels first (B C H W)"),
        Kind("Image", "FeatureMap", doc="an image batch (B C H W), float"),
        Kind("Mask", "Tensor", doc="per-pixel masks or mask logits"),
        Kind("Logits", "Tensor", doc="unnormalised class scores"),
        Kind("Embedding", "Tensor", doc="a vector per sample (B D)"),
        Kind("Labels", "Tensor", dtype="int64", doc="class indices"),
        Kind("Codes", "Labels", dtype="int64", doc="discrete code indices; `vocab V` after the dims: how many codes"),
        Kind("Noise", "Embedding", doc="random latent vectors drawn by a noise source (B Z)"),
        Kind("Timesteps", "Tensor", dtype="int64", doc="diffusion timesteps, one integer in [0, T) per sample (B)"),
        Kind("ImageSizes", "Tensor", dtype="int64", doc="each image's (height, width) before padding (B 2)"),
        Kind("Scalar", "Tensor", doc="a 0-d tensor"),
        Kind("Loss", "Scalar", doc="a differentiable scalar to minimise"),
        Kind("Metric", "Scalar", doc="a scalar to log"),
        Kind("Observation", "Tensor", doc="an RL observation batch"),
        Kind("Action", "Tensor", dtype="int64", doc="an RL action batch (discrete: one index per sample)"),
        Kind("BoxAction", "Action", dtype="float32", doc="a batch of continuous actions (B A)"),
        Kind("Reward", "Tensor", doc="an RL reward batch"),
        Kind("Value", "Tensor", doc="a state-value estimate per sample"),
        Kind("FeaturePyramid", "Any", tensor=False, doc="named multi-scale maps, finest first (dict of B C H W)"),
        Kind("Boxes", "Any", tensor=False, doc="per-image boxes (list of N 4 tensors, xyxy)"),
        Kind("Targets", "Any", tensor=False, doc="per-image targets on an H W canvas (list of dicts)"),
        Kind("Detections", "Any", tensor=False, doc="per-image detections (list of dicts: boxes, scores, labels)"),
        Kind("Distribution", "Any", tensor=False, doc="a torch.distributions object"),
        Kind("Space", "Any", tensor=False, static=True, doc="a Gymnasium space, known at build time"),
        Kind("ActionSpace", "Space", tensor=False, static=True, doc="an action space, known at build time"),
        Kind("DiscreteSpace", "ActionSpace", tensor=False, static=True, doc="Discrete(n); dims: the number of actions"),
        Kind("BoxSpace", "ActionSpace", tensor=False, static=True, doc="a Box of continuous actions; dims: its shape"),
        Kind("EnvHandle", "Any", tensor=False, static=True, doc="how to make the environment (build-time)"),
    ]
}


def is_subkind(child: str, parent: str) -> bool:
    """Whether a value of kind ``child`` may flow into a port of kind ``parent``.

    >>> is_subkind("Image", "Tensor"), is_subkind("FeatureMap", "Logits")
    (True, False)
    """
    name: str | None = child
    while name is not None:
        if name == parent:
            return True
        name = KINDS[name].parent
    return False


# ---------------------------------------------------------------------------------------------------------------
# Dims: an example value plus the symbolic text it came from.


@dataclass(frozen=True)
class Dim:
    """One dimension: ``text`` is what a reader sees (``H/8``), ``value`` the example size it stands for."""

    text: str
    value: int
    runtime: bool = False  # known only at run time (the number of RoIs): matches any size, checked nowhere

    @staticmethod
    def const(value: int) -> Dim:
        return Dim(str(value), value)

    @staticmethod
    def symbol(name: str, value: int) -> Dim:
        return Dim(name, value)

    @staticmethod
    def at_runtime(name: str) -> Dim:
        """A dim that only the data decide (``R`` proposals per batch); its example value is 1."""
        return Dim(name, 1, runtime=True)

    @property
    def is_const(self) -> bool:
        return self.text.lstrip("-").isdigit()

    def __str__(self) -> str:
        return self.text

    def show(self) -> str:
        """``H=64`` for a symbolic dim, ``64`` for a constant, ``R`` for a run-time dim."""
        return self.text if self.is_const or self.runtime else f"{self.text}={self.value}"


class ShapeError(ValueError):
    """A dim expression cannot be evaluated (unknown symbol, inexact division, bad syntax)."""

    def __init__(self, message: str, offset: int = 0, length: int | None = None):
        super().__init__(message)
        self.offset = offset
        self.length = length


_PRECEDENCE = {ast.Add: 1, ast.Sub: 1, ast.Mult: 2, ast.FloorDiv: 2, ast.Div: 2, ast.Mod: 2}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Div: "/", ast.Mod: "%"}


def checked(value: int) -> int:
    """``value``, or a :class:`ShapeError` when it is larger than any dim a spec may ask for."""
    cap = limits().dim_value
    if abs(value) > cap:
        raise ShapeError(f"dim {'-' if value < 0 else ''}{_magnitude(abs(value))} is larger than the limit {cap:,}")
    return value


def _magnitude(value: int) -> str:
    return f"{value:,}" if value < 10**15 else f"~1e{len(str(value)) - 1}"


def _binop(op: ast.operator, a: Dim, b: Dim, prec_a: int, prec_b: int) -> tuple[Dim, int]:
    kind = type(op)
    prec = _PRECEDENCE[kind]
    left = f"({a.text})" if prec_a < prec else a.text
    right = f"({b.text})" if prec_b <= prec and not b.is_const else b.text
    text = f"{left}{_SYMBOL[kind]}{right}"
    if a.runtime or b.runtime:
        return Dim.at_runtime(text), prec
    if kind is ast.Add:
        value = a.value + b.value
    elif kind is ast.Sub:
        value = a.value - b.value
    elif kind is ast.Mult:
        value = a.value * b.value
    elif b.value == 0:
        raise ShapeError(f"division by zero in '{a.text} {_SYMBOL[kind]} {b.text}'")
    elif kind is ast.FloorDiv:
        value = a.value // b.value
    elif kind is ast.Mod:
        value = a.value % b.value
    else:  # exact division
        if a.value % b.value:
            raise ShapeError(f"{a.show()} is not divisible by {b.show()}")
        value = a.value // b.value
    checked(value)
    if a.is_const and b.is_const:
        return Dim.const(value), 3
    return Dim(text, value), prec


def rcnn_resize(size: int, height: int, width: int, min_size: int, max_size: int) -> int:
    """``size`` (a height or width) after torchvision's detection resize of a ``height×width`` image.

    ``GeneralizedRCNNTransform`` scales the shorter side to ``min_size`` unless the longer side would pass
    ``max_size``, and interpolation floors ``size × scale`` (both in double precision, as here).

    >>> rcnn_resize(480, 480, 640, 800, 1333), rcnn_resize(640, 480, 640, 800, 1333)
    (800, 1066)
    """
    if min(size, height, width, min_size, max_size) <= 0:
        raise ShapeError(f"rcnn_resize({size}, {height}, {width}, {min_size}, {max_size}): every size must be positive")
    return math.floor(size * min(min_size / min(height, width), max_size / max(height, width)))


def _call(name: str, args: list[Dim | list[Dim]]) -> Dim:
    flat = [a for a in args if isinstance(a, Dim)]
    dims = [d for a in args for d in (a if isinstance(a, list) else [a])]
    if any(d.runtime for d in dims):
        return Dim.at_runtime(f"{name}({', '.join(d.text for d in dims)})")
    if name == "rcnn_resize" and len(flat) == 5:
        value = checked(rcnn_resize(*(d.value for d in flat)))
        if all(d.is_const for d in flat):
            return Dim.const(value)
        return Dim(f"rcnn_resize({flat[0].text})", value)
    if name == "prod":
        dims = args[0] if len(args) == 1 and isinstance(args[0], list) else flat
        value = checked(math.prod(d.value for d in dims))
        if all(d.is_const for d in dims):
            return Dim.const(value)
        return Dim("*".join(d.text if d.text.isidentifier() or d.is_const else f"({d.text})" for d in dims), value)
    if name == "cdiv" and len(flat) == 2:
        a, b = flat
        if b.value == 0:
            raise ShapeError(f"division by zero in 'cdiv({a.text}, {b.text})'")
        value = -(-a.value // b.value)
    elif name in ("min", "max") and flat:
        value = (min if name == "min" else max)(d.value for d in flat)
    else:
        raise ShapeError(f"unknown dim function {name}() or wrong arguments")
    checked(value)
    if all(d.is_const for d in flat):
        return Dim.const(value)
    return Dim(f"{name}({', '.join(d.text for d in flat)})", value)


def _eval(node: ast.AST, env: Mapping[str, object]) -> tuple[Dim | list[Dim], int]:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Dim.const(checked(node.value)), 3
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ShapeError(f"unknown symbol '{node.id}'", node.col_offset, len(node.id))
        value = env[node.id]
        if isinstance(value, Dim) or (isinstance(value, list) and all(isinstance(v, Dim) for v in value)):
            return value, 3
        if type(value) is int:
            return Dim.const(value), 3
        raise ShapeError(f"'{node.id}' is not an integer (got {value!r})", node.col_offset, len(node.id))
    if isinstance(node, ast.BinOp) and type(node.op) in _PRECEDENCE:
        (a, pa), (b, pb) = _eval(node.left, env), _eval(node.right, env)
        if isinstance(a, list) or isinstance(b, list):
            raise ShapeError("a variadic dim group can only be used inside prod()", node.col_offset)
        return _binop(node.op, a, b, pa, pb)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        (a, _) = _eval(node.operand, env)
        if isinstance(a, list):
            raise ShapeError("cannot negate a dim group", node.col_offset)
        return (Dim.const(-a.value) if a.is_const else Dim(f"-{a.text}", -a.value)), 3
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        args = [_eval(a, env)[0] for a in node.args]
        return _call(node.func.id, args), 3
    raise ShapeError(f"unsupported dim expression '{ast.unparse(node)}'", getattr(node, "col_offset", 0))


def evaluate(expr: str, env: Mapping[str, object]) -> Dim:
    """Evaluate one dim expression (``"(H-4)//2"``) against symbols bound to :class:`Dim` or int values."""
    result, _ = _eval(parse_dim(expr), env)
    if isinstance(result, list):
        raise ShapeError(f"'{expr}' is a group of dims, not one dim")
    return result


def parse_dim(expr: str) -> ast.expr:
    """The syntax tree of one dim expression, within the limits on its length and nesting."""
    cap = limits()
    text = expr.strip()
    if len(text) > cap.dim_chars:
        raise ShapeError(f"dim expression of {len(text)} characters is too long (limit {cap.dim_chars})")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        offset = (exc.offset or 1) - 1 if isinstance(exc, SyntaxError) else 0
        raise ShapeError(f"invalid dim expression '{expr}'", offset) from None
    if _depth(tree.body) > cap.dim_depth:
        raise ShapeError(f"dim expression nested more than {cap.dim_depth} deep")
    return tree.body


def _depth(node: ast.AST) -> int:
    """The depth of a syntax tree, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


# ---------------------------------------------------------------------------------------------------------------
# Port types: Kind[dims]


@dataclass(frozen=True)
class DimPattern:
    """One entry of a shape pattern: an expression, or ``*NAME`` binding any number of dims."""

    expr: str
    variadic: bool = False
    offset: int = 0  # column offset inside the type string, for error carets

    @property
    def symbol(self) -> str | None:
        """The bare symbol this entry binds, if it is just a name."""
        return self.expr if self.expr.isidentifier() else None


@dataclass(frozen=True)
class PortType:
    """A parsed port type: ``kind``, optional ``dims`` (``None`` = any shape), whether it is optional, and for
    ``Codes`` the size of their vocabulary (``Codes[B, H, W] vocab V``), unified like a dim."""

    kind: str
    dims: tuple[DimPattern, ...] | None
    optional: bool = False
    text: str = ""
    vocab: DimPattern | None = None

    def __str__(self) -> str:
        return self.text


def parse_port_type(text: str) -> PortType:
    """Parse ``Kind[d, ...]`` (optionally followed by ``?``); raises :class:`ShapeError` with a column offset.

    >>> parse_port_type("Logits[B, *F]?").dims[1]
    DimPattern(expr='F', variadic=True, offset=10)
    """
    raw = text
    body = text.rstrip()
    optional = body.endswith("?")
    if optional:
        body = body[:-1].rstrip()
    lead = len(body) - len(body.lstrip())
    body = body.strip()
    name_end = body.find("[")
    kind = body if name_end < 0 else body[:name_end].strip()
    if not kind.isidentifier():
        raise ShapeError(f"invalid port type '{raw}': expected Kind[dims], e.g. Image[B, 3, H, W]", lead)
    if kind not in KINDS:
        from dagcv.errors import did_you_mean

        hint = did_you_mean(kind, KINDS)
        raise ShapeError(
            f"unknown kind '{kind}'" + (f"; {hint}" if hint else f"; kinds: {', '.join(KINDS)}"), lead, len(kind)
        )
    vocab = None
    match = _VOCAB.search(body)
    if match is not None:
        if kind not in VOCAB_KINDS:
            raise ShapeError(f"'vocab' is for {', '.join(VOCAB_KINDS)}, not {kind}", lead + match.start() + 1)
        (vocab,) = _parse_dims(match.group(1), lead + match.start(1))
        body = body[: match.start()].rstrip()
    if name_end < 0:
        return PortType(kind, None, optional, raw.strip(), vocab)
    if not body.endswith("]"):
        raise ShapeError(f"invalid port type '{raw}': missing ']'", lead + len(body))
    inner = body[name_end + 1 : -1]
    base = lead + name_end + 1
    return PortType(kind, _parse_dims(inner, base), optional, raw.strip(), vocab)


VOCAB_KINDS = ("Codes",)  # kinds whose values index a vocabulary that travels with the type
_VOCAB = re.compile(r"\s+vocab\s+([^\s\[\],]+)\s*$")


def _parse_dims(inner: str, base: int) -> tuple[DimPattern, ...]:
    if not inner.strip():
        return ()
    cap = limits()
    if len(inner) > 16 * cap.dim_chars:
        raise ShapeError(f"dims of {len(inner)} characters are too long", base)
    try:
        tree = ast.parse(f"({inner},)", mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        offset = (exc.offset or 2) - 2 if isinstance(exc, SyntaxError) else 0
        raise ShapeError(f"invalid dims '[{inner[:60]}]'", base + max(0, offset)) from None
    dims: list[DimPattern] = []
    for elt in tree.body.elts:  # type: ignore[attr-defined]
        offset = base + elt.col_offset - 1
        if isinstance(elt, ast.Starred):
            if not isinstance(elt.value, ast.Name):
                raise ShapeError("'*' must be followed by a name, e.g. *F", offset)
            dims.append(DimPattern(elt.value.id, True, offset))
        else:
            if _depth(elt) > cap.dim_depth:
                raise ShapeError(f"dim expression nested more than {cap.dim_depth} deep", offset)
            text = ast.unparse(elt)
            parse_dim(text)  # within the limits
            dims.append(DimPattern(text, False, offset))
    if sum(d.variadic for d in dims) > 1:
        raise ShapeError("at most one '*NAME' group per shape", base)
    return tuple(dims)


def evaluate_dims(patterns: Sequence[DimPattern], env: Mapping[str, object]) -> list[Dim]:
    """Evaluate a shape pattern to concrete dims (``*F`` expands to the dims bound to ``F``)."""
    out: list[Dim] = []
    for p in patterns:
        if p.variadic:
            group = env.get(p.expr)
            if not isinstance(group, list):
                raise ShapeError(f"unknown dim group '*{p.expr}'", p.offset)
            out.extend(group)
        else:
            try:
                out.append(evaluate(p.expr, env))
            except ShapeError as exc:
                raise ShapeError(str(exc), p.offset + exc.offset, exc.length) from None
    return out


@dataclass
class Mismatch:
    """Why a shape did not fit a pattern: which entry (index into the pattern) and the message."""

    index: int | None
    message: str


def bind_shape(
    patterns: Sequence[DimPattern], shape: Sequence[Dim], env: dict[str, object], known: Callable[[str], bool]
) -> Mismatch | None:
    """Unify a concrete shape with a pattern, binding new symbols into ``env``.

    A bare symbol not yet in ``env`` binds to the dim; anything else is evaluated and compared by example value.
    ``known(name)`` says whether ``name`` is a parameter (params are compared, never bound).
    """
    variadic = [i for i, p in enumerate(patterns) if p.variadic]
    fixed = len(patterns) - len(variadic)
    if (not variadic and len(shape) != len(patterns)) or (variadic and len(shape) < fixed):
        want = f"{fixed}+" if variadic else str(len(patterns))
        return Mismatch(None, f"rank mismatch: expected {want} dims, found {len(shape)}")
    head = variadic[0] if variadic else len(patterns)
    tail = len(patterns) - head - 1 if variadic else 0
    pairs: list[tuple[int, DimPattern, Dim | list[Dim]]] = [(i, patterns[i], shape[i]) for i in range(head)]
    if variadic:
        pairs.append((head, patterns[head], list(shape[head : len(shape) - tail])))
        pairs += [(head + 1 + j, patterns[head + 1 + j], shape[len(shape) - tail + j]) for j in range(tail)]
    for index, pattern, dim in pairs:
        name = pattern.symbol
        if name is not None and name not in env and not known(name):
            env[name] = dim
            continue
        if isinstance(dim, list):
            bound = env.get(name) if name else None
            if not isinstance(bound, list) or [d.value for d in bound] != [d.value for d in dim]:
                return Mismatch(index, f"dims {format_shape(dim)} do not match *{pattern.expr}")
            continue
        try:
            want = evaluate(pattern.expr, env)
        except ShapeError as exc:
            return Mismatch(index, str(exc))
        if want.value != dim.value and not (want.runtime or dim.runtime):
            expected = want.show() if pattern.expr == want.text else f"{pattern.expr}={want.value}"
            return Mismatch(index, f"dim {index} is {dim.show()}, expected {expected}")
    return None


def format_shape(dims: Sequence[Dim] | None, concrete: bool = False) -> str:
    """``B×16×H/8×W/8`` (symbolic) or ``2×16×8×8`` (concrete); ``[]`` for a scalar; ``?`` when unknown."""
    if dims is None:
        return "?"
    if not dims:
        return "[]"
    return "×".join(str(d.value) if concrete and not d.runtime else d.text for d in dims)
