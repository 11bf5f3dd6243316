"""The DSL front end: a ``.dagcv`` file → the same plain data and :class:`SourceMap` as its YAML form.

The grammar is ``dagcv.lark`` next to this module (LALR, positions kept). A statement per line::

    dagcv 1
    name lenet_mnist
    input image: Image[B, 1, 28, 28]
    features = lenet_features <- image
    classifier = mlp_head(hidden=[120, 84], num_classes=10) <- features
    output logits = classifier

Values are numbers, double-quoted strings (JSON escapes), bare names (strings), ``true``/``false``/``null``,
``inf``/``nan``, lists ``[...]`` and mappings ``{key: value}``. Every key and value gets the span of its token,
so the later stages point into the DSL text exactly as they point into YAML.

    >>> data, smap = load_dsl("dagcv 1\\nname n\\nf = mlp(hidden=[8]) <- x\\n", "s.dagcv")
    >>> data["blocks"], str(smap.value("blocks", "f", "hidden", 0))
    ({'f': {'type': 'mlp', 'in': 'x', 'hidden': [8]}}, 's.dagcv:3:17')
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from lark import Lark, Token, Tree
from lark.common import LexerConf
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer, LexerState

from dagcv.errors import Diagnostic, Span, SpecError, did_you_mean
from dagcv.spec.source import Path, SourceMap

KEYWORDS = ("dagcv", "extends", "name", "description", "input", "sizes", "output", "train", "data")
WORDS: dict[str, Any] = {"true": True, "false": False, "null": None, "inf": math.inf, "nan": math.nan}
RESERVED_PARAMS = {
    "type": "the block type comes after '=': `name = block_type(...)`",
    "in": "write the wiring after '<-': `name = block_type(...) <- source`",
    "mode": "write the mode at the end of the statement: `... @train`, `@eval`, `@both` or `@sample`",
    "shares": "write `name = &other <- source` to call another node's module again",
}
_KEYWORD_TYPES = {k: f"KW_{k.upper()}" for k in KEYWORDS}
_OPEN = {"LPAR": "(", "LSQB": "[", "LBRACE": "{"}
_CLOSE = {"RPAR": ")", "RSQB": "]", "RBRACE": "}"}
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_VALUE_START = {"IDENT", "INT", "FLOAT", "STRING", "DOTTED", "LSQB", "LBRACE", *(f"KW_{k.upper()}" for k in KEYWORDS)}
_MAX_DEPTH = 100
_STATEMENTS = (
    "version", "extends", "title", "description", "input", "sizes", "output", "train", "data", "node", "chain",
)  # fmt: skip


class _Lexer(Lexer):
    """The tokenizer Lark's LALR parser reads from, built from the grammar's own terminals.

    One compiled alternation matches every terminal, in priority order: on the 2,500-line benchmark
    (``tools/bench_dsl.py``) the parse takes about 15% less time than with Lark's contextual lexer, and a
    character that no terminal matches is reported as such (the contextual lexer's fallback would read it as the
    catch-all ``TYPE_TEXT``). The two context-dependent decisions are taken from the parser state,
    as Lark's contextual lexer would: a keyword is a keyword only where the parser accepts one (elsewhere it is a
    name: a node may be called ``data``), and the verbatim ``TYPE_TEXT`` of an input is read only after
    ``input name:``. Line breaks inside (), [] and {} are skipped: they continue the statement.
    """

    __future_interface__ = 2

    def __init__(self, conf: LexerConf):
        terminals = [t for t in conf.terminals if t.pattern.type == "re" or t.name not in _KEYWORD_TYPES.values()]
        terminals = [t for t in terminals if t.name != "TYPE_TEXT"]
        terminals.sort(key=lambda t: (-t.priority, t.name))
        self.scanner = re.compile("|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals))
        type_text = next(t for t in conf.terminals if t.name == "TYPE_TEXT")
        self.type_text = re.compile(f"[ \t\f\r]*({type_text.pattern.to_regexp()})")
        self.ignore = frozenset(conf.ignore)

    def lex(self, lexer_state: LexerState, parser_state: Any) -> Iterator[Token]:
        text: str = lexer_state.text.text
        states = parser_state.parse_conf.states
        scan, type_text, ignore, keywords = self.scanner.match, self.type_text.match, self.ignore, _KEYWORD_TYPES
        pos, line, line_start, depth, n, kind = 0, 1, 0, 0, len(text), ""
        while pos < n:
            if kind == "COLON" and "TYPE_TEXT" in states[parser_state.position] and (m := type_text(text, pos)):
                kind, value, start, pos = "TYPE_TEXT", m.group(1), m.start(1), m.end(1)
            elif m := scan(text, pos):
                kind, value, start, pos = m.lastgroup, m.group(), pos, m.end()
                if kind in ignore:
                    continue
            else:
                raise UnexpectedCharacters(
                    text, pos, line, pos - line_start + 1, state=parser_state, terminals_by_name={}
                )
            if kind == "_NL":
                column = start - line_start + 1
                line += 1
                line_start = pos
                if depth:
                    continue
                token = Token("_NL", value, start, line - 1, column, line, 1, pos)
            else:
                if kind == "IDENT" and value in keywords and keywords[value] in states[parser_state.position]:
                    kind = keywords[value]
                elif kind in _OPEN:
                    depth += 1
                elif kind in _CLOSE and depth:
                    depth -= 1
                column = start - line_start + 1
                token = Token(kind, value, start, line, column, line, column + pos - start, pos)
            lexer_state.last_token = token
            yield token


@functools.cache
def parser() -> Lark:
    """The LALR parser, built once on first use from the grammar shipped as package data."""
    grammar = resources.files("dagcv.spec").joinpath("dagcv.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer=_Lexer, propagate_positions=True, maybe_placeholders=False)


def load_dsl(text: str, file: str) -> tuple[dict[str, Any], SourceMap]:
    """Parse DSL ``text`` into the plain data its YAML form would give, plus a :class:`SourceMap`.

    Raises :class:`SpecError` (with the text as its source) on syntax errors and duplicate definitions.
    """
    source = text if text.endswith("\n") else text + "\n"  # every statement then ends with a line break
    try:
        tree = parser().parse(source)
    except UnexpectedInput as exc:
        raise SpecError(syntax_diagnostic(exc, source, file), {file: text}) from None
    reader = _Reader(file, text)
    for statement in tree.children:
        reader.statement(statement)
    if reader.errors:
        raise SpecError(reader.errors, {file: text})
    if not reader.data:
        raise SpecError(Diagnostic("the spec is empty", Span(file, 1, 1), hint="start with 'dagcv 1'"), {file: text})
    return reader.data, reader.smap


# ---------------------------------------------------------------------------------------------------------------
# Tree → plain data


def _token_span(file: str, token: Token) -> Span:
    return Span(file, token.line, token.column, token.end_line, token.end_column)


def _tree_span(file: str, node: Tree | Token) -> Span:
    where = node if type(node) is Token else node.meta  # tokens and metas share the position attributes
    return Span(file, where.line, where.column, where.end_line, where.end_column)


def _join(first: Span, last: Span) -> Span:
    return Span(first.file, first.line, first.col, last.end_line, last.end_col)


class _Reader:
    """Walks the statements in order, filling ``data`` and the source map; collects every duplicate."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.smap = SourceMap(file, text)
        self.smap.values[()] = Span(file, 1, 1)
        self.data: dict[str, Any] = {}
        self.errors: list[Diagnostic] = []
        self.span = functools.partial(_tree_span, file)
        self.statements = {name: getattr(self, f"_{name}") for name in _STATEMENTS}

    def statement(self, tree: Tree) -> None:
        self.statements[tree.data](tree)

    def define(self, container: dict, path: Path, span: Span, what: str) -> bool:
        """Record the key span of ``path``; a name defined twice is an error pointing at both."""
        key = path[-1]
        if key in container:
            first = self.smap.keys[path]
            message = f"duplicate {what} '{key}'" if what else f"duplicate '{key}' statement"
            self.errors.append(
                Diagnostic(
                    message,
                    span,
                    hint=f"'{key}' is already defined at line {first.line}",
                    notes=[(first, "first defined here")],
                )
            )
            return False
        self.smap.keys[path] = span
        return True

    def section(self, key: str, key_span: Span, value_span: Span) -> dict[str, Any]:
        """The mapping of a section that several statements add to (inputs, sizes, blocks, outputs)."""
        if key not in self.data:
            self.data[key] = {}
            self.smap.keys[(key,)] = key_span
            self.smap.values[(key,)] = value_span
        return self.data[key]

    # statements ----------------------------------------------------------------------------------------------

    def _top(self, tree: Tree) -> None:
        keyword, value = tree.children
        key = str(keyword)
        if self.define(self.data, (key,), self.span(keyword), ""):
            self.data[key] = self.value(value, (key,))

    _version = _extends = _title = _description = _train = _data = _top

    def _input(self, tree: Tree) -> None:
        keyword, name, type_text = tree.children
        inputs = self.section("inputs", self.span(keyword), self.span(tree))
        if self.define(inputs, ("inputs", str(name)), self.span(name), "input"):
            inputs[str(name)] = str(type_text)
            self.smap.values[("inputs", str(name))] = self.span(type_text)

    def _sizes(self, tree: Tree) -> None:
        keyword, *pairs = tree.children
        section = self.section("sizes", self.span(keyword), self.span(tree))
        for name, value in zip(pairs[::2], pairs[1::2], strict=True):
            if self.define(section, ("sizes", str(name)), self.span(name), "size"):
                section[str(name)] = self.value(value, ("sizes", str(name)))

    def _output(self, tree: Tree) -> None:
        keyword, name, source = tree.children
        outputs = self.section("outputs", self.span(keyword), self.span(tree))
        if self.define(outputs, ("outputs", str(name)), self.span(name), "output"):
            outputs[str(name)] = str(source)
            self.smap.values[("outputs", str(name))] = self.span(source)

    def _node(self, tree: Tree) -> None:
        name, block_type, *parts = tree.children
        optional = {part.data: part.children for part in parts}
        wiring = optional.get("wiring", [])
        self.block(name, block_type, wiring, optional.get("mode"), optional.get("params", []), self.span(tree))

    def _chain(self, tree: Tree) -> None:
        """``src -> a: t -> b: u``: each step reads the node before it."""
        source, *steps = tree.children
        for step in steps:
            name, block_type, *parts = step.children
            optional = {part.data: part.children for part in parts}
            self.block(name, block_type, [source], optional.get("mode"), optional.get("params", []), self.span(step))
            source = name

    # parts of a node -----------------------------------------------------------------------------------------

    def block(self, name: Token, block_type: Token, wiring: list, mode: list | None, params: list, span: Span) -> None:
        """One node, keyed like the YAML form: ``{type, in, mode, **params}``."""
        name_span = self.span(name)
        blocks = self.section("blocks", name_span, span)
        path = ("blocks", str(name))
        if not self.define(blocks, path, name_span, "node"):
            return
        self.smap.values[path] = span
        if block_type.type == "SHARE":  # `name = &other`: the same module as another node
            decl: dict[str, Any] = {"shares": str(block_type)[1:]}
            self.smap.values[(*path, "shares")] = self.span(block_type).shifted(1)
        else:
            decl = {"type": str(block_type)}
            self.smap.values[(*path, "type")] = self.span(block_type)
        blocks[str(name)] = decl
        if wiring:
            self.wiring(decl, path, wiring)
        if mode:
            (word,) = mode
            decl["mode"] = str(word)
            self.smap.values[(*path, "mode")] = self.span(word)
        for key_token, value in zip(params[::2], params[1::2], strict=True):
            key = self.key(key_token)
            if key in RESERVED_PARAMS:
                self.errors.append(
                    Diagnostic(
                        f"'{key}' is not a parameter", self.span(key_token), hint=RESERVED_PARAMS[key], node=str(name)
                    )
                )
            elif self.define(decl, (*path, key), self.span(key_token), "parameter"):
                decl[key] = self.value(value, (*path, key))

    def wiring(self, decl: dict, path: Path, parts: list[Token]) -> None:
        """One source (``in: x``) or ``port: source`` pairs (``in: {port: x}``)."""
        if len(parts) == 1:
            decl["in"] = str(parts[0])
            self.smap.values[(*path, "in")] = self.span(parts[0])
            return
        wires: dict[str, str] = {}
        self.smap.values[(*path, "in")] = _join(self.span(parts[0]), self.span(parts[-1]))
        for port, source in zip(parts[::2], parts[1::2], strict=True):
            if self.define(wires, (*path, "in", str(port)), self.span(port), "port"):
                wires[str(port)] = str(source)
                self.smap.values[(*path, "in", str(port))] = self.span(source)
        decl["in"] = wires

    # values --------------------------------------------------------------------------------------------------

    def key(self, token: Token) -> str:
        return self.string(token) if token.type == "STRING" else str(token)

    def value(self, node: Tree | Token, path: Path, depth: int = 0) -> Any:
        span = self.span(node)
        self.smap.values[path] = span
        if depth > _MAX_DEPTH:
            self.errors.append(Diagnostic("value is nested too deeply", span))
            return None
        if isinstance(node, Token):
            return self.scalar(node)
        if node.data == "list":
            return [self.value(item, (*path, i), depth + 1) for i, item in enumerate(node.children)]
        out: dict[str, Any] = {}
        for key_token, value in zip(node.children[::2], node.children[1::2], strict=True):
            key = self.key(key_token)
            if self.define(out, (*path, key), self.span(key_token), "key"):
                out[key] = self.value(value, (*path, key), depth + 1)
        return out

    def scalar(self, token: Token) -> Any:
        if token.type == "STRING":
            return self.string(token)
        if token.type in ("INT", "FLOAT"):
            try:
                return int(token) if token.type == "INT" else float(token)
            except ValueError:  # more digits than int() converts
                self.errors.append(Diagnostic(f"number too long: {token[:20]}...", self.span(token)))
                return None
        return WORDS[token] if token in WORDS else str(token)

    def string(self, token: Token) -> str:
        if "\\" not in token:
            return token[1:-1]
        try:
            return json.loads(token, strict=False)
        except json.JSONDecodeError as exc:
            span = self.span(token).shifted(exc.pos, 2)
            self.errors.append(
                Diagnostic(
                    f"invalid escape in string: {exc.msg.lower()}", span, hint='escapes are \\" \\\\ \\n \\t \\uXXXX'
                )
            )
            return str(token[1:-1])


