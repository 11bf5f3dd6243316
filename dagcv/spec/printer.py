"""Canonical text of a spec, in either syntax: :func:`to_dsl` and :func:`to_yaml` print the IR back out.

Both printers keep the ``#`` comments of the source, in either syntax: the comment block at the top of the file
and the one after the last element; a run of comment lines directly above a top-level key, an input, a size, a
block, an output or a key inside ``data``/``train`` (re-emitted above the same element); and a comment at the
end of such an element's line (re-emitted at the end of its first line; on a line holding several elements, it
goes with the leftmost). Comments anywhere else (between the parameters of a block written over several lines,
above a list item) are dropped.

    >>> from dagcv.spec import parse_spec_text
    >>> spec = parse_spec_text("dagcv: 1\\nname: n\\nblocks:\\n  f: {type: mlp, in: x, hidden: [8]}\\n", "s.yaml")
    >>> print(to_dsl(spec), end="")
    dagcv 1
    name n
    <BLANKLINE>
    f = mlp(hidden=[8]) <- x

Printing, then parsing, gives back the same IR (``model_dump`` equal) in both syntaxes; a spec the DSL cannot
express (a node name that is not an identifier, a connection that is not ``node`` or ``node.port``) raises
``ValueError`` from :func:`to_dsl`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from dagcv.spec.dsl import RESERVED_PARAMS, WORDS
from dagcv.spec.ir import Spec
from dagcv.spec.source import Path

WIDTH = 110  # longest line before an entry is broken over several lines
SCHEMA_PREFIX = "# yaml-language-server:"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_DSL_SECTIONS = (("inputs",), ("blocks",), ("outputs",))  # keys that the DSL has no line of their own for
_UNSAFE_CHARS = re.compile(r"[\x7f-\x9f\u2028\u2029]")  # valid in a string, but line breaks to some readers


# ---------------------------------------------------------------------------------------------------------------
# Comments of the source


@dataclass
class Comments:
    """The comments of a spec's source, by the element they stand above or at the end of."""

    leading: list[str] = field(default_factory=list)
    above: dict[Path, list[str]] = field(default_factory=dict)
    after: dict[Path, str] = field(default_factory=dict)  # the space before it included: "   # why"
    trailing: list[str] = field(default_factory=list)
    schema: str | None = None  # a `# yaml-language-server: $schema=...` line

    def pop(self, *paths: Path) -> list[str]:
        """The comments above any of ``paths``, each returned once."""
        return [line for path in paths for line in self.above.pop(path, [])]

    def end(self, *paths: Path) -> str:
        """The end-of-line comment of the first of ``paths`` that has one ('' if none), returned once."""
        found = [self.after.pop(path) for path in paths if path in self.after]
        return "".join(found[:1] + [f"  {more.strip()}" for more in found[1:]])

    def inside(self, path: Path) -> bool:
        """Whether a comment goes with a key nested in ``path`` (which must then be printed one key a line)."""
        n = len(path)
        return any(len(p) > n and p[:n] == path for p in (*self.above, *self.after))


def _with_end(text: str, comment: str) -> str:
    """``text`` with ``comment`` at the end of its first line."""
    first, newline, rest = text.partition("\n")
    return first + comment + newline + rest


def element_paths(spec: Spec) -> list[Path]:
    """The paths comments can attach to, in printing order (inside ``data`` and ``train``: every mapping key)."""
    paths: list[Path] = []
    for key in ("dagcv", "name", "description", "inputs", "sizes", "blocks", "outputs", "data", "train"):
        paths.append((key,))
        if key in ("inputs", "sizes", "blocks", "outputs"):
            paths += [(key, name) for name in getattr(spec, key)]
        elif isinstance(getattr(spec, key, None), dict):
            paths += _nested_keys(getattr(spec, key), (key,))
    return paths


def _nested_keys(value: dict, path: Path) -> list[Path]:
    out: list[Path] = []
    for key, item in value.items():
        out.append((*path, key))
        if isinstance(item, dict):
            out += _nested_keys(item, (*path, key))
    return out


