"""Command-line overrides: ``--set train.optimizer.lr=0.01 --set blocks.classifier.hidden=[256]``.

A path walks the spec's plain data by keys (and list indices). Every step but the last must exist, so a typo
is an error with a did-you-mean rather than a silently added key; the last key may be new, and the schema
then decides whether it is allowed (an unknown parameter is still an error). Values are YAML flow literals.
Each override is its own source (``--set``), so later diagnostics point into the command line.
"""

from __future__ import annotations

from typing import Any

from dagcv.errors import Span, SpecError, did_you_mean
from dagcv.spec.source import SourceMap
from dagcv.spec.yaml_loader import load_yaml

OVERRIDE_FILE = "--set"


def apply_overrides(data: dict, smap: SourceMap, overrides: list[str]) -> dict[str, str]:
    """Apply ``overrides`` in place; returns extra sources (for error excerpts) keyed by their pseudo file."""
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
        parts = _split(path_text.strip())
        parent: Any = data
        walked: list[str | int] = []
        for j, part in enumerate(parts):
            last = j == len(parts) - 1
            col = 1 + len(".".join(map(str, parts[:j]))) + (1 if j else 0)
            span = Span(file, 1, col, 1, col + len(str(part)))
            if isinstance(parent, list):
                if not isinstance(part, int) or not -len(parent) <= part < len(parent):
                    raise SpecError.at(
                        span, f"'{'.'.join(map(str, walked))}' has no item {part}", hint=f"it has {len(parent)} items"
                    ).with_sources(sources)
            elif not isinstance(parent, dict):
                raise SpecError.at(
                    span, f"'{'.'.join(map(str, walked))}' is not a mapping; cannot set '{part}'"
                ).with_sources(sources)
            elif str(part) not in parent and not last:
                inside = f" in {'.'.join(map(str, walked))}" if walked else ""
                hint = did_you_mean(str(part), parent) or f"keys: {', '.join(parent)}"
                raise SpecError.at(span, f"unknown key '{part}'{inside}", hint=hint).with_sources(sources)
            key = part if isinstance(parent, list) else str(part)
            walked.append(key)
            if last:
                parent[key] = value
                value_span = Span(file, 1, len(path_text) + 2, 1, len(text) + 1)
                _forget(smap, tuple(walked))
                smap.values[tuple(walked)] = value_span
                smap.keys[tuple(walked)] = Span(file, 1, 1, 1, len(path_text) + 1)
            else:
                parent = parent[key]
    return sources


def _split(path: str) -> list[str | int]:
    return [int(p) if p.lstrip("-").isdigit() else p for p in path.split(".")]


def _forget(smap: SourceMap, path: tuple) -> None:
    """Drop positions under ``path``: the file no longer holds that value."""
    for table in (smap.values, smap.keys):
        for key in [k for k in table if k[: len(path)] == path]:
            del table[key]
