"""Diagnostics: every user-facing error carries a source span, a graph element and a hint.

A stage that finds a mistake in a spec raises (or collects) :class:`Diagnostic` objects; the CLI prints them
like a compiler::

    specs/bad.yaml:7:20: error: unknown block type 'resnet51'
        7 |   backbone: {type: resnet51, in: image}
          |                    ^~~~~~~~
      = hint: did you mean 'resnet50'?
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # a tab stays a tab: carets count it as one


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns are 1-based, ``end_col`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def shifted(self, offset: int, length: int | None = None) -> Span:
        """The span ``offset`` characters into this one (for positions inside a scalar such as a type string)."""
        col = self.col + offset
        end = col + length if length is not None else self.end_col
        return Span(self.file, self.line, col, self.line, end)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    """One error found in a spec, located in the source and in the graph."""

    message: str
    span: Span | None = None
    hint: str | None = None
    node: str | None = None
    port: str | None = None
    severity: str = "error"
    notes: list[tuple[Span, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON form used by ``dagcv check --json``."""
        return {
            "file": self.span.file if self.span else None,
            "line": self.span.line if self.span else None,
            "col": self.span.col if self.span else None,
            "end_line": self.span.end_line if self.span else None,
            "end_col": self.span.end_col if self.span else None,
            "severity": self.severity,
            "node": self.node,
            "port": self.port,
            "message": self.message,
            "hint": self.hint,
            "notes": [{**asdict(s), "message": m} for s, m in self.notes],
        }

    def format(self, sources: dict[str, str] | None = None) -> str:
        """Render like a compiler: ``file:line:col: error: message``, the line, a caret and the hint.

        Control characters from the spec (terminal escape sequences, say) are shown as U+FFFD, one for one, so
        that printing a diagnostic never lets a file drive the terminal and the caret stays under its column.
        """
        head = f"{self.span}: {self.severity}: {self.message}" if self.span else f"{self.severity}: {self.message}"
        lines = [head, *_excerpt(self.span, sources)]
        for span, text in self.notes:
            lines.append(f"{span}: note: {text}")
            lines.extend(_excerpt(span, sources))
        if self.hint:
            lines.append(f"  = hint: {self.hint}")
        return "\n".join(_CONTROL.sub("\ufffd", line) for line in lines)


EXCERPT_WIDTH = 160  # characters of a source line shown under a diagnostic


def _excerpt(span: Span | None, sources: dict[str, str] | None) -> list[str]:
    if span is None or not sources or span.file not in sources:
        return []
    text_lines = sources[span.file].splitlines()
    if not 1 <= span.line <= len(text_lines):
        return []
    text = text_lines[span.line - 1]
    col = span.col
    width = 1
    if span.end_col is not None and (span.end_line in (None, span.line)) and span.end_col > span.col:
        width = span.end_col - span.col
    if len(text) > EXCERPT_WIDTH:  # a very long line: a window around the column, the cut ends marked with …
        start = max(0, min(col - 1 - EXCERPT_WIDTH // 4, len(text) - EXCERPT_WIDTH))
        end = start + EXCERPT_WIDTH
        text = ("\u2026" if start else "") + text[start:end] + ("\u2026" if end < len(text) else "")
        col = col - start + (1 if start else 0)
    width = max(1, min(width, len(text) - col + 1))
    gutter = " " * len(str(span.line))
    return [
        f"  {span.line} | {text}",
        f"  {gutter} | {' ' * (col - 1)}^{'~' * (width - 1)}",
    ]


class SpecError(Exception):
    """Raised by any compiler stage when a spec is invalid; holds one or more diagnostics."""

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = [diagnostics] if isinstance(diagnostics, Diagnostic) else list(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(self.diagnostics[0].message if self.diagnostics else "invalid spec")

    @classmethod
    def at(cls, span: Span | None, message: str, **extra) -> SpecError:
        """A single-diagnostic error."""
        return cls(Diagnostic(message, span, **extra))

    def with_sources(self, sources: dict[str, str]) -> SpecError:
        self.sources.update(sources)
        return self

    def format(self) -> str:
        return "\n\n".join(d.format(self.sources) for d in self.diagnostics)

    def __str__(self) -> str:
        return self.format()


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or ``None`` when nothing is close.

    >>> did_you_mean("resnet51", ["resnet18", "resnet50", "fpn"])
    "did you mean 'resnet50'?"
    """
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None
