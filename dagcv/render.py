"""Render a spec's block graph with Graphviz: typed ports, shapes on edges, families, modes and errors.

The picture is drawn from the checked graph (:func:`dagcv.compiler.analyze`), never from torch, so an invalid
spec still renders: whatever the passes resolved is drawn, and each diagnostic is pinned, in red, to the edge,
port or node it names (its message is the tooltip). Only ``depth > 0``, which draws the inner modules of each
block, builds the blocks and so imports torch.

Edges are labelled with the symbolic shape (``B×16×4×4``) and, when a dim is symbolic, the example shape under
it (``2×16×4×4``); non-tensor values (``Distribution``, ``ActionSpace``) with their kind.

    >>> from dagcv.spec import load_spec
    >>> dot = render_spec(load_spec("specs/lenet_mnist.yaml"))    # doctest: +SKIP
    >>> write_rendering(dot, "build/lenet_mnist.svg")              # doctest: +SKIP
    PosixPath('build/lenet_mnist.svg')
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphviz

from dagcv.compiler import analyze
from dagcv.errors import Diagnostic, Span
from dagcv.files import atomic_file
from dagcv.graph import SpecGraph
from dagcv.registry import FAMILIES
from dagcv.spec import Spec, load_spec
from dagcv.types import KINDS, Dim, format_shape

FORMATS = ("svg", "png", "pdf", "dot")
RANKDIRS = ("LR", "TB", "RL", "BT")

# One light fill per family (ColorBrewer-like pastels); red is kept for errors.
FAMILY_COLORS = {
    "data": "#d9d9d9", "env": "#ccebc5", "backbone": "#9ecae1", "neck": "#c6dbef",
    "head": "#fdd49e", "layer": "#f0f0f0", "loss": "#fbe0ef", "postprocess": "#dadaeb",
    "policy": "#b3de69", "critic": "#e5f5b0", "encoder": "#bcbddc", "quantizer": "#ffed6f",
    "decoder": "#8dd3c7", "prior": "#ffffb3", "generator": "#c2e699", "discriminator": "#fdb462",
    "noise": "#e7e1ef", "schedule": "#fee0d2", "denoiser": "#a6cee3",
}  # fmt: skip
UNKNOWN_FILL = "#ffffff"
MODE_STYLES = {"both": "solid", "train": "dashed", "eval": "dotted", "sample": "bold"}
MODE_NAMES = {"both": "train + eval", "train": "train only", "eval": "eval only", "sample": "sampling only"}
ERROR = "#d62728"
MUTED = "#555555"
FONT = "Helvetica"

# Above this many nodes labels drop parameters and example shapes, and dot gets cheaper layout settings. dot
# lays out the full labels of a 1000-block spec in well under a second, so the switch sits above that.
LARGE_GRAPH = 2000


class RenderError(RuntimeError):
    """Graphviz could not produce the picture (``dot`` missing or failing); not a problem of the spec."""


# ---------------------------------------------------------------------------------------------------------------
# Public API


def render_spec(
    spec: Spec | SpecGraph, *, depth: int = 0, shapes: bool = True, rankdir: str | None = None
) -> graphviz.Digraph:
    """The Graphviz picture of a spec (valid or not); a :class:`SpecGraph` from ``analyze`` is used as is.

    Args:
        spec: a parsed spec, or the graph :func:`dagcv.compiler.analyze` made of it.
        depth: 0 draws blocks only (no torch); N > 0 draws each block's inner modules N levels deep.
        shapes: label edges with their shapes.
        rankdir: Graphviz direction ``LR`` (inputs on the left), ``TB``, ``RL`` or ``BT``; by default ``LR`` for
            blocks only and ``TB`` with ``depth > 0`` (inner modules then read top to bottom, not as a wide row).

    >>> dot = render_spec(load_spec("specs/lenet_mnist.yaml"))    # doctest: +SKIP
    >>> "B×16×4×4" in dot.source                                   # doctest: +SKIP
    True
    """
    rankdir = rankdir or ("TB" if depth else "LR")
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}, found {rankdir!r}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, found {depth}")
    sg = spec if isinstance(spec, SpecGraph) else analyze(spec)
    drawing = _Drawing(sg, shapes=shapes, rankdir=rankdir, compact=len(sg.g) > LARGE_GRAPH)
    drawing.draw(_inner_modules_of(sg, depth) if depth else {})
    return drawing.dot


def write_rendering(graph: graphviz.Digraph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` in the format its extension names (svg, png, pdf, dot), atomically.

    The file is written to a temporary sibling and renamed, so a reader never sees half a picture and a failing
    ``dot`` leaves the previous file in place. Raises :class:`RenderError` when ``dot`` is missing or fails.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"cannot render to '{path.name}': use one of .{', .'.join(FORMATS)}")
    data = graph.source.encode() if fmt == "dot" else render_bytes(graph, fmt)
    with atomic_file(path) as f:
        f.write(data)
    return path


def render_file(
    spec_path: str | Path,
    out_path: str | Path,
    *,
    depth: int = 0,
    shapes: bool = True,
    rankdir: str | None = None,
    overrides: list[str] | None = None,
) -> SpecGraph:
    """Load, analyze, render and write a spec; returns the graph, whose ``diagnostics`` say if it was invalid.

    A spec that does not even parse raises :class:`~dagcv.errors.SpecError` (there is no graph to draw).
    """
    sg = analyze(load_spec(spec_path, overrides))
    write_rendering(render_spec(sg, depth=depth, shapes=shapes, rankdir=rankdir), out_path)
    return sg


def render_bytes(graph: graphviz.Digraph, fmt: str) -> bytes:
    try:
        return graph.pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise RenderError("Graphviz's `dot` was not found: install graphviz (e.g. `apt-get install graphviz`), "
                          "or write a .dot file") from None  # fmt: skip
    except graphviz.CalledProcessError as exc:
        stderr = (exc.stderr or b"").decode(errors="replace").strip()
        raise RenderError(f"`dot -T{fmt}` failed: {stderr or exc}") from None
    except OSError as exc:  # dot died while reading its input
        raise RenderError(f"`dot -T{fmt}` failed: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# Where each diagnostic is drawn


@dataclass(frozen=True)
class _Wire:
    """A connection as written in the spec (``in:``), whether or not the passes turned it into an edge."""

    src: str
    src_port: str | None
    dst: str
    dst_port: str | None
    span: Span | None


@dataclass
class _Pins:
    """Diagnostics by the element they are drawn on."""

    edges: dict[tuple[str, str, str], list[Diagnostic]] = field(default_factory=dict)  # (u, v, dst_port)
    wires: dict[_Wire, list[Diagnostic]] = field(default_factory=dict)
    ports: dict[tuple[str, str], list[Diagnostic]] = field(default_factory=dict)  # (node, port)
    nodes: dict[str, list[Diagnostic]] = field(default_factory=dict)
    outputs: dict[str, list[Diagnostic]] = field(default_factory=dict)
    loose: list[Diagnostic] = field(default_factory=list)

    def on_node(self, node: str) -> list[Diagnostic]:
        """Every diagnostic drawn inside a node's box (its own and its ports')."""
        return self.nodes.get(node, []) + [d for (n, _), ds in self.ports.items() if n == node for d in ds]


def declared_wires(sg: SpecGraph) -> Iterator[_Wire]:
    """The spec's ``in:`` entries as written, with their spans."""
    smap = sg.spec.source
    for name, decl in sg.spec.blocks.items():
        if isinstance(decl.inputs, dict):
            items = [(port, src, smap.value("blocks", name, "in", port)) for port, src in decl.inputs.items()]
        elif isinstance(decl.inputs, str):
            items = [(None, decl.inputs, smap.value("blocks", name, "in"))]
        else:
            continue
        for port, src, span in items:
            if isinstance(src, str):
                node, _, src_port = src.strip().partition(".")
                yield _Wire(node, src_port or None, name, port, span)