# ---------------------------------------------------------------------------------------------------------------
# Syntax errors: the failing parser state is matched against small malformed examples (Lark's match_examples),
# one list per message. Examples are whole programs; the grammar keeps the parser stack at the start of a
# statement the same on every line, so an example on line 1 matches the same mistake on line 40. Missing
# closing brackets are found from the parser's stack instead: the state there depends on the last value read,
# not on the bracket.

EXAMPLES: dict[str, list[str]] = {
    "dangling_arrow": ["a ->\n", "a -> b: t ->\n", "a.p -> b: t(x=1) @train -> c: u ->\n"],
    "no_value": [
        "a = t(x=)\n", "a = t(y=1, x=)\n", "a -> b: t(x=)\n", "a -> b: t(y=1, x=)\n",
        "a -> b: t -> c: u(x=)\n", "a -> b: t -> c: u(y=1, x=)\n", "sizes B=\n", "sizes A=1, B=\n",
        "train {a: }\n", "train {b: 1, a: }\n", "a = t(x={a: })\n", "a = t(x={b: 1, a: })\n",
    ],
    "no_source": ["a = t <-\n", "a = t(x=1) <- @train\n", "a = t <- (\n)\n"],
    "port_no_source": ["a = t <- p:\n", "a = t <- q: x, p:\n", "a = t <- (p:)\n", "a = t <- (q: x, p:)\n"],
    "statement": ["inptu x: T\n", "x y\n", "x: t\n", 'x "s"\n', "x\n"],
    "missing_type": ["a = \n", "a = (x=1)\n", "a = <- x\n", "a = @train\n"],
    "yaml_colon": [f"{keyword}: x\n" for keyword in KEYWORDS],
    "input_colon": ["input x T\n", "input x\n", "input x = T\n"],
    "input_type": ["input x:\n", "input x: # no type\n"],
    "output_eq": ["output y x\n", "output y\n", "output y: x\n"],
    "step_colon": ["a -> b t\n", "a -> b = t\n", "a -> b\n", "a -> b: t -> c u\n", "a -> b: t -> c\n"],
}  # fmt: skip

