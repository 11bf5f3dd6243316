"""Safe YAML loading that keeps the position of every key and value.

PyYAML composes the document into a node tree with marks (safe loader: no tags that build Python objects);
we construct plain data from it ourselves, so that duplicate keys are errors instead of silent overwrites and
every value keeps its span.

    >>> data, smap = load_yaml("a: 1\\nb: [x, y]\\n", "s.yaml")
    >>> data, str(smap.value("b", 1))
    ({'a': 1, 'b': ['x', 'y']}, 's.yaml:2:8')
"""

from __future__ import annotations

from typing import Any

import yaml

from dagcv.errors import Diagnostic, Span, SpecError
from dagcv.limits import limits
from dagcv.spec.source import Path, SourceMap, position

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
_SCALAR_TAGS = tuple(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "merge"))
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_INT = "tag:yaml.org,2002:int"
_PLAIN_HINT = "specs hold plain data: strings, numbers, booleans, lists and mappings"


def _span(node: yaml.Node, file: str) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(file, start.line + 1, start.column + 1, end.line + 1, end.column + 1)


class _Builder:
    def __init__(self, smap: SourceMap):
        self.smap = smap
        self.errors: list[Diagnostic] = []
        self.count = 0
        self.constructor = yaml.SafeLoader("")  # only its scalar constructors are used
        self.limits = limits()

    def build(self, node: yaml.Node, path: Path, depth: int = 0) -> Any:
        self.count += 1
        if self.count > self.limits.nodes or depth > self.limits.depth:
            raise SpecError.at(
                _span(node, self.smap.file),
                "spec is too large or too deeply nested (alias bomb?)",
                hint=f"limits: {self.limits.nodes:,} values, nesting depth {self.limits.depth} (see `dagcv --limit`)",
            )
        self.smap.values[path] = _span(node, self.smap.file)
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_TAGS:
            raise SpecError.at(_span(node, self.smap.file), f"unsupported YAML tag '{node.tag}'", hint=_PLAIN_HINT)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        raise SpecError.at(_span(node, self.smap.file), f"unsupported YAML node {type(node).__name__}")

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _TIMESTAMP:
            return node.value  # a date-like value stays the text it is
        span = _span(node, self.smap.file)
        if node.tag not in _SCALAR_TAGS:
            raise SpecError.at(span, f"unsupported YAML tag '{node.tag}'", hint=_PLAIN_HINT)
        digits = sum(c.isdigit() for c in node.value)
        if node.tag == _INT and digits > len(str(2**self.limits.int_bits)):
            raise SpecError.at(span, f"integer too large ({digits} digits)", hint=_int_hint(self.limits.int_bits))
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            raise SpecError.at(span, f"unsupported YAML tag '{node.tag}'", hint=_PLAIN_HINT) from None
        except Exception:  # an explicit tag on text it cannot read (`!!int abc`, `!!bool maybe`)
            kind = node.tag.rsplit(":", 1)[-1]
            raise SpecError.at(
                span,
                f"'{_short(node.value)}' is not a valid {kind}",
                hint=f"remove the '!!{kind}' tag or fix the value",
            ) from None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = self.build(value_node, (*path, "<<"), depth + 1)
                for part in merged if isinstance(merged, list) else [merged]:
                    if not isinstance(part, dict):
                        self.errors.append(Diagnostic("'<<' must merge a mapping", _span(value_node, self.smap.file)))
                        continue
                    for k, v in part.items():
                        out.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(Diagnostic("mapping keys must be plain names", _span(key_node, self.smap.file)))
                continue
            key = self._scalar(key_node)
            if not isinstance(key, str):
                key = str(key)
            key_span = _span(key_node, self.smap.file)
            if key in out and (*path, key) in self.smap.keys:
                first = self.smap.keys[(*path, key)]
                self.errors.append(
                    Diagnostic(
                        f"duplicate key '{key}'",
                        key_span,
                        hint=f"'{key}' is already defined at line {first.line}",
                        notes=[(first, "first defined here")],
                    )
                )
                continue
            self.smap.keys[(*path, key)] = key_span
            out[key] = self.build(value_node, (*path, key), depth + 1)
        return out


def _int_hint(bits: int) -> str:
    return f"integers in a spec must fit in {bits + 1} bits (at most {2**bits - 1:,})"


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse ``text`` into plain data plus a :class:`SourceMap`; raises :class:`SpecError` on any problem."""
    smap = SourceMap(file, text)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (control characters)
        line, col = position(text, exc.position)
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError.at(
            Span(file, line, col, line, col + 1),
            f"character {char} is not allowed in YAML",
            hint="remove it; control characters may only appear escaped in double-quoted strings (\\t, \\x1b)",
        ) from None
    except RecursionError:
        raise SpecError.at(
            Span(file, 1, 1), "spec is too deeply nested", hint=f"nesting limit: {limits().depth}"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        span = Span(file, mark.line + 1, mark.column + 1) if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        hint = None
        lines = text.splitlines()
        at = lines[mark.line][mark.column : mark.column + 1] if mark and mark.line < len(lines) else ""
        if at == "\t":
            hint = "YAML does not allow tabs for indentation; use spaces"
        elif "mapping values are not allowed" in problem:
            hint = "a ':' inside a value needs quotes, or a missing newline/indent before this key"
        notes = []
        ctx = exc.context_mark
        if exc.context and ctx is not None and exc.problem_mark is not None and ctx.line != exc.problem_mark.line:
            notes.append((Span(file, ctx.line + 1, ctx.column + 1), exc.context.replace("while parsing", "in")
                          + " that starts here"))  # fmt: skip
            hint = hint or "is a closing bracket or a quote missing?"
        here = lines[mark.line] if mark and mark.line < len(lines) else ""
        if exc.context and "flow" in exc.context and "[" in here:
            hint = "inside { } a port type must be quoted: {x: 'Image[B, 3, H, W]'}, or use one key per line"
        raise SpecError(Diagnostic(f"YAML syntax error: {problem}", span, hint=hint, notes=notes)) from None
    except yaml.YAMLError as exc:
        raise SpecError.at(Span(file, 1, 1), f"YAML error: {exc}") from None
    if root is None:
        raise SpecError.at(Span(file, 1, 1), "the spec is empty", hint="start with 'dagcv: 1'")
    builder = _Builder(smap)
    data = builder.build(root, ())
    if builder.errors:
        raise SpecError(builder.errors)
    return data, smap