def missing_wires(sg: SpecGraph) -> list[_Wire]:
    """Written connections between existing nodes that are not edges (dropped as cyclic, bad port, ...)."""
    out = []
    for w in declared_wires(sg):
        if w.src not in sg.g or w.dst not in sg.g or sg.node(w.dst)["kind"] != "block":
            continue
        if not any(d["span"] == w.span for _, _, d in sg.g.in_edges(w.dst, data=True)):
            out.append(w)
    return out


def _within(inner: Span | None, outer: Span | None) -> bool:
    """Whether ``inner`` starts inside the one-line span ``outer``."""
    if inner is None or outer is None or inner.file != outer.file or inner.line != outer.line:
        return False
    end = outer.end_col if outer.end_line in (None, outer.line) and outer.end_col else outer.col + 1
    return outer.col <= inner.col < max(end, outer.col + 1)


def pin_diagnostics(sg: SpecGraph, wires: list[_Wire]) -> _Pins:
    """Attach each diagnostic to the most precise drawn element: edge, written wire, port, node, output."""
    pins = _Pins()
    unresolved = {o: sg.spec.source.value("outputs", o) for o in sg.spec.outputs if o not in sg.outputs}
    for diag in sg.diagnostics:
        edge = next((k for k, d in _edges_into(sg, diag.node) if _within(diag.span, d["span"])
                     and diag.port in (None, d["dst_port"])), None)  # fmt: skip
        wire = next((w for w in wires if _within(diag.span, w.span)), None)
        output = next((o for o, span in unresolved.items() if _within(diag.span, span)), None)
        if edge is not None:
            pins.edges.setdefault(edge, []).append(diag)
        elif wire is not None:
            pins.wires.setdefault(wire, []).append(diag)
        elif diag.node in sg.g and diag.port in _ports(sg, diag.node):
            pins.ports.setdefault((diag.node, diag.port), []).append(diag)
        elif diag.node in sg.g:
            pins.nodes.setdefault(diag.node, []).append(diag)
        elif output is not None:
            pins.outputs.setdefault(output, []).append(diag)
        else:
            pins.loose.append(diag)
    return pins