_KEYWORD_EXAMPLES = {
    "dagcv": "dagcv 1",
    "extends": 'extends "base.dagcv"',
    "name": "name lenet_mnist",
    "description": 'description "what it is"',
    "input": "input image: Image[B, 3, H, W]",
    "sizes": "sizes H=224, W=224",
    "output": "output logits = classifier",
    "train": "train {epochs: 10}",
    "data": "data {train: {type: mnist}}",
}


def syntax_diagnostic(exc: UnexpectedInput, text: str, file: str) -> Diagnostic:
    """A located, specific diagnostic for a Lark parse error."""
    if isinstance(exc, UnexpectedCharacters):
        return _bad_character(text, exc.pos_in_stream, Span(file, exc.line, exc.column, exc.line, exc.column + 1))
    assert isinstance(exc, UnexpectedToken)
    stack = exc.interactive_parser.parser_state.value_stack if exc.interactive_parser else []
    found = _unclosed_bracket(exc, stack, text, file)
    if found is not None:
        return found
    label = error_label(exc)
    handler = _HANDLERS.get(label) if label else None
    found = handler(exc, stack, file) if handler else None
    return found or _unexpected(exc, text, file)


def error_label(exc: UnexpectedToken) -> str | None:
    """Which list of :data:`EXAMPLES` fails in the same parser state as ``exc`` (Lark's ``match_examples``)."""
    if not isinstance(exc.state, _LoggableState):
        exc.state = _LoggableState(exc.state)
    return exc.match_examples(parser().parse, EXAMPLES, use_accepts=True, token_type_match_fallback=True)