def collect_comments(spec: Spec) -> Comments:
    smap = spec._source
    if smap is None or not smap.text:
        return Comments()
    lines = smap.text.split("\n")
    is_comment = [line.strip().startswith("#") for line in lines]
    out = Comments()
    taken: set[int] = set()
    for i, line in enumerate(lines):
        if is_comment[i] and line.strip().startswith(SCHEMA_PREFIX):
            out.schema = out.schema or line.strip()
            taken.add(i)
    code = [i for i, line in enumerate(lines) if line.strip() and not is_comment[i]]
    first, last = (code[0], code[-1]) if code else (len(lines), len(lines))
    out.leading = _take(lines, range(first), is_comment, taken)
    out.trailing = _take(lines, range(last + 1, len(lines)), is_comment, taken)
    dsl = smap.file.endswith(".dagcv")
    for path in element_paths(spec):
        span = smap.keys.get(path)
        if span is None or span.file != smap.file or (dsl and path in _DSL_SECTIONS):
            continue  # no key, or one written in another file (a base spec, an override): no comments here
        out.above[path] = _run_above(lines, span.line - 2, is_comment, taken)
    for path in _DSL_SECTIONS if dsl else ():
        # In the DSL a section has no line of its own: its comments are the run above the first statement's,
        # a blank line apart (that is how to_dsl writes the comments of YAML's `inputs:` line).
        span = smap.keys.get(path)
        i = span.line - 2 if span and span.file == smap.file else -1
        while i >= 0 and is_comment[i] and i in taken:
            i -= 1
        while i >= 0 and not lines[i].strip():
            i -= 1
        out.above[path] = _run_above(lines, i, is_comment, taken)
    out.above = {path: run for path, run in out.above.items() if run}
    out.after = _end_of_line_comments(spec, lines, is_comment)
    return out


def _run_above(lines: list[str], i: int, is_comment: list[bool], taken: set[int]) -> list[str]:
    """The run of comment lines ending at line index ``i`` (going up), not yet given to another element."""
    run: list[int] = []
    while i >= 0 and is_comment[i] and i not in taken:
        run.append(i)
        i -= 1
    return _take(lines, reversed(run), is_comment, taken)


def _end_of_line_comments(spec: Spec, lines: list[str], is_comment: list[bool]) -> dict[Path, str]:
    """Each comment at the end of a line, given to the leftmost element whose key is on that line."""
    smap = spec.source
    dsl = smap.file.endswith(".dagcv")
    owners: dict[int, tuple[int, Path]] = {}
    for path in element_paths(spec):
        if dsl and path in _DSL_SECTIONS:
            continue  # in the DSL these keys are the first statement's, which owns its comment
        span = smap.keys.get(path)
        if span is not None and span.file != smap.file:
            continue  # written in another file (a base spec, an override)
        if span is not None and (span.line not in owners or span.col < owners[span.line][0]):
            owners[span.line] = (span.col, path)
    out: dict[Path, str] = {}
    for line_number, (_, path) in owners.items():
        i = line_number - 1
        comment = _comment_at_end(lines[i].rstrip("\r"), dsl) if i < len(lines) and not is_comment[i] else None
        if comment:
            out[path] = comment
    return out


def _comment_at_end(line: str, dsl: bool) -> str | None:
    """``"   # why"`` from ``"key: value   # why"``: a '#' outside quotes (in YAML, after a space)."""
    quote, i = "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if (c == "\\" and quote == '"') or (c == "'" == quote and line[i + 1 : i + 2] == "'"):
                i += 1  # an escape, or '' inside '...'
            elif c == quote:
                quote = ""
        elif c == '"' or (c == "'" and not dsl and (i == 0 or line[i - 1] in " \t[{,:")):
            quote = c
        elif c == "#" and (dsl or (i > 0 and line[i - 1] in " \t")):
            code = line[:i].rstrip()
            return line[len(code) :] if code else None
        i += 1
    return None


def _take(lines: list[str], indices: Iterable[int], is_comment: list[bool], taken: set[int]) -> list[str]:
    found = [i for i in indices if is_comment[i] and i not in taken]
    taken.update(found)
    return [lines[i].strip() for i in found]


# ---------------------------------------------------------------------------------------------------------------
# DSL


