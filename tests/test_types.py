"""Port types, dim expressions and shape unification (no torch involved)."""

from __future__ import annotations

import pytest

from dagcv.types import Dim, ShapeError, bind_shape, evaluate, evaluate_dims, format_shape, is_subkind, parse_port_type


def dims(*pairs) -> list[Dim]:
    return [Dim.const(p) if isinstance(p, int) else Dim.symbol(*p) for p in pairs]


def test_subkinds() -> None:
    assert is_subkind("Image", "FeatureMap") and is_subkind("Image", "Tensor") and is_subkind("Loss", "Scalar")
    assert not is_subkind("FeatureMap", "Image") and not is_subkind("Distribution", "Tensor")
    assert is_subkind("ActionSpace", "Space")


@pytest.mark.parametrize(
    ("expr", "env", "text", "value"),
    [
        ("H/8", {"H": Dim.symbol("H", 64)}, "H/8", 8),
        ("((H-4)//2-4)//2", {"H": Dim.const(32)}, "5", 5),
        ("((H-4)//2-4)//2", {"H": Dim.symbol("H", 28)}, "((H-4)//2-4)//2", 4),
        ("cdiv(H, 32)", {"H": Dim.symbol("H", 33)}, "cdiv(H, 32)", 2),
        ("prod(F)", {"F": dims(16, 5, 5)}, "400", 400),
        ("prod(F)", {"F": dims(("C", 3), 4)}, "C*4", 12),
        ("2*(C+1)", {"C": Dim.symbol("C", 3)}, "2*(C+1)", 8),
        ("num_classes", {"num_classes": 10}, "10", 10),
        ("max(H, W)", {"H": Dim.const(3), "W": Dim.symbol("W", 5)}, "max(3, W)", 5),
    ],
)
def test_evaluate(expr, env, text, value) -> None:
    d = evaluate(expr, env)
    assert (d.text, d.value) == (text, value)


@pytest.mark.parametrize(
    ("expr", "env", "message"),
    [
        ("H/4", {"H": Dim.symbol("H", 30)}, "H=30 is not divisible by 4"),
        ("X + 1", {}, "unknown symbol 'X'"),
        ("H ** 2", {"H": Dim.const(2)}, "unsupported dim expression"),
        ("__import__('os')", {}, "unsupported dim expression"),
        ("H.real", {"H": Dim.const(2)}, "unsupported dim expression"),
    ],
)
def test_evaluate_rejects(expr, env, message) -> None:
    with pytest.raises(ShapeError, match=message.replace("(", r"\(").replace("*", r"\*")):
        evaluate(expr, env)


def test_parse_port_type_and_errors() -> None:
    t = parse_port_type("Logits[B, *F]?")
    assert t.kind == "Logits" and t.optional and [d.expr for d in t.dims] == ["B", "F"] and t.dims[1].variadic
    assert parse_port_type("Loss[]").dims == () and parse_port_type("Distribution").dims is None
    with pytest.raises(ShapeError, match="unknown kind 'Imag'; did you mean 'Image'") as info:
        parse_port_type("Imag[B]")
    assert info.value.offset == 0 and info.value.length == 4
    with pytest.raises(ShapeError, match="missing ']'"):
        parse_port_type("Image[B, 3")
    with pytest.raises(ShapeError, match="at most one"):
        parse_port_type("Tensor[*A, *B]")


def test_bind_shape_binds_and_compares() -> None:
    pattern = parse_port_type("FeatureMap[B, C, H, W]").dims
    env: dict = {"B": Dim.symbol("B", 2)}
    assert bind_shape(pattern, dims(("B", 2), 16, ("H/8", 4), ("W/8", 4)), env, lambda s: False) is None
    assert env["C"].value == 16 and env["H"].text == "H/8"
    # A symbol already bound must agree; a literal must match; rank must match.
    mismatch = bind_shape(parse_port_type("Tensor[B, C]").dims, dims(("N", 3), 16), env, lambda s: False)
    assert mismatch.index == 0 and "N=3, expected B=2" in mismatch.message
    assert "rank mismatch" in bind_shape(pattern, dims(2, 3), {}, lambda s: False).message
    assert "expected 3" in bind_shape(parse_port_type("Image[B, 3, H, W]").dims, dims(2, 1, 8, 8), {},
                                      lambda s: False).message  # fmt: skip


def test_variadic_binding() -> None:
    env: dict = {}
    pattern = parse_port_type("Tensor[B, *F, K]").dims
    assert bind_shape(pattern, dims(2, 3, 4, 5), env, lambda s: False) is None
    assert [d.value for d in env["F"]] == [3, 4] and env["K"].value == 5
    assert format_shape(evaluate_dims(parse_port_type("Tensor[B, *F]").dims, env)) == "2×3×4"
    assert format_shape([]) == "[]" and format_shape(None) == "?"