class _LoggableState:
    """Lark 1.3.1's ``match_examples`` formats the failing state with ``%d`` in a debug message when an example
    reaches the same state with other acceptable tokens; its state is a ``ParserState``, and the formatting raises
    ``TypeError``. This wrapper compares like the state and formats as its number."""

    def __init__(self, state: Any):
        self.state = state

    def __eq__(self, other: object) -> bool:
        return other == self.state

    __hash__ = None  # type: ignore[assignment]

    def __int__(self) -> int:
        return int(getattr(self.state, "position", -1))


def _error_span(exc: UnexpectedToken, text: str, file: str) -> Span:
    token = exc.token
    if token.type == "$END":
        lines = text.rstrip("\n").split("\n")
        return Span(file, len(lines), len(lines[-1]) + 1)
    return _token_span(file, token)


def _describe(token: Token) -> str:
    return {"_NL": "end of line", "$END": "end of file"}.get(token.type, f"'{token}'")


def _unexpected(exc: UnexpectedToken, text: str, file: str) -> Diagnostic:
    accepts = exc.accepts or exc.expected
    if "COMMA" in accepts and exc.token.type in _VALUE_START:
        return Diagnostic(
            f"missing ',' before {_describe(exc.token)}",
            _error_span(exc, text, file),
            hint="separate parameters, list items, mapping entries and ports with ','",
        )
    names = sorted({_terminal_text(t) for t in accepts} - {None})
    hint = f"expected {', '.join(names)}" if names and len(names) <= 8 else None
    return Diagnostic(f"unexpected {_describe(exc.token)}", _error_span(exc, text, file), hint=hint)


