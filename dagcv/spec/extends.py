"""Variant specs as small diffs: ``extends: base.yaml`` and then only what changes.

The base is a path relative to the extending file (YAML or DSL; chains are allowed, cycles are an error). The
child's plain data is merged onto the base's:

- mappings merge key by key, recursively;
- a block whose ``type`` differs from the base's is a *block swap*: it keeps the base block's ``in:`` and
  ``mode:`` unless it gives its own, and none of its parameters (as ``--set blocks.x='{type: ...}'``);
- a mapping with ``replace: true`` replaces the base's value whole (MMDetection's ``_delete_``);
- ``{remove: true}`` removes the key (a block, an output, a train key);
- lists and scalars replace.

Every value keeps the position of the file that wrote it, so a diagnostic names the base's line for what the
base wrote and the child's line for what the child wrote.

>>> base = {"blocks": {"a": {"type": "x", "in": "img", "k": 1}, "b": {"type": "y"}}, "train": {"epochs": 3}}
>>> child = {"blocks": {"a": {"type": "z"}, "b": {"remove": True}}, "train": {"lr": 0.1}}
>>> merge(base, child, SourceMap("b", ""), SourceMap("c", ""))[0]
{'blocks': {'a': {'type': 'z', 'in': 'img'}}, 'train': {'epochs': 3, 'lr': 0.1}}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dagcv.errors import SpecError
from dagcv.spec.overrides import REMOVE, forget_positions, kept_wiring
from dagcv.spec.source import SourceMap

MAX_CHAIN = 32  # files in one chain of extends


def resolve_extends(data: dict, smap: SourceMap, chain: tuple[Path, ...] = ()) -> tuple[dict, SourceMap, dict]:
    """``data`` merged onto the chain of specs it extends; returns the data, its positions and the base texts.

    ``chain`` holds the resolved paths of the files that extend this one (to report cycles).
    """
    from dagcv.spec.parse import load_plain, read_spec_file

    target = data.pop("extends")
    span = smap.value("extends")
    here = Path(smap.file).resolve()
    chain = (*chain, here)
    if not isinstance(target, str) or not target.strip():
        raise SpecError.at(span, "`extends` takes the path of a spec file", hint="extends: base.yaml")
    path = Path(smap.file).parent / target
    try:
        resolved, is_file = path.resolve(), path.is_file()
    except (OSError, ValueError) as exc:  # a NUL byte, a name longer than the file system allows
        raise SpecError.at(span, f"`extends` names no usable path: {exc}", hint="extends: base.yaml") from None
    if resolved in chain:
        cycle = " → ".join(p.name for p in (*chain, resolved))
        raise SpecError.at(span, f"`extends` makes a cycle: {cycle}", hint="a spec cannot extend itself")
    if len(chain) >= MAX_CHAIN:
        raise SpecError.at(span, f"more than {MAX_CHAIN} specs extend one another")
    if not is_file:
        raise SpecError.at(span, f"no such spec file: {path}", hint="`extends` is relative to the spec that names it")
    text = read_spec_file(path)
    base, base_smap = load_plain(text, str(path))
    sources = {str(path): text}
    if not isinstance(base, dict):
        raise SpecError.at(base_smap.value(), "a spec must be a mapping at the top level").with_sources(sources)
    try:
        if "extends" in base:
            base, base_smap, more = resolve_extends(base, base_smap, chain)
            sources.update(more)
        merged, merged_smap = merge(base, data, base_smap, smap)
    except SpecError as exc:
        raise exc.with_sources(sources) from None
    return merged, merged_smap, sources


def merge(base: dict, child: dict, base_smap: SourceMap, child_smap: SourceMap) -> tuple[dict, SourceMap]:
    """``child`` merged onto ``base`` (see the module docstring), with the positions of both."""
    out = SourceMap(child_smap.file, child_smap.text, dict(base_smap.values), dict(base_smap.keys))
    merged = _merge(copy.deepcopy(base), child, (), out, child_smap)
    return merged, out


def _merge(base: Any, child: Any, path: tuple, out: SourceMap, smap: SourceMap) -> Any:
    if (
        isinstance(base, dict)
        and isinstance(child, dict)
        and child.get("replace") is not True
        and not _swap(path, base, child)
    ):
        for key, value in child.items():
            at = (*path, key)
            if value == REMOVE:
                if key not in base:
                    raise SpecError.at(smap.key(*at), f"'{'.'.join(map(str, at))}' is not in the base spec to remove")
                del base[key]
                forget_positions(out, at)
                continue
            base[key] = _merge(base[key], value, at, out, smap) if key in base else _take(value, at, out, smap)
            if at in smap.keys:
                out.keys[at] = smap.keys[at]
        return base
    kept, kept_values, kept_keys = {}, {}, {}
    if isinstance(base, dict) and _swap(path, base, child):
        kept, kept_values, kept_keys = kept_wiring(base, child, path, out)
    forget_positions(out, path)
    value = _take(child, path, out, smap)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if not (k == "replace" and v is True)}
        value.update(kept)
    out.values.update(kept_values)
    out.keys.update(kept_keys)
    return value


def _swap(path: tuple, base: dict, child: Any) -> bool:
    return (
        len(path) == 2 and path[0] == "blocks" and isinstance(child, dict)
        and "type" in child and child["type"] != base.get("type")
    )  # fmt: skip


def _take(value: Any, path: tuple, out: SourceMap, smap: SourceMap) -> Any:
    """A value the child wrote whole: its positions come from the child."""
    n = len(path)
    out.values.update({q: s for q, s in smap.values.items() if q[:n] == path})
    out.keys.update({q: s for q, s in smap.keys.items() if q[:n] == path})
    return copy.deepcopy(value)