def _edges_into(sg: SpecGraph, node: str | None) -> Iterator[tuple[tuple[str, str, str], dict]]:
    edges = sg.g.in_edges(node, keys=True, data=True) if node in sg.g else sg.g.edges(keys=True, data=True)
    for u, v, k, d in edges:
        yield (u, v, k), d


def _ports(sg: SpecGraph, node: str) -> set[str]:
    contract = sg.node(node).get("contract")
    return {p.name for p in [*contract.inputs, *contract.outputs]} if contract else set()


def short_message(message: str, limit: int = 40) -> str:
    """The gist of a diagnostic for a label: the part before the first colon, cut to ``limit`` characters.

    >>> short_message("kind mismatch: features.out is FeatureMap but loss.logits expects Logits")
    'kind mismatch'
    """
    head = message.split(": ", 1)[0]
    return head if len(head) <= limit else head[: limit - 1] + "…"


def _tooltip_of(diags: list[Diagnostic]) -> str:
    parts = []
    for d in diags:
        where = f"{d.span}: " if d.span else ""
        parts.append(f"{where}error: {d.message}" + (f"\nhint: {d.hint}" if d.hint else ""))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Text helpers


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LABEL_CHARS = 300  # longer text (a pasted description) is cut: dot fails on huge labels, and nobody reads them


def _visible(text: object) -> str:
    """``text`` as a label can show it: control characters replaced, cut at :data:`LABEL_CHARS`."""
    text = _CONTROL.sub("\ufffd", str(text))
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "\u2026"


def _h(text: object) -> str:
    r"""Text escaped for an HTML-like label (dot 2.43 also reads ``\\`` in a label as one backslash)."""
    return html.escape(_visible(text), quote=True).replace("\\", "\\\\")


def _plain(text: str) -> str:
    r"""Text for a quoted DOT attribute (tooltips), never taken for an HTML label.

    dot 2.43 unescapes tooltips twice (``\\\\`` shows as one backslash); graphviz.quote escapes the quotes.
    """
    return graphviz.nohtml(_visible(text).replace("\\", "\\" * 4))


def _value_text(value: Any, limit: int = 28) -> str:
    if isinstance(value, tuple | list):
        text = "[" + ", ".join(_value_text(v, limit) for v in value) + "]"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shape_label(kind: str | None, dims: list[Dim] | None) -> tuple[str, str | None]:
    """(label, example) for a value: ``("B×16×4×4", "2×16×4×4")``, or the kind name for non-tensor values.

    >>> shape_label("Image", [Dim("B", 2), Dim.const(3)])
    ('B×3', '2×3')
    """
    if kind is None:
        return "", None
    if not KINDS[kind].tensor or not dims:
        return kind, None  # non-tensors, scalars (``Loss[]``) and unknown shapes read best as the kind
    symbolic, concrete = format_shape(dims), format_shape(dims, concrete=True)
    return symbolic, (concrete if concrete != symbolic else None)


def _param_lines(data: dict) -> list[str]:
    """``name=value`` for parameters that differ from their default, then inferred arguments (HTML)."""
    contract = data.get("contract")
    if contract is None:
        return []
    lines = []
    for key, value in data.get("params", {}).items():
        decl = contract.param(key)
        default = decl.default if decl else None
        if key in contract.infer or value is None or _same(value, default):
            continue
        lines.append(f"{_h(key)}={_h(_value_text(value))}")
    for key, value in data.get("inferred", {}).items():
        lines.append(f"{_h(key)}={_h(value)} <I>(inferred)</I>")
    return lines


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - manifest defaults are lists
    return norm(a) == norm(b)


# ---------------------------------------------------------------------------------------------------------------
# The drawing