def _terminal_text(name: str) -> str | None:
    named = {
        "IDENT": "a name",
        "INT": "a number",
        "FLOAT": "a number",
        "STRING": "a string",
        "DOTTED": "node.port",
        "TYPE_TEXT": "a port type",
        "_NL": "end of line",
        "$END": "end of file",
        "_ARROW": "'->'",
        "_FROM": "'<-'",
    }
    if name in named:
        return named[name]
    if name.startswith("KW_"):
        return "a name"
    pattern = parser().get_terminal(name).pattern
    return f"'{pattern.value}'" if pattern.type == "str" else None


def _unclosed_bracket(exc: UnexpectedToken, stack: list, text: str, file: str) -> Diagnostic | None:
    """An open bracket still on the parser stack explains the error when it is never closed (the rest of the
    file was read as part of it), or when a token that only comes after it (``<-``, ``->``, ``@``) shows up."""
    opened: list[Token] = []
    for item in stack:  # a closed bracket may still be on the stack, before its rule is reduced
        if isinstance(item, Token) and item.type in _OPEN:
            opened.append(item)
        elif isinstance(item, Token) and item.type in _CLOSE and opened:
            opened.pop()
    if not opened:
        return None
    bracket = opened[-1]
    close = _PAIRS[str(bracket)]
    where = _token_span(file, bracket)
    if exc.token.type in ("_FROM", "_ARROW", "AT"):
        return Diagnostic(
            f"missing '{close}' before {_describe(exc.token)}",
            _error_span(exc, text, file),
            hint=f"close the '{bracket}' before {_describe(exc.token)}",
            notes=[(where, f"'{bracket}' opened here")],
        )
    if _closes(text, bracket.start_pos):
        return None
    ran_on = _error_span(exc, text, file).line
    hint = f"add '{close}'" + (
        f"; a line break inside brackets does not end a statement, so everything up to line {ran_on} was read inside it"
        if ran_on > bracket.line
        else ""
    )
    return Diagnostic(f"unclosed '{bracket}': missing '{close}'", where, hint=hint)


