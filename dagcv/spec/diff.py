"""``dagcv diff A B``: what two specs (or two points of a sweep) differ in, block by block.

Specs are compared as dagcv reads them (``extends`` merged, overrides applied), so a variant and its base, two
sweep points, or a run's ``spec.resolved.yaml`` and the spec it came from can be compared alike.

>>> from dagcv.spec import parse_spec_text
>>> a = parse_spec_text("dagcv: 1\\nname: a\\nblocks: {f: {type: lenet_features}}\\n", "a.yaml")
>>> b = parse_spec_text("dagcv: 1\\nname: a\\nblocks: {f: {type: resnet18}, g: {type: fpn, in: f}}\\n", "b.yaml")
>>> print(format_diff(spec_diff(a, b)))
blocks:
  f.type: lenet_features → resnet18
  + g: {type: fpn, in: f}
"""

from __future__ import annotations

import json
from typing import Any

from dagcv.spec.ir import Spec

ABSENT = object()
SECTIONS = ("name", "description", "inputs", "sizes", "blocks", "outputs", "data", "train")


def spec_diff(a: Spec, b: Spec) -> dict[str, list[str]]:
    """Section → lines (``path: old → new``, ``+ name: value``, ``- name: value``); empty when equal."""
    da, db = _plain(a), _plain(b)
    out: dict[str, list[str]] = {}
    for section in SECTIONS:
        lines: list[str] = []
        va, vb = da.get(section, ABSENT), db.get(section, ABSENT)
        if section == "blocks":
            for name in [*va, *(n for n in vb if n not in va)]:
                if name not in vb:
                    lines.append(f"- {name}: {_show(va[name])}")
                elif name not in va:
                    lines.append(f"+ {name}: {_show(vb[name])}")
                else:
                    lines += _changes(va[name], vb[name], name)
        elif isinstance(va, dict) and isinstance(vb, dict):
            lines += _changes(va, vb, "")
        elif va != vb:
            lines.append(f"{_show(va)} → {_show(vb)}")
        if lines:
            out[section] = lines
    return out


def format_diff(diff: dict[str, list[str]]) -> str:
    if not diff:
        return "no differences"
    return "\n".join(f"{section}:\n" + "\n".join(f"  {line}" for line in lines) for section, lines in diff.items())


def _plain(spec: Spec) -> dict[str, Any]:
    """The spec as written: block parameters inline beside type, in and mode."""
    data = spec.model_dump(mode="json", exclude_none=True, by_alias=True)
    data["blocks"] = {
        name: {k: v for k, v in {**{k: d.get(k) for k in ("type", "shares", "in", "mode")}, **d["params"]}.items()
               if v is not None}
        for name, d in data["blocks"].items()
    }  # fmt: skip
    return data


def _changes(a: dict, b: dict, prefix: str) -> list[str]:
    lines = []
    for key in [*a, *(k for k in b if k not in a)]:
        path = f"{prefix}.{key}" if prefix else str(key)
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        if isinstance(va, dict) and isinstance(vb, dict):
            lines += _changes(va, vb, path)
        elif va != vb:
            lines.append(f"{path}: {_show(va)} → {_show(vb)}")
    return lines


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