def to_dsl(spec: Spec) -> str:
    """The spec as canonical DSL text: one statement per line, groups separated by a blank line."""
    comments = collect_comments(spec)
    if not spec.blocks:
        raise ValueError("the DSL has no way to write a spec without blocks")

    def statement(text: str, *paths: Path) -> list[str]:
        """A statement with the comments above its elements and the one at the end of their line."""
        return [*comments.pop(*paths), _with_end(text, comments.end(*paths))]

    header = [*comments.leading, *statement(f"dagcv {spec.dagcv}", ("dagcv",))]
    header += statement(f"name {dsl_value(spec.name)}", ("name",))
    if spec.description is not None:
        header += statement(f"description {_dsl_string(spec.description)}", ("description",))

    def section_comments(path: Path) -> list[str]:
        """The comments of a YAML section line, a blank line above the section's first statement."""
        above = comments.pop(path)
        return [*above, ""] if above else []

    inputs = section_comments(("inputs",))
    for i, (name, text) in enumerate(spec.inputs.items()):
        section = [("inputs",)] if i == 0 else []  # the YAML `inputs:` line has no statement of its own
        inputs += statement(f"input {_name(name, 'input')}: {_type_text(name, text)}", *section, ("inputs", name))
    if spec.sizes:
        sizes = ", ".join(f"{_name(k, 'size')}={dsl_value(v)}" for k, v in spec.sizes.items())
        inputs += statement(f"sizes {sizes}", ("sizes",), *(("sizes", k) for k in spec.sizes))
    blocks = section_comments(("blocks",))
    for i, name in enumerate(spec.blocks):
        blocks += statement(_node_statement(spec, name), *([("blocks",)] if i == 0 else []), ("blocks", name))
    outputs = section_comments(("outputs",))
    for i, (name, source) in enumerate(spec.outputs.items()):
        section = [("outputs",)] if i == 0 else []
        outputs += statement(f"output {_name(name, 'output')} = {_source(source)}", *section, ("outputs", name))
    groups = [header, inputs, blocks, outputs]
    for section in ("data", "train"):
        value = getattr(spec, section)
        if value is not None:
            above, end = comments.pop((section,)), comments.end((section,))
            text = dsl_pretty(value, len(section) + 1, 0, (section,), comments)
            groups.append([*above, _with_end(f"{section} {text}", end)])
    text = "\n\n".join("\n".join(group) for group in groups if group) + "\n"
    return text + ("\n" + "\n".join(comments.trailing) + "\n" if comments.trailing else "")


def _node_statement(spec: Spec, name: str) -> str:
    decl = spec.blocks[name]
    kind = f"&{_name(decl.shares, 'shared node')}" if decl.shares is not None else _name(decl.type, "block type")
    head = f"{_name(name, 'node')} = {kind}"
    tail = ""
    if decl.inputs is not None:
        tail += f" <- {_wiring(name, decl.inputs)}"
    if decl.mode is not None:
        tail += f" @{decl.mode}"
    _check_params(name, decl.params)
    params = [f"{_key(k)}={dsl_value(v)}" for k, v in decl.params.items()]
    line = head + (f"({', '.join(params)})" if params else "") + tail
    if len(line) <= WIDTH:
        return line
    params = [f"{_key(k)}={dsl_pretty(v, 4 + len(_key(k)) + 1, 4)}" for k, v in decl.params.items()]
    return head + "(\n" + "".join(f"    {p},\n" for p in params) + ")" + tail


def _check_params(node: str, params: dict[str, Any]) -> None:
    for key in params:
        if key in RESERVED_PARAMS:
            raise ValueError(f"block '{node}': a parameter named '{key}' cannot be written (it is a block key)")


def _wiring(node: str, inputs: Any) -> str:
    if isinstance(inputs, str):
        return _source(inputs)
    if isinstance(inputs, dict) and inputs:
        return ", ".join(f"{_name(port, 'port')}: {_source(src)}" for port, src in inputs.items())
    raise ValueError(f"block '{node}': the DSL writes 'in' as a source or port: source pairs, not {inputs!r}")


def _name(text: Any, what: str) -> str:
    if not isinstance(text, str) or not _IDENT.fullmatch(text):
        raise ValueError(f"{what} name {text!r} is not an identifier; the DSL cannot write it")
    return text


def _source(text: Any) -> str:
    if not isinstance(text, str) or not _SOURCE.fullmatch(text):
        raise ValueError(f"connection {text!r} is not 'node' or 'node.port'; the DSL cannot write it")
    return text


def _type_text(name: str, text: str) -> str:
    if not text or text != text.strip() or "#" in text or "\n" in text:
        raise ValueError(f"input '{name}': the DSL writes port types verbatim to the end of the line, not {text!r}")
    return text


def _key(key: str) -> str:
    return key if _IDENT.fullmatch(key) else _dsl_string(key)


