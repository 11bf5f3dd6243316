"""The last step of reading a spec, whatever its syntax: plain data that every later stage can trust.

Both front ends (and ``--set``) hand over plain data and a :class:`~dagcv.spec.source.SourceMap`. Before any
validation sees it, :func:`sanitize`

- normalises every string and mapping key to Unicode NFC, so that ``café`` typed with a combining accent and
  with a precomposed one is one name (two spellings of one key in one mapping are a duplicate key);
- refuses lone surrogates (``"\\ud800"``), which no file, terminal or Graphviz can encode;
- refuses integers beyond 64 bits, strings longer than the limit, nesting deeper than the limit and more values
  than the limit.

Every problem is a positioned diagnostic, all of them reported together.

>>> from dagcv.spec.source import SourceMap
>>> data, _ = sanitize({"cafe\\u0301": 1}, SourceMap("f.yaml", ""))
>>> list(data) == ["caf\\u00e9"]
True
"""

from __future__ import annotations

import unicodedata
from typing import Any

from dagcv.errors import Diagnostic, SpecError
from dagcv.limits import Limits, limits
from dagcv.spec.source import Path, SourceMap


def nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _surrogate(text: str) -> int:
    """The index of the first lone surrogate in ``text``, or -1."""
    if text.isascii():
        return -1
    return next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), -1)


class _Sanitizer:
    def __init__(self, smap: SourceMap, caps: Limits) -> None:
        self.smap = smap
        self.caps = caps
        self.errors: list[Diagnostic] = []
        self.renamed: dict[Path, Path] = {}  # original path -> normalised path, for the source map
        self.count = 0

    def value(self, value: Any, path: Path, new_path: Path, depth: int) -> Any:
        self.count += 1
        if self.count == self.caps.nodes + 1:
            self.errors.append(Diagnostic(f"spec holds more than {self.caps.nodes:,} values", self.smap.value(*path),
                                          hint="see `dagcv --limit nodes=...`"))  # fmt: skip
        if depth > self.caps.depth:
            self.errors.append(Diagnostic("value is nested too deeply", self.smap.value(*path),
                                          hint=f"nesting limit: {self.caps.depth}"))  # fmt: skip
            return None
        if path != new_path:
            self.renamed[path] = new_path
        if isinstance(value, str):
            return self.string(value, self.smap.value(*path))
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            if abs(value) >= 2**self.caps.int_bits:
                self.errors.append(Diagnostic(f"integer too large: {str(value)[:24]}{'...' * (value >= 10**24)}",
                                              self.smap.value(*path), hint=_int_hint(self.caps)))  # fmt: skip
            return value
        if isinstance(value, list):
            return [self.value(v, (*path, i), (*new_path, i), depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return self.mapping(value, path, new_path, depth)
        return value

    def mapping(self, value: dict, path: Path, new_path: Path, depth: int) -> dict:
        out: dict[Any, Any] = {}
        first: dict[str, Any] = {}
        for key, item in value.items():
            new_key = self.string(key, self.smap.key(*path, key)) if isinstance(key, str) else key
            if new_key in out:
                span = self.smap.key(*path, key)
                other = self.smap.key(*path, first[new_key])
                self.errors.append(Diagnostic(
                    f"duplicate key '{new_key}' (the same name in another Unicode spelling)", span,
                    hint="Unicode names are compared in NFC form; rename one of them",
                    notes=[(other, "first defined here")] if other else [],
                ))  # fmt: skip
                continue
            first[new_key] = key
            out[new_key] = self.value(item, (*path, key), (*new_path, new_key), depth + 1)
        return out

    def string(self, text: str, span: Any) -> str:
        bad = _surrogate(text)
        if bad >= 0:
            message = f"invalid character U+{ord(text[bad]):04X} (a lone surrogate) in a string"
            self.errors.append(Diagnostic(message, span, hint="a \\uD800-\\uDFFF escape must be half of a pair"))
            return text.encode("utf-8", "replace").decode("utf-8")
        if len(text) > self.caps.string_chars:
            self.errors.append(Diagnostic(f"string of {len(text):,} characters is too long", span,
                                          hint=f"limit: {self.caps.string_chars:,} (see `dagcv --limit`)"))  # fmt: skip
            return text[:16]
        return nfc(text)


def _int_hint(caps: Limits) -> str:
    return f"integers in a spec must fit in {caps.int_bits + 1} bits (at most {2**caps.int_bits - 1:,})"


def sanitize(data: Any, smap: SourceMap) -> tuple[Any, SourceMap]:
    """``data`` with every string in NFC, checked against the limits; raises :class:`SpecError` listing all."""
    worker = _Sanitizer(smap, limits())
    clean = worker.value(data, (), (), 0)
    if worker.errors:
        raise SpecError(worker.errors)
    if worker.renamed:
        smap.values = {_moved(p, worker.renamed): s for p, s in smap.values.items()}
        smap.keys = {_moved(p, worker.renamed): s for p, s in smap.keys.items()}
    return clean, smap


def _moved(path: Path, renamed: dict[Path, Path]) -> Path:
    for i in range(len(path), 0, -1):
        new = renamed.get(path[:i])
        if new is not None:
            return (*new, *path[i:])
    return path