class _Drawing:
    """Builds one Digraph: nodes, edges, the legend and the error note, from a SpecGraph."""

    def __init__(self, sg: SpecGraph, *, shapes: bool, rankdir: str, compact: bool) -> None:
        self.sg = sg
        self.shapes = shapes
        self.rankdir = rankdir
        self.compact = compact
        self.ids = {name: f"n{i}" for i, name in enumerate(sg.g.nodes)}
        self.wires = missing_wires(sg)
        self.pins = pin_diagnostics(sg, self.wires)
        self.expanded: set[str] = set()  # blocks drawn as a cluster (depth > 0)
        self.dot = graphviz.Digraph(sg.spec.name, graph_attr=self._graph_attr(),
                                    node_attr={"fontname": FONT, "fontsize": "11"},
                                    edge_attr={"fontname": FONT, "fontsize": "9", "color": "#444444"})  # fmt: skip

    def _graph_attr(self) -> dict[str, str]:
        n_errors = len(self.sg.diagnostics)
        title = f"<B>{_h(self.sg.spec.name)}</B>"
        if self.sg.spec.description:
            title += f'  <FONT POINT-SIZE="10">{_h(self.sg.spec.description)}</FONT>'
        if n_errors:
            title += f'<BR/><FONT COLOR="{ERROR}">{n_errors} error{"s" if n_errors != 1 else ""}</FONT>'
        attrs = {"rankdir": self.rankdir, "label": f"<{title}>", "labelloc": "t", "fontname": FONT,
                 "nodesep": "0.25", "ranksep": "0.4", "newrank": "true"}  # fmt: skip
        if self.compact:
            # Most of dot's time on big graphs goes to network simplex (x coordinates, then ranks) and crossing
            # minimisation; bounding their iterations costs a little layout quality that nobody reads at this size.
            attrs.update({"nslimit": "0.2", "nslimit1": "0.2", "mclimit": "0.5"})
        return attrs

    def draw(self, inner: dict[str, list[_Inner]]) -> None:
        for name, data in self.sg.g.nodes(data=True):
            if data["kind"] == "input":
                self._input_node(name, data)
            elif inner.get(name):
                self._block_cluster(name, data, inner[name])
            else:
                self._block_node(name, data)
        for u, v, k, d in self.sg.g.edges(keys=True, data=True):
            self._edge(u, v, k, d)
        for wire in self.wires:
            self._wire(wire)
        self._outputs()
        self._error_note()
        self._legend()

    # -- nodes ---------------------------------------------------------------------------------------------

    def _input_node(self, name: str, data: dict) -> None:
        port_type = data.get("type")
        text = port_type.text if port_type else self.sg.spec.inputs.get(name, "")
        diags = self.pins.on_node(name)
        label = f'<B>{_h(name)}</B><BR/><FONT POINT-SIZE="10">{_h(text)}</FONT>'
        label += self._error_lines(diags)
        self.dot.node(self.ids[name], f"<{label}>", shape="ellipse", style="filled", fillcolor="#ffffff",
                      id=f"input-{name}", tooltip=_plain(_tooltip_of(diags) or f"spec input {name}: {text}"),
                      **self._error_attrs(diags))  # fmt: skip

    def _block_node(self, name: str, data: dict) -> None:
        diags = self.pins.on_node(name)
        label = self._block_table(name, data, self._body(name, data, diags))
        self.dot.node(self.ids[name], f"<{label}>", **self._box_attrs(name, data, diags))

    def _box_attrs(self, name: str, data: dict, diags: list[Diagnostic]) -> dict[str, str]:
        contract = data.get("contract")
        fill = FAMILY_COLORS.get(contract.family, UNKNOWN_FILL) if contract else UNKNOWN_FILL
        style = MODE_STYLES[self._mode(name)]
        return {"shape": "box", "style": f"rounded,filled,{style}", "fillcolor": fill, "margin": "0.04",
                "id": f"block-{name}", "tooltip": _plain(self._block_tooltip(name, data, diags)),
                **self._error_attrs(diags)}  # fmt: skip

    def _mode(self, name: str) -> str:
        data = self.sg.node(name)
        decl = self.sg.spec.blocks.get(name)
        return data.get("mode") or (decl.mode if decl is not None else None) or "both"

    def _body(self, name: str, data: dict, diags: list[Diagnostic]) -> str:
        """Name, block type, mode, parameters and error lines of a block, as HTML lines."""
        decl = self.sg.spec.blocks.get(name)
        block_type = data["contract"].name if data.get("contract") else (decl.type if decl else None) or "?"
        if decl is not None and decl.shares is not None:
            block_type = f"{block_type} · shares {decl.shares}"  # one module, called by two nodes
        mode = self._mode(name)
        head = f'<B>{_h(name)}</B><BR/><FONT POINT-SIZE="10">{_h(block_type)}'
        head += f" · {MODE_NAMES[mode]}" if mode != "both" else ""
        lines = [head + "</FONT>"]
        if not self.compact and not data.get("shares"):
            lines += [f'<FONT POINT-SIZE="9" COLOR="{MUTED}">{p}</FONT>' for p in _param_lines(data)]
        return "<BR/>".join(lines) + self._error_lines(diags)

    def _block_table(self, name: str, data: dict, body: str, sides: str = "both") -> str:
        """The HTML table of a block: input port cells on one side, the body, output port cells on the other."""
        contract = data.get("contract")
        ins = contract.inputs if contract and sides in ("both", "in") else ()
        outs = contract.outputs if contract and sides in ("both", "out") else ()
        vertical = self.rankdir in ("TB", "BT")
        in_cells = [self._port_cell(name, p, "i", k, _column_width(ins, vertical)) for k, p in enumerate(ins)]
        out_cells = [self._port_cell(name, p, "o", k, _column_width(outs, vertical)) for k, p in enumerate(outs)]
        table = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">'
        if vertical:
            first, last = (in_cells, out_cells) if self.rankdir == "TB" else (out_cells, in_cells)
            rows = [_port_row(first), f"<TR><TD>{body}</TD></TR>" if body else "", _port_row(last)]
            return table + "".join(rows) + "</TABLE>"
        left, right = (in_cells, out_cells) if self.rankdir == "LR" else (out_cells, in_cells)
        cells = [_port_column(left), f"<TD>{body}</TD>" if body else "", _port_column(right)]
        return table + "<TR>" + "".join(cells) + "</TR></TABLE>"

    def _port_cell(self, node: str, port: Any, side: str, index: int, width: int | None) -> str:
        bad = (node, port.name) in self.pins.ports
        text = _h(port.name) + ("?" if port.parsed.optional else "")
        if bad:
            text = f'<FONT COLOR="{ERROR}"><B>{text}</B></FONT>'
        elif port.parsed.optional and not self._connected(node, port.name, side):
            text = f'<FONT COLOR="#999999">{text}</FONT>'
        color = f' BGCOLOR="#fde0e0" COLOR="{ERROR}"' if bad else ' BGCOLOR="white"'
        size = f'FIXEDSIZE="TRUE" WIDTH="{width or _text_width(port)}" HEIGHT="{PORT_HEIGHT}"'
        return f'<TD PORT="{side}{index}" BORDER="1" {size}{color}><FONT POINT-SIZE="9">{text}</FONT></TD>'

    def _connected(self, node: str, port: str, side: str) -> bool:
        if side == "i":
            return any(k == port for _, _, k in self.sg.g.in_edges(node, keys=True))
        return any(d["src_port"] == port for _, _, d in self.sg.g.out_edges(node, data=True))

    def _block_tooltip(self, name: str, data: dict, diags: list[Diagnostic]) -> str:
        contract = data.get("contract")
        if contract is None:
            return _tooltip_of(diags) or name
        lines = [f"{name}: {contract.name} ({contract.family}, {MODE_NAMES[self._mode(name)]})", contract.doc]
        lines += [f"in  {p.name}: {p.type}" for p in contract.inputs]
        lines += [f"out {p.name}: {p.type}" for p in contract.outputs]
        params = {**data.get("params", {}), **data.get("inferred", {})}
        lines += [f"{k} = {_value_text(v, 60)}" for k, v in params.items()]
        text = "\n".join(line for line in lines if line)
        return f"{_tooltip_of(diags)}\n\n{text}" if diags else text

    def _error_lines(self, diags: list[Diagnostic]) -> str:
        return "".join(f'<BR/><FONT COLOR="{ERROR}" POINT-SIZE="9">✗ {_h(short_message(d.message))}</FONT>'
                       for d in diags)  # fmt: skip

    @staticmethod
    def _error_attrs(diags: list[Diagnostic]) -> dict[str, str]:
        return {"color": ERROR, "penwidth": "2.5", "fontcolor": ERROR} if diags else {}

    # -- edges ---------------------------------------------------------------------------------------------

    def _tail(self, node: str, port: str | None) -> str:
        nid = self.ids[node]
        contract = self.sg.node(node).get("contract")
        names = [p.name for p in contract.outputs] if contract else []
        if port not in names and len(names) == 1:
            port = names[0]
        if port not in names:
            return nid
        return f"{nid}_out:o{names.index(port)}" if node in self.expanded else f"{nid}:o{names.index(port)}"

    def _head(self, node: str, port: str | None) -> str:
        nid = self.ids[node]
        contract = self.sg.node(node).get("contract")
        names = [p.name for p in contract.inputs] if contract else []
        required = [p.name for p in contract.inputs if not p.parsed.optional] if contract else []
        if port not in names and len(required) == 1:
            port = required[0]  # a single-source `in:` feeds the one required port
        if port not in names:
            return f"{nid}_in" if node in self.expanded and names else nid
        return f"{nid}_in:i{names.index(port)}" if node in self.expanded else f"{nid}:i{names.index(port)}"

    def _edge(self, u: str, v: str, key: str, d: dict) -> None:
        port_type = self.sg.out_type(u, d["src_port"])
        dims = self.sg.node(u).get("shapes", {}).get(d["src_port"])
        label, example = shape_label(port_type.kind if port_type else None, dims)
        vocab = self.sg.node(u).get("vocabs", {}).get(d["src_port"])
        diags = self.pins.edges.get((u, v, key), [])
        where = f"{u}.{d['src_port']} → {v}.{d['dst_port']}"
        tip = f"{where}\n{port_type.kind if port_type else '?'} {label}" + (f" = {example}" if example else "")
        lines = [label] if self.shapes and label else []
        if example and self.shapes and not self.compact:
            lines.append(f'<FONT POINT-SIZE="8" COLOR="{MUTED}">{_h(example)}</FONT>')
        if vocab is not None and self.shapes:
            lines.append(f'<FONT POINT-SIZE="8">vocab {vocab.value}</FONT>')  # codes: how many there are
        attrs = {"tooltip": _plain(f"{_tooltip_of(diags)}\n\n{tip}" if diags else tip)}
        mode = self._mode(u) if self.sg.node(u)["kind"] == "block" else "both"
        if mode != "both":
            attrs["style"] = MODE_STYLES[mode]
        self._draw_edge(self._tail(u, d["src_port"]), self._head(v, d["dst_port"]), lines, diags, attrs)

    def _wire(self, wire: _Wire) -> None:
        """A written connection the passes could not make into an edge: red when an error names it."""
        diags = self.pins.wires.get(wire, [])
        text = f"{wire.src}{'.' + wire.src_port if wire.src_port else ''} → {wire.dst}"
        text += f".{wire.dst_port}" if wire.dst_port else ""
        tip = _tooltip_of(diags) or f"{text}: not checked (an error elsewhere stopped the passes)"
        attrs = {"tooltip": _plain(tip), "style": "dashed"}
        if not diags:
            attrs["color"] = "#999999"
        self._draw_edge(self._tail(wire.src, wire.src_port), self._head(wire.dst, wire.dst_port), [], diags, attrs)

    def _draw_edge(self, tail: str, head: str, lines: list[str], diags: list[Diagnostic], attrs: dict) -> None:
        if diags:
            lines = [*lines, *(f'<FONT COLOR="{ERROR}">✗ {_h(short_message(d.message))}</FONT>' for d in diags)]
            attrs.update(color=ERROR, penwidth="2.5", fontcolor=ERROR)
        if lines:
            attrs["label"] = f"<{'<BR/>'.join(lines)}>"
        self.dot.edge(tail, head, **attrs)

    # -- outputs, errors, legend ---------------------------------------------------------------------------

    def _outputs(self) -> None:
        for i, name in enumerate(self.sg.spec.outputs):
            oid = f"out{i}"
            diags = self.pins.outputs.get(name, [])
            if name in self.sg.outputs:
                node, port = self.sg.outputs[name]
                text = self._value_type(node, port)
                mode = self._mode(node) if self.sg.node(node)["kind"] == "block" else "both"
                self.dot.edge(
                    self._tail(node, port),
                    oid,
                    style=MODE_STYLES[mode],
                    tooltip=_plain(f"{node}.{port} → output {name}"),
                )
            else:
                text = self.sg.spec.outputs[name]
            label = f'<B>{_h(name)}</B><BR/><FONT POINT-SIZE="10">{_h(text)}</FONT>' + self._error_lines(diags)
            self.dot.node(oid, f"<{label}>", shape="ellipse", peripheries="2", style="filled", fillcolor="#ffffff",
                          id=f"output-{name}", tooltip=_plain(_tooltip_of(diags) or f"spec output {name}: {text}"),
                          **self._error_attrs(diags))  # fmt: skip

    def _value_type(self, node: str, port: str) -> str:
        """``Logits[B, 10]``: the kind with the dims the shape pass found (or the declared type)."""
        port_type = self.sg.out_type(node, port)
        dims = self.sg.node(node).get("shapes", {}).get(port)
        if port_type is None:
            return "?"
        if dims is None:
            return port_type.text
        vocab = self.sg.node(node).get("vocabs", {}).get(port)
        return f"{port_type.kind}[{', '.join(d.text for d in dims)}]" + (f" vocab {vocab.value}" if vocab else "")

    def _error_note(self) -> None:
        if not self.pins.loose:
            return
        lines = [f'<B>{len(self.pins.loose)} error{"s" if len(self.pins.loose) != 1 else ""} '
                 f'not tied to a node</B>']  # fmt: skip
        lines += [f"✗ {_h(d.span)}: {_h(d.message)}" if d.span else f"✗ {_h(d.message)}" for d in self.pins.loose]
        br = '<BR ALIGN="LEFT"/>'
        self.dot.node("errors", f"<{br.join(lines)}{br}>", shape="note",
                      color=ERROR, fontcolor=ERROR, penwidth="2", id="errors",
                      tooltip=_plain(_tooltip_of(self.pins.loose)))  # fmt: skip

    def _legend(self) -> None:
        """One small table in a cluster: the families present, the modes present, node shapes, errors."""
        families = [f for f in FAMILIES if any(d.get("contract") and d["contract"].family == f
                                               for _, d in self.sg.g.nodes(data=True))]  # fmt: skip
        modes = {self._mode(n) for n in self.sg.blocks()}
        left = [f'<TD BGCOLOR="{FAMILY_COLORS[f]}" BORDER="1" STYLE="rounded">{f}</TD>' for f in families]
        right = [f'<TD BORDER="1" STYLE="{MODE_STYLES[m]}">{MODE_NAMES[m]}</TD>' for m in MODE_STYLES if m in modes]
        right += ["<TD>ellipse: spec input</TD>", "<TD>double ellipse: spec output</TD>"]
        if self.sg.diagnostics:
            right.append(f'<TD BORDER="2" COLOR="{ERROR}"><FONT COLOR="{ERROR}">error (hover: message)</FONT></TD>')
        rows = []
        for i in range(max(len(left), len(right))):
            cells = [left[i] if i < len(left) else "<TD></TD>", right[i] if i < len(right) else "<TD></TD>"]
            rows.append(f"<TR>{''.join(cells)}</TR>")
        table = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="2">{"".join(rows)}</TABLE>'
        with self.dot.subgraph(name="cluster_legend") as legend:
            legend.attr(label="legend", fontsize="9", style="rounded", color="#bbbbbb", fontname=FONT)
            legend.node("legend", f'<<FONT POINT-SIZE="8">{table}</FONT>>', shape="plain", id="legend")

    # -- depth > 0: blocks as clusters of their inner modules ------------------------------------------------

    def _block_cluster(self, name: str, data: dict, inner: list[_Inner]) -> None:
        """A block as a cluster: a node with its input ports and header, its inner modules, its output ports."""
        self.expanded.add(name)
        nid = self.ids[name]
        diags = self.pins.on_node(name)
        attrs = self._box_attrs(name, data, diags)
        body = self._body(name, data, diags)
        has_inputs = bool(data["contract"].inputs)
        with self.dot.subgraph(name=f"cluster_{nid}") as c:
            c.attr(
                label="",
                style=attrs["style"],
                fillcolor=attrs["fillcolor"],
                id=attrs["id"],
                tooltip=attrs["tooltip"],
                color=attrs.get("color", "black"),
                penwidth=attrs.get("penwidth", "1"),
            )
            chain: list[str | list] = []
            if has_inputs:  # the header goes with the inputs (or with the outputs of a source block)
                c.node(f"{nid}_in", f"<{self._block_table(name, data, body, 'in')}>", shape="plain",
                       tooltip=attrs["tooltip"])  # fmt: skip
                chain.append(f"{nid}_in")
            chain += self._inner_nodes(c, f"{nid}_m", inner)
            c.node(f"{nid}_out", f"<{self._block_table(name, data, '' if has_inputs else body, 'out')}>",
                   shape="plain", tooltip=attrs["tooltip"])  # fmt: skip
            chain.append(f"{nid}_out")
            self._chain(c, chain)

    def _inner_nodes(self, graph: graphviz.Digraph, prefix: str, items: list[_Inner]) -> list[str | list]:
        """Draw ``items`` (nested containers as clusters); returns the chain of ids in definition order."""
        chain: list[str | list] = []
        for j, item in enumerate(items):
            iid = f"{prefix}{j}"
            title = f"<B>{_h(item.name)}</B> {_h(item.cls)}" + (f" ×{item.count}" if item.count > 1 else "")
            if item.children:
                with graph.subgraph(name=f"cluster_{iid}") as c:
                    c.attr(label=f"<{title}>", style="rounded,filled", fillcolor="#ffffff", color="#999999",
                           fontsize="10")  # fmt: skip
                    chain.append(self._inner_nodes(c, f"{iid}_", item.children))
                continue
            label = title + (f'<BR/><FONT POINT-SIZE="8" COLOR="{MUTED}">{_h(item.summary)}</FONT>'
                             if item.summary else "")  # fmt: skip
            graph.node(iid, f"<{label}>", shape="box", style="rounded,filled", fillcolor="#ffffff", fontsize="9",
                       tooltip=_plain(f"{item.name}: {item.cls}" + (f" ×{item.count}" if item.count > 1 else "")
                                      + f"\n{item.summary}\n{_count(item.params)} parameters"))  # fmt: skip
            chain.append(iid)
        return chain

    def _chain(self, graph: graphviz.Digraph, chain: list) -> None:
        """Thin arrows between consecutive inner modules (definition order; nested chains are entered)."""
        flat = [(_first(x), _last(x)) for x in chain if _first(x) is not None]
        tailport, headport = {"TB": ("s", "n"), "BT": ("n", "s"), "LR": ("e", "w"), "RL": ("w", "e")}[self.rankdir]
        for (_, a), (b, _) in itertools.pairwise(flat):
            graph.edge(f"{a}:{tailport}", f"{b}:{headport}", color="#aaaaaa", arrowsize="0.5",
                       tooltip="definition order (named_children)")  # fmt: skip
        for x in chain:
            if isinstance(x, list):
                self._chain(graph, x)


