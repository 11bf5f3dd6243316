"""Edits of a spec's plain data by dotted path: ``--set train.optimizer.lr=0.01`` and the points of a sweep.

A path walks the spec's plain data by keys (and list indices). Every step but the last must exist, so a typo
is an error with a did-you-mean rather than a silently added key; the last key may be new, and the schema
then decides whether it is allowed (an unknown parameter is still an error). Values are YAML flow literals.

Replacing a whole block (``--set blocks.backbone='{type: resnet34}'``) is a *block swap*: the new block keeps the
old one's wiring (``in:``, ``mode:``) unless it gives its own, and takes none of its parameters, so swapping a
backbone is one edit. The value ``{remove: true}`` deletes the key (``--set blocks.aux_loss='{remove: true}'``).

Positions follow the value: an override is its own source (``--set #1``), a sweep's value points into the sweep
file, so later diagnostics about that value name the line where it was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagcv.errors import Span, SpecError, did_you_mean
from dagcv.spec.source import SourceMap
from dagcv.spec.yaml_loader import load_yaml

OVERRIDE_FILE = "--set"
WIRING_KEYS = ("in", "mode")  # what a swapped block keeps from the block it replaces
REMOVE = {"remove": True}  # the value that deletes a key (a block left out of a variant)


@dataclass
class Edit:
    """Set ``value`` at the dotted ``path``.

    ``path_span`` locates the path's text (its parts get columns within it when it is on one line);
    ``positions`` holds the spans of ``value`` and everything inside it, by path relative to the value.
    """

    path: str
    value: Any
    path_span: Span
    positions: dict[tuple, Span] = field(default_factory=dict)
    key_positions: dict[tuple, Span] = field(default_factory=dict)

    def parts(self) -> list[str | int]:
        return [int(p) if p.lstrip("-").isdigit() else p for p in self.path.split(".")]


def apply_overrides(data: dict, smap: SourceMap, overrides: list[str]) -> dict[str, str]:
    """Apply ``--set`` texts in place; returns extra sources (for error excerpts) keyed by their pseudo file."""
    sources: dict[str, str] = {}
    for i, text in enumerate(overrides, 1):
        file = f"{OVERRIDE_FILE} #{i}"
        sources[file] = text
        path_text, eq, value_text = text.partition("=")
        if not eq or not path_text.strip():
            raise SpecError.at(
                Span(file, 1, 1),
                f"override '{text}' must be PATH=VALUE",
                hint="e.g. --set train.optimizer.lr=0.01",
            ).with_sources(sources)
        try:
            value = load_yaml(value_text, file)[0] if value_text.strip() else None
        except SpecError:
            raise SpecError.at(  # noqa: B904 - the YAML error adds nothing for the user
                Span(file, 1, len(path_text) + 2),
                f"cannot parse value '{value_text}'",
                hint="values are YAML: 0.01, true, [256, 128], {a: 1}, 'text'",
            ).with_sources(sources)
        value_span = Span(file, 1, len(path_text) + 2, 1, len(text) + 1)
        edit = Edit(path_text.strip(), value, Span(file, 1, 1, 1, len(path_text) + 1), {(): value_span})
        try:
            apply_edit(data, smap, edit)
        except SpecError as exc:
            raise exc.with_sources(sources) from None
    return sources


def apply_edit(data: dict, smap: SourceMap, edit: Edit) -> None:
    """Apply one :class:`Edit` to ``data`` in place and move ``smap``'s positions with it."""
    parts = edit.parts()
    parent: Any = data
    walked: list[str | int] = []
    for j, part in enumerate(parts):
        last = j == len(parts) - 1
        span = _part_span(edit, parts, j)
        if isinstance(parent, list):
            if not isinstance(part, int) or not -len(parent) <= part < len(parent):
                raise SpecError.at(span, f"'{'.'.join(map(str, walked))}' has no item {part}",
                                   hint=f"it has {len(parent)} items")  # fmt: skip
        elif not isinstance(parent, dict):
            raise SpecError.at(span, f"'{'.'.join(map(str, walked))}' is not a mapping; cannot set '{part}'")
        elif str(part) not in parent and not last:
            inside = f" in {'.'.join(map(str, walked))}" if walked else ""
            hint = did_you_mean(str(part), parent) or f"keys: {', '.join(map(str, parent))}"
            raise SpecError.at(span, f"unknown key '{part}'{inside}", hint=hint)
        key = part if isinstance(parent, list) else str(part)
        walked.append(key)
        if not last:
            parent = parent[key]
            continue
        here = tuple(walked)
        if edit.value == REMOVE:
            if not isinstance(parent, dict) or key not in parent:
                raise SpecError.at(span, f"cannot remove '{edit.path}': there is no such key")
            del parent[key]
            forget_positions(smap, here)
            return
        value, kept_values, kept_keys = edit.value, {}, {}
        if _is_block_swap(here, parent.get(key) if isinstance(parent, dict) else None, value):
            kept, kept_values, kept_keys = kept_wiring(parent[key], value, here, smap)
            value = {**value, **kept}
        parent[key] = value
        forget_positions(smap, here)
        smap.values.update({(*here, *q): s for q, s in edit.positions.items()})
        smap.keys.update({(*here, *q): s for q, s in edit.key_positions.items()})
        smap.keys.setdefault(here, edit.path_span)
        smap.values.update(kept_values)
        smap.keys.update(kept_keys)


def kept_wiring(old: dict, new: dict, path: tuple, smap: SourceMap) -> tuple[dict, dict, dict]:
    """What a block swap at ``path`` keeps of the block it replaces: the wiring keys (``in:``, ``mode:``) the new
    block does not give, and their value and key positions in ``smap`` (the file that wrote them)."""
    kept = {k: old[k] for k in WIRING_KEYS if k in old and k not in new}
    at = [(*path, k) for k in kept]

    def under(q: tuple) -> bool:
        return any(q[: len(k)] == k for k in at)

    return kept, {q: s for q, s in smap.values.items() if under(q)}, {q: s for q, s in smap.keys.items() if under(q)}


def _is_block_swap(path: tuple, old: Any, new: Any) -> bool:
    return (
        len(path) == 2
        and path[0] == "blocks"
        and isinstance(old, dict)
        and isinstance(new, dict)
        and ("type" in new or "shares" in new)
    )


def _part_span(edit: Edit, parts: list, j: int) -> Span:
    s = edit.path_span
    if s.end_line not in (None, s.line):
        return s
    return s.shifted(len(".".join(map(str, parts[:j]))) + (1 if j else 0), len(str(parts[j])))


def forget_positions(smap: SourceMap, path: tuple) -> None:
    """Drop positions under ``path``: the file no longer holds that value."""
    for table in (smap.values, smap.keys):
        for key in [k for k in table if k[: len(path)] == path]:
            del table[key]