def _dsl_string(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def dsl_value(value: Any) -> str:
    """One value as DSL text on one line.

    >>> dsl_value({"lr": 0.01, "betas": [0.9, 0.999], "name": "adam", "tag": "1e3", "x": None})
    '{lr: 0.01, betas: [0.9, 0.999], name: adam, tag: "1e3", x: null}'
    """
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return value if _IDENT.fullmatch(value) and value not in WORDS else _dsl_string(value)
    if isinstance(value, list | tuple):
        return f"[{', '.join(dsl_value(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(str(k))}: {dsl_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"the DSL has no literal for {type(value).__name__} {value!r}")


def dsl_pretty(value: Any, column: int, indent: int, path: Path = (), comments: Comments | None = None) -> str:
    """``value`` on one line when it fits after ``column``, else one item a line, indented by ``indent`` + 2
    (a line break inside brackets continues the statement); comments above keys inside stay above them."""
    flat = dsl_value(value)
    commented = comments is not None and comments.inside(path)
    if not isinstance(value, list | tuple | dict) or not value or (column + len(flat) <= WIDTH and not commented):
        return flat
    inner = " " * (indent + 2)
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            key_path = (*path, key)
            lines += [f"{inner}{c}" for c in (comments.pop(key_path) if comments else [])]
            end = comments.end(key_path) if comments else ""
            text = dsl_pretty(item, indent + 4 + len(_key(str(key))), indent + 2, key_path, comments)
            lines.append(
                _with_end(f"{inner}{_key(str(key))}: {text},", end)
                if "\n" in text
                else f"{inner}{_key(str(key))}: {text},{end}"
            )
        return "{\n" + "\n".join(lines) + "\n" + " " * indent + "}"
    if all(not isinstance(item, list | tuple | dict) for item in value):  # plain values: as many a line as fit
        for item in value:
            text = dsl_value(item) + ","
            if lines and len(lines[-1]) + 1 + len(text) <= WIDTH:
                lines[-1] += " " + text
            else:
                lines.append(inner + text)
    else:
        lines = [f"{inner}{dsl_pretty(v, indent + 2, indent + 2, (*path, i), comments)}," for i, v in enumerate(value)]
    return "[\n" + "\n".join(lines) + "\n" + " " * indent + "]"


# ---------------------------------------------------------------------------------------------------------------
# YAML


class _Dumper(yaml.SafeDumper):
    """Safe dumping, with block lists indented under their key like the shipped specs."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


# Plain scalars that YAML 1.2 readers (editors, yaml-language-server) would not read as strings, though PyYAML's
# YAML 1.1 rules would: quoted too, so that every reader agrees.
_YAML12_NON_STRING = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?\.(inf|Inf|INF)"
    r"|\.(nan|NaN|NAN)|true|True|TRUE|false|False|FALSE|null|Null|NULL|~"
)
_LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Strings with line breaks are double-quoted with escapes (one line, nothing to re-indent)."""
    style = None
    if any(c in value for c in _LINE_BREAKS):
        style = '"'
    elif _YAML12_NON_STRING.fullmatch(value):
        style = "'"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(value: Any, flow: bool | None) -> str:
    return yaml.dump(value, Dumper=_Dumper, default_flow_style=flow, sort_keys=False, allow_unicode=True, width=10**9)


def yaml_flow(value: Any) -> str:
    """A value in YAML flow style on one line, quoted where a plain scalar would read back as something else.

    >>> yaml_flow({"type": "mlp", "in": "x", "tag": "yes", "hidden": [8]})
    "{type: mlp, in: x, tag: 'yes', hidden: [8]}"
    """
    if isinstance(value, list | dict):
        return _dump(value, True).rstrip("\n")
    return _dump([value], True).rstrip("\n")[1:-1]


def _indented(text: str, indent: int) -> list[str]:
    return [" " * indent + line for line in text.rstrip("\n").split("\n")]


def to_yaml(spec: Spec, schema_comment: str | None = None) -> str:
    """The spec as canonical YAML, in the style of the shipped specs (one flow mapping per block).

    ``schema_comment`` (a path or URL of the JSON schema) adds ``# yaml-language-server: $schema=...`` as the
    first line; without it, such a line in the source is kept.
    """
    comments = collect_comments(spec)

    def entry(text: str, indent: int, *paths: Path) -> list[str]:
        """An element with the comments above it and the one at the end of its line."""
        return [*_comment_lines(comments.pop(*paths), indent), _with_end(text, comments.end(*paths))]

    lines: list[str] = []
    if schema_comment is not None:
        lines.append(f"{SCHEMA_PREFIX} $schema={schema_comment}")
    elif comments.schema:
        lines.append(comments.schema)
    lines += comments.leading
    for key in ("dagcv", "name", "description"):
        if getattr(spec, key) is not None:
            lines += entry(_scalar_entry(key, getattr(spec, key)), 0, (key,))

    def named(section: str) -> list[str]:
        """``inputs:`` or ``outputs:``, one ``name: text`` a line."""
        out = entry(f"{section}:", 0, (section,)) if getattr(spec, section) else []
        for name, value in getattr(spec, section).items():
            out += entry(_scalar_entry(name, value, 2), 2, (section, name))
        return out

    lines += named("inputs")
    if spec.sizes:
        lines += entry(f"sizes: {yaml_flow(spec.sizes)}", 0, ("sizes",), *(("sizes", k) for k in spec.sizes))
    lines += [*entry("blocks:" if spec.blocks else "blocks: {}", 0, ("blocks",)), *_yaml_blocks(spec, comments)]
    lines += named("outputs")
    for section in ("data", "train"):
        value = getattr(spec, section)
        if value is not None:
            lines += _yaml_section(section, value, 0, (section,), comments)
    lines += comments.trailing
    return "\n".join(lines) + "\n"


def _scalar_entry(key: str, value: Any, indent: int = 0) -> str:
    """``key: value`` in block context: one line, or two (``? key`` / ``: value``) for an empty or odd key."""
    return "\n".join(_indented(_dump({key: value}, False), indent))


def _comment_lines(comments: list[str], indent: int) -> list[str]:
    return [" " * indent + c for c in comments]


def _yaml_blocks(spec: Spec, comments: Comments) -> list[str]:
    """``  name: {type: t, in: src, param: v}`` per block, aligned; block style where that is too long."""
    flows: dict[str, tuple[str, str] | None] = {}
    for name, decl in spec.blocks.items():
        _check_params(name, decl.params)
        key_text, flow = yaml_flow(name), yaml_flow(_block_mapping(decl))
        flows[name] = None if "\n" in key_text + flow else (key_text, flow)
    # align on the names whose entry fits on one line; a block that goes over several lines does not count
    width = max((len(f[0]) for f in flows.values() if f and len(f[0]) + len(f[1]) + 4 <= WIDTH), default=0)
    lines: list[str] = []
    for name, decl in spec.blocks.items():
        flow = flows[name]
        line = f"  {flow[0]}:{' ' * (width - len(flow[0]))} {flow[1]}" if flow else ""
        if flow and len(line) <= WIDTH:
            lines += [*_comment_lines(comments.pop(("blocks", name)), 2), line + comments.end(("blocks", name))]
        else:
            lines += _yaml_section(name, _block_mapping(decl), 2, ("blocks", name), comments)
    return lines


def _block_mapping(decl: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": decl.type} if decl.shares is None else {"shares": decl.shares}
    if decl.inputs is not None:
        out["in"] = decl.inputs
    if decl.mode is not None:
        out["mode"] = decl.mode
    return {**out, **decl.params}


def _yaml_section(key: str, value: Any, indent: int, path: Path, comments: Comments) -> list[str]:
    """An entry of ``data:``/``train:`` (or a block too long for one line) in the style of the shipped specs:
    a mapping goes one key a line when it holds a mapping, has comments inside, or is too long for one line; a
    list too long for one line goes one item a line (a list of plain values stays one line); the rest is one
    flow line."""
    lines, end = _comment_lines(comments.pop(path), indent), comments.end(path)
    pad, key_text = " " * indent, yaml_flow(key)
    if not isinstance(value, list | dict):  # a scalar, in block context (fewer quotes than inside { })
        return [*lines, _scalar_entry(key, value, indent) + end]
    line = f"{pad}{key_text}: {yaml_flow(value)}"
    too_long = len(line) > WIDTH
    if isinstance(value, dict) and value:
        nested = any(isinstance(v, dict) and v for v in value.values())
        if nested or too_long or len(path) == 1 or comments.inside(path):
            lines.append(f"{pad}{key_text}:{end}")
            for k, v in value.items():
                lines += _yaml_section(k, v, indent + 2, (*path, k), comments)
            return lines
    if isinstance(value, list) and too_long and any(isinstance(v, list | dict) for v in value):
        lines.append(f"{pad}{key_text}:{end}")
        for item in value:
            item_line = f"{pad}  - {yaml_flow(item)}"
            lines += [item_line] if len(item_line) <= WIDTH else _indented(_dump([item], None), indent + 2)
        return lines
    return [*lines, line + end]