def _first(x: str | list) -> str | None:
    while isinstance(x, list):
        if not x:
            return None
        x = x[0]
    return x


def _last(x: str | list) -> str | None:
    while isinstance(x, list):
        if not x:
            return None
        x = x[-1]
    return x


# Port cells sit in a nested table with empty cells around them and a fixed size: otherwise Graphviz stretches
# them to the height (width) of the block's body. The width is estimated from the text (9pt Helvetica).
PORT_HEIGHT = 18


def _text_width(port: Any) -> int:
    return round(len(port.name) * 5.6 + (5 if port.parsed.optional else 0) + 12)


def _column_width(ports: Any, vertical: bool) -> int | None:
    """One width for a column of port cells (LR, RL); each cell its own width in a row (TB, BT)."""
    return None if vertical or not ports else max(_text_width(p) for p in ports)


def _port_row(cells: list[str]) -> str:
    if not cells:
        return ""
    return ('<TR><TD><TABLE BORDER="0" CELLSPACING="0" CELLPADDING="3"><TR><TD></TD>' + "".join(cells)
            + "<TD></TD></TR></TABLE></TD></TR>")  # fmt: skip


def _port_column(cells: list[str]) -> str:
    if not cells:
        return ""
    rows = "".join(f"<TR>{c}</TR>" for c in ["<TD></TD>", *cells, "<TD></TD>"])
    return f'<TD><TABLE BORDER="0" CELLSPACING="0" CELLPADDING="3">{rows}</TABLE></TD>'


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


