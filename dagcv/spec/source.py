"""Source positions of every key and value of a spec, whatever syntax it was written in."""

from __future__ import annotations

from dataclasses import dataclass, field

from dagcv.errors import Span

Path = tuple[str | int, ...]


def position(text: str, offset: int) -> tuple[int, int]:
    """The 1-based (line, column) of character ``offset`` in ``text``.

    >>> position("ab\ncd", 4)
    (2, 2)
    """
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


@dataclass
class SourceMap:
    """Spans by path into the spec's plain data: ``("blocks", "features", "type")``.

    ``values`` locate values, ``keys`` locate the key text of mapping entries. Lookups fall back to the
    nearest located ancestor, so every diagnostic gets some position.
    """

    file: str
    text: str
    values: dict[Path, Span] = field(default_factory=dict)
    keys: dict[Path, Span] = field(default_factory=dict)

    def value(self, *path: str | int) -> Span | None:
        for i in range(len(path), -1, -1):
            span = self.values.get(path[:i])
            if span is not None:
                return span
        return None

    def key(self, *path: str | int) -> Span | None:
        """The span of the key at ``path``, or of its value when the key is not located."""
        return self.keys.get(path) or self.value(*path)
