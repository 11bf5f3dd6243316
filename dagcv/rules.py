"""A block's own rules about its parameters and input sizes, checked by ``dagcv check`` (no torch).

A contract may state what its constructor or forward would otherwise refuse at run time, as small Python
expressions over its parameters, its inferred arguments and the symbols its input shapes bind::

    @register_block("fcos_head", ..., requires={
        "in_channels % 32 == 0": "its GroupNorm(32) layers need a channel count divisible by 32",
    })

so that a spec that checks also builds ("if it checks, it compiles"). The expressions use constants, names,
arithmetic (``+ - * // %``), comparisons, ``and``/``or``/``not``, subscripts and the functions in
:data:`FUNCTIONS`; nothing else parses. A rule whose values are missing (an optional port left unconnected,
a parameter left ``None``) does not apply.

>>> holds("len(sizes) == len(ratios) and min(flat(sizes)) > 0", {"sizes": [[32], [64]], "ratios": [[1.0], [1.0]]})
True
>>> holds("len(sizes) == len(ratios)", {"sizes": None, "ratios": [1]}) is None
True
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any


def flat(value: Any) -> list:
    """Every item of nested lists, in order (``flat([[32], [64, 128]])`` is ``[32, 64, 128]``)."""
    if isinstance(value, list | tuple):
        return [x for v in value for x in flat(v)]
    return [value]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "min": min, "max": max, "sum": sum, "abs": abs, "flat": flat,
    "all_positive": lambda xs: all(x > 0 for x in flat(xs)),
}  # fmt: skip

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Mod: operator.mod, ast.Div: operator.truediv}  # fmt: skip
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}  # fmt: skip


class RuleSyntaxError(ValueError):
    """A rule uses syntax outside the small language above (a contract bug, raised at registration)."""


class _NotApplicable(Exception):
    pass


def parse_rule(expr: str) -> ast.expr:
    """The checked syntax tree of a rule; raises :class:`RuleSyntaxError` for anything unsupported."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as exc:
        raise RuleSyntaxError(f"rule {expr!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (
            ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp, ast.Compare, ast.Name,
            ast.Load, ast.Constant, ast.Subscript, ast.List, ast.Tuple, *_BINARY, *_COMPARE,
        )  # fmt: skip
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords):
                raise RuleSyntaxError(f"rule {expr!r}: only {', '.join(FUNCTIONS)} may be called")
        elif not isinstance(node, allowed):
            raise RuleSyntaxError(f"rule {expr!r}: {type(node).__name__} is not allowed")
    return tree


def names(expr: str) -> list[str]:
    """The names a rule reads, in order of appearance (parameters first-named get the error's caret)."""
    found = [n.id for n in ast.walk(parse_rule(expr)) if isinstance(n, ast.Name) and n.id not in FUNCTIONS]
    return list(dict.fromkeys(found))


def holds(expr: str, env: Mapping[str, Any]) -> bool | None:
    """Whether the rule holds for ``env``; ``None`` when it does not apply (a value it reads is missing)."""
    try:
        return bool(_eval(parse_rule(expr), env))
    except _NotApplicable:
        return None


def value(expr: str, env: Mapping[str, Any]) -> Any:
    """The value of an expression (a contract's ``param_count``); ``None`` when a value it reads is missing."""
    try:
        return _eval(parse_rule(expr), env)
    except _NotApplicable:
        return None


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    try:
        return _eval_node(node, env)
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, OverflowError):
        raise _NotApplicable from None


def _eval_node(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env or env[node.id] is None:
            raise _NotApplicable
        return env[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval_node(e, env) for e in node.elts]
    if isinstance(node, ast.BoolOp):
        values = (_eval_node(v, env) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _eval_node(node.operand, env)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval_node(node.left, env), _eval_node(node.right, env))
    if isinstance(node, ast.Compare):
        left = _eval_node(node.left, env)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval_node(right_node, env)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        return _eval_node(node.value, env)[_eval_node(node.slice, env)]
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval_node(a, env) for a in node.args))  # type: ignore[union-attr]
    raise _NotApplicable