# ---------------------------------------------------------------------------------------------------------------
# Inner modules (depth > 0): built from the blocks, runs of identical children collapsed


@dataclass
class _Inner:
    """One drawn inner module: ``name`` (``layer1``, or ``0–2`` for a run), class, run length, children."""

    name: str
    cls: str
    count: int
    summary: str
    params: int
    children: list[_Inner]


def _inner_modules_of(sg: SpecGraph, depth: int) -> dict[str, list[_Inner]]:
    """Each built block's children ``depth`` levels deep (imports torch and the blocks)."""
    from torch import nn

    out = {}
    for name, obj in _instantiate(sg).items():
        if isinstance(obj, nn.Module):
            out[name] = inner_modules(obj, depth)
    return out


def _instantiate(sg: SpecGraph) -> dict[str, Any]:
    """Block instances: :func:`dagcv.build.build` for a valid spec, else each block that can be built alone."""
    from dagcv.build import build
    from dagcv.errors import SpecError

    if not sg.diagnostics:
        try:
            return build(sg, propagate=False).objects
        except SpecError:
            pass
    objects = {}
    for name in sg.blocks():
        data = sg.node(name)
        if not sg.healthy(name) or "contract" not in data:
            continue
        try:
            objects[name] = sg.registry.implementation(data["contract"].name)(
                **{**data["params"], **data.get("inferred", {})}
            )
        except Exception:  # a block that cannot be built alone is drawn unexpanded
            continue
    return objects


