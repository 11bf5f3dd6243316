"""The YAML front end: positions for every key and value, and nothing unsafe or ambiguous gets through."""

from __future__ import annotations

import pytest

from dagcv.errors import SpecError
from dagcv.spec import parse_spec_text
from dagcv.spec.yaml_loader import load_yaml


def test_positions_of_keys_and_values() -> None:
    data, smap = load_yaml("a:\n  b: [1, {c: x}]\n", "f.yaml")
    assert data == {"a": {"b": [1, {"c": "x"}]}}
    assert (smap.key("a", "b").line, smap.key("a", "b").col) == (2, 3)
    value = smap.value("a", "b", 1, "c")
    assert (value.line, value.col, value.end_col) == (2, 14, 15)
    assert smap.value("a", "b", 1, "missing") == smap.value("a", "b", 1)  # falls back to the parent


def test_duplicate_keys_are_errors_at_any_depth() -> None:
    with pytest.raises(SpecError) as info:
        load_yaml("a:\n  x: 1\n  y: 2\n  x: 3\n", "f.yaml")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col, d.message) == (4, 3, "duplicate key 'x'")
    assert d.notes[0][0].line == 2


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/name:os.system\n",
        "a: !!binary aGVsbG8=\n",
        "a: !custom {x: 1}\n",
    ],
)
def test_only_plain_data_is_constructed(text) -> None:
    with pytest.raises(SpecError, match="unsupported YAML tag"):
        load_yaml(text, "f.yaml")


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(SpecError, match="too large"):
        load_yaml("\n".join(lines) + "\n", "bomb.yaml")


def test_merge_keys_and_anchors_work() -> None:
    data, _ = load_yaml("base: &b {hidden: [8], out_features: 4}\nx:\n  <<: *b\n  out_features: 2\n", "f.yaml")
    assert data["x"] == {"hidden": [8], "out_features": 2}


def test_empty_and_non_mapping_specs() -> None:
    with pytest.raises(SpecError, match="empty"):
        parse_spec_text("# nothing\n", "e.yaml")
    with pytest.raises(SpecError, match="mapping at the top level"):
        parse_spec_text("- a\n- b\n", "e.yaml")


def test_block_params_are_split_from_reserved_keys() -> None:
    spec = parse_spec_text(
        "dagcv: 1\nname: n\nblocks:\n  f: {type: mlp, in: x, mode: eval, out_features: 3}\n", "s.yaml"
    )
    decl = spec.blocks["f"]
    assert (decl.type, decl.inputs, decl.mode, decl.params) == ("mlp", "x", "eval", {"out_features": 3})