def _closes(text: str, start: int) -> bool:
    """Whether the bracket at ``start`` is closed by its own kind later in ``text`` (strings, comments skipped)."""
    expected: list[str] = []
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in _PAIRS:
            expected.append(_PAIRS[c])
        elif c in ")]}":
            if expected.pop() != c:
                return False
            if not expected:
                return True
        i += 1
    return False


def _previous(stack: list, back: int) -> Token | None:
    item = stack[-back] if len(stack) >= back else None
    return item if isinstance(item, Token) else None


def _dangling_arrow(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    arrow = _previous(stack, 1)
    if arrow is None:
        return None
    if exc.token.type in ("_NL", "$END"):
        return Diagnostic(
            "'->' at the end of the line: the chain needs a step after it",
            _token_span(file, arrow),
            hint="write `-> name: block_type(params)` after it, or remove the '->'",
        )
    return Diagnostic(
        f"expected a chain step after '->', found {_describe(exc.token)}",
        _token_span(file, exc.token),
        hint="a chain step is `name: block_type(params)`, e.g. `image -> backbone: resnet18`",
    )


def _no_value(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    """``num_classes=`` or ``{lr: }``: the key and its '=' or ':' are the last two tokens read."""
    sign, key = _previous(stack, 1), _previous(stack, 2)
    if sign is None or key is None:
        return None
    return Diagnostic(
        f"'{key}{sign}' has no value",
        _join(_token_span(file, key), _token_span(file, sign)),
        hint=f"write a value after '{sign}' (a number, a name, \"text\", [list] or {{mapping}}), "
        f"or remove '{key}{sign}'",
    )


def _no_source(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    arrow = next((t for t in reversed(stack) if isinstance(t, Token) and t.type == "_FROM"), None)
    if arrow is None:
        return None
    return Diagnostic(
        "'<-' has no source",
        _token_span(file, arrow),
        hint="write `<- node`, `<- node.port`, or `<- port: node, port: node.port`",
    )


def _port_no_source(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    port = _previous(stack, 2)
    if port is None:
        return None
    return Diagnostic(
        f"port '{port}' has no source", _token_span(file, port), hint=f"write `{port}: node` or `{port}: node.port`"
    )


def _statement(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    first = _previous(stack, 1)
    if first is None:
        return None
    keywords = ", ".join(KEYWORDS)
    suggestion = did_you_mean(str(first), KEYWORDS)
    if suggestion and str(first) not in KEYWORDS:
        return Diagnostic(
            f"unknown statement '{first}'",
            _token_span(file, first),
            hint=f"{suggestion} (statements start with {keywords}, or a node name)",
        )
    return Diagnostic(
        f"expected '=' after '{first}', found {_describe(exc.token)}",
        _token_span(file, exc.token),
        hint=f"a node is written `{first} = block_type(params) <- source`; other statements start with {keywords}",
    )


def _missing_type(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    name = _previous(stack, 2)
    if name is None:
        return None
    return Diagnostic(
        f"missing block type after '{name} ='",
        _token_span(file, exc.token),
        hint=f"write `{name} = block_type(params) <- source`; `dagcv blocks` lists the types",
    )


def _yaml_colon(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    keyword = _previous(stack, 1)
    if keyword is None or str(keyword) not in _KEYWORD_EXAMPLES:
        return None
    return Diagnostic(
        f"'{keyword}' takes its value without ':'",
        _token_span(file, exc.token),
        hint=f"write `{_KEYWORD_EXAMPLES[str(keyword)]}` (the YAML form has the colon, the DSL not)",
    )


def _input_colon(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    name = _previous(stack, 1)
    if name is None:
        return None
    return Diagnostic(
        f"expected ':' after input name '{name}', found {_describe(exc.token)}",
        _token_span(file, exc.token),
        hint=f"write `input {name}: Kind[dims]`, e.g. `input {name}: Image[B, 3, H, W]`",
    )


def _input_type(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    name = _previous(stack, 2)
    if name is None:
        return None
    return Diagnostic(
        f"input '{name}' has no port type",
        _token_span(file, exc.token),
        hint=f"write `input {name}: Kind[dims]`, e.g. `input {name}: Image[B, 3, H, W]`",
    )


def _output_eq(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    name = _previous(stack, 1)
    if name is None:
        return None
    return Diagnostic(
        f"expected '=' after output name '{name}', found {_describe(exc.token)}",
        _token_span(file, exc.token),
        hint=f"write `output {name} = node` or `output {name} = node.port`",
    )


def _step_colon(exc: UnexpectedToken, stack: list, file: str) -> Diagnostic | None:
    name = _previous(stack, 1)
    if name is None:
        return None
    return Diagnostic(
        f"expected ':' after chain step '{name}', found {_describe(exc.token)}",
        _token_span(file, exc.token),
        hint=f"a chain step is `name: block_type(params)`, e.g. `-> {name}: block_type`",
    )


_Handler = Callable[[UnexpectedToken, list, str], Diagnostic | None]
_HANDLERS: dict[str, _Handler] = {
    "dangling_arrow": _dangling_arrow,
    "no_value": _no_value,
    "no_source": _no_source,
    "port_no_source": _port_no_source,
    "statement": _statement,
    "missing_type": _missing_type,
    "yaml_colon": _yaml_colon,
    "input_colon": _input_colon,
    "input_type": _input_type,
    "output_eq": _output_eq,
    "step_colon": _step_colon,
}


def _bad_character(text: str, pos: int, span: Span) -> Diagnostic:
    char = text[pos] if pos < len(text) else ""
    if char == '"':
        return Diagnostic("unterminated string", span, hint="a string closes with '\"' on the same line")
    if char == "'":
        return Diagnostic("strings are written in double quotes", span, hint="write \"text\", not 'text'")
    hint = 'text that is not a plain name or number needs quotes, e.g. "leaky-relu"'
    shown = repr(char)[1:-1] if char else "end of file"
    return Diagnostic(f"unexpected character '{shown}'", span, hint=hint)