def inner_modules(module: Any, depth: int) -> list[_Inner]:
    """``module``'s children ``depth`` levels deep; consecutive children of the same class with the same
    parameter shapes become one entry (``0–1 BasicBlock ×2``)."""
    items = []
    for run in _runs(list(module.named_children())):
        first, child = run[0]
        name = first if len(run) == 1 else f"{first}–{run[-1][0]}"
        children = inner_modules(child, depth - 1) if depth > 1 else []
        params = sum(p.numel() for p in child.parameters()) * len(run)
        items.append(_Inner(name, type(child).__name__, len(run), _summary(child), params, children))
    return items


def _runs(children: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    runs: list[list[tuple[str, Any]]] = []
    for name, child in children:
        if runs and _signature(runs[-1][-1][1]) == _signature(child):
            runs[-1].append((name, child))
        else:
            runs.append([(name, child)])
    return runs


def _signature(module: Any) -> tuple:
    return type(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters())


def _summary(module: Any, limit: int = 36) -> str:
    """What a module holds: its children's classes (``BasicBlock ×2``) or its short ``extra_repr``."""
    kids = [type(c).__name__ for c in module.children()]
    if kids:
        groups: list[list[str]] = []
        for k in kids:
            if groups and groups[-1][0] == k:
                groups[-1].append(k)
            else:
                groups.append([k])
        text = ", ".join(g[0] + (f" ×{len(g)}" if len(g) > 1 else "") for g in groups)
    else:
        text = module.extra_repr()
    return text if len(text) <= limit else text[: limit - 1] + "…"
