"""The renderer, through the real ``dot``: what a reader sees in the SVG, valid and invalid specs, depth, modes."""

from __future__ import annotations

import html
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dagcv.compiler import analyze
from dagcv.registry import FAMILIES
from dagcv.render import (
    ERROR,
    FAMILY_COLORS,
    RenderError,
    inner_modules,
    render_file,
    render_spec,
    short_message,
    write_rendering,
)
from dagcv.spec import load_spec, parse_spec_text
from dagcv.types import KINDS, format_shape
from tests.conftest import ROOT, SPECS

SVG = "{http://www.w3.org/2000/svg}"
XLINK_TITLE = "{http://www.w3.org/1999/xlink}title"
ERRORS = ROOT / "tests" / "golden" / "errors"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def svg_of(spec_or_graph, tmp_path: Path, **options) -> ET.Element:
    path = write_rendering(render_spec(spec_or_graph, **options), tmp_path / "out.svg")
    return ET.fromstring(path.read_bytes())


def texts(root: ET.Element) -> set[str]:
    """Every text element of the picture (each label line, bold name, port cell is one)."""
    return {"".join(t.itertext()) for t in root.iter(f"{SVG}text")}


def tooltips(root: ET.Element) -> str:
    return "\n".join(a.get(XLINK_TITLE, "") for a in root.iter(f"{SVG}a"))


def group(root: ET.Element, element_id: str) -> ET.Element:
    found = [g for g in root.iter(f"{SVG}g") if g.get("id") == element_id]
    assert found, f"no element with id {element_id!r}"
    return found[0]


def strokes(element: ET.Element) -> list[str]:
    return [e.get("stroke", "") for e in element.iter() if e.tag in (f"{SVG}path", f"{SVG}polygon")]


def edge_with_tooltip(root: ET.Element, text: str) -> ET.Element:
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "edge" and any(text in a.get(XLINK_TITLE, "") for a in g.iter(f"{SVG}a")):
            return g
    raise AssertionError(f"no edge whose tooltip contains {text!r}")


# ---------------------------------------------------------------------------------------------------------------
# Shipped specs


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_shipped_spec_shows_nodes_ports_and_shapes(path: Path, tmp_path: Path) -> None:
    sg = analyze(load_spec(path))
    assert not sg.diagnostics
    root = svg_of(sg, tmp_path)
    seen = texts(root)
    for name, data in sg.g.nodes(data=True):
        assert name in seen, f"node {name} not drawn"
        contract = data.get("contract")
        for port in [*contract.inputs, *contract.outputs] if contract else []:
            assert port.name in seen or f"{port.name}?" in seen, f"port {name}.{port.name} not labelled"
    for u, _, d in sg.g.edges(data=True):
        dims = sg.node(u)["shapes"][d["src_port"]]
        kind = sg.out_type(u, d["src_port"]).kind
        if KINDS[kind].tensor and dims:
            assert format_shape(dims) in seen and format_shape(dims, concrete=True) in seen
        else:
            assert kind in seen
    for output in sg.spec.outputs:
        assert output in seen
    png = write_rendering(render_spec(sg), tmp_path / "out.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_lenet_edges_carry_symbolic_and_example_shapes(tmp_path: Path) -> None:
    seen = texts(svg_of(load_spec(ROOT / "specs/lenet_mnist.yaml"), tmp_path))
    assert {"B×16×4×4", "2×16×4×4", "B×1×28×28", "(inferred)"} <= seen
    assert any(t.startswith("in_features=256") for t in seen)  # marked as inferred (in italics)
    assert "hidden=[120, 84]" in seen and "num_classes=10" in seen  # non-default parameters


def test_non_tensor_values_are_labelled_with_their_kind(tmp_path: Path) -> None:
    seen = texts(svg_of(load_spec(ROOT / "specs/actor_critic_cartpole.yaml"), tmp_path))
    assert "DiscreteSpace" in seen and "Distribution[B, 2]" in seen


def test_shapes_false_drops_edge_labels(tmp_path: Path) -> None:
    root = svg_of(load_spec(ROOT / "specs/lenet_mnist.yaml"), tmp_path, shapes=False)
    assert not {"B×16×4×4", "2×16×4×4"} & texts(root)
    assert "B×16×4×4" in tooltips(root)  # still there on hover


def test_train_only_node_is_dashed_and_the_legend_says_so(tmp_path: Path) -> None:
    root = svg_of(load_spec(ROOT / "specs/lenet_mnist.yaml"), tmp_path)
    loss_outline = [e for e in group(root, "block-loss").iter() if e.get("stroke-dasharray")]
    assert loss_outline and loss_outline[0].get("stroke-dasharray") == "5,2"
    assert not any(e.get("stroke-dasharray") for e in group(root, "block-features").iter())
    legend = {"".join(t.itertext()) for t in group(root, "legend").iter(f"{SVG}text")}
    assert {"backbone", "head", "loss", "train only", "train + eval"} <= legend
    assert "decoder" not in legend and "eval only" not in legend  # only what the picture uses


def test_inputs_and_outputs_have_their_own_shapes() -> None:
    source = render_spec(load_spec(ROOT / "specs/lenet_mnist.yaml")).source
    image = next(line for line in source.splitlines() if 'id="input-image"' in line)
    logits = next(line for line in source.splitlines() if 'id="output-logits"' in line)
    assert "shape=ellipse" in image and "peripheries=2" not in image
    assert "shape=ellipse" in logits and "peripheries=2" in logits and "Logits[B, 10]" in logits


def test_large_graphs_get_compact_labels_and_cheaper_layout(monkeypatch) -> None:
    from tools.gen_spec import generate_spec

    monkeypatch.setattr("dagcv.render.LARGE_GRAPH", 50)
    source = render_spec(parse_spec_text(generate_spec(50), "big.yaml")).source
    assert "nslimit" in source and "out_features=8" not in source and "2×8</FONT>" not in source
    source = render_spec(parse_spec_text(generate_spec(49), "small.yaml")).source
    assert "nslimit" not in source and "out_features=8" in source and "2×8</FONT>" in source


def test_every_family_has_a_color() -> None:
    assert set(FAMILY_COLORS) == set(FAMILIES)
    assert ERROR not in FAMILY_COLORS.values()


def test_rankdir_top_to_bottom_renders(tmp_path: Path) -> None:
    seen = texts(svg_of(load_spec(ROOT / "specs/vqvae_mnist.yaml"), tmp_path, rankdir="TB"))
    assert {"quantized", "codes", "codebook_loss", "commitment_loss"} <= seen
    with pytest.raises(ValueError, match="rankdir"):
        render_spec(load_spec(ROOT / "specs/vqvae_mnist.yaml"), rankdir="sideways")


# ---------------------------------------------------------------------------------------------------------------
# Invalid specs: drawn anyway, each error in red where it happened, its message as the tooltip


def assert_messages_shown(root: ET.Element, sg) -> None:
    tips = tooltips(root)
    for d in sg.diagnostics:
        assert d.message in tips, f"message missing from the tooltips: {d.message}"


def test_kind_mismatch_marks_the_edge(tmp_path: Path) -> None:
    sg = analyze(load_spec(ERRORS / "kind_mismatch.yaml"))
    root = svg_of(sg, tmp_path)
    assert_messages_shown(root, sg)
    edge = edge_with_tooltip(root, "kind mismatch: features.out is FeatureMap")
    assert ERROR in strokes(edge)
    assert "✗ kind mismatch" in texts(edge)
    assert ERROR not in strokes(group(root, "block-features"))


def test_unknown_block_type_marks_the_node(tmp_path: Path) -> None:
    sg = analyze(load_spec(ERRORS / "unknown_block_type.yaml"))
    root = svg_of(sg, tmp_path)
    assert_messages_shown(root, sg)
    node = group(root, "block-backbone")
    assert ERROR in strokes(node) and "resnet51" in texts(node)
    assert "head" in texts(root)  # the rest of the spec is still drawn


def test_cycle_marks_the_closing_edge(tmp_path: Path) -> None:
    sg = analyze(load_spec(ERRORS / "cycle.yaml"))
    root = svg_of(sg, tmp_path)
    assert_messages_shown(root, sg)
    assert ERROR in strokes(edge_with_tooltip(root, "cycle in the block graph: a -> b -> c -> a"))
    assert {"a", "b", "c", "x", "y"} <= texts(root)


@pytest.mark.parametrize(
    "name", ["several_errors", "missing_connection", "output_unknown", "unknown_source_port", "mode_conflict",
             "channel_mismatch", "bad_input_type", "reserved_name", "unknown_param"],
)  # fmt: skip
def test_every_error_is_drawn_with_its_message(name: str, tmp_path: Path) -> None:
    sg = analyze(load_spec(ERRORS / f"{name}.yaml"))
    assert sg.diagnostics
    root = svg_of(sg, tmp_path)
    assert_messages_shown(root, sg)
    assert f"{len(sg.diagnostics)} error" in " ".join(texts(root))


def test_errors_without_a_node_go_in_a_note(tmp_path: Path) -> None:
    text = (
        "dagcv: 1\nname: neg\ninputs: {x: 'Embedding[B, 8]'}\nsizes: {Z: -1}\n"
        "blocks:\n  m: {type: mlp, in: x, out_features: 2}\n"
    )
    sg = analyze(parse_spec_text(text, "neg.yaml"))
    assert [d.node for d in sg.diagnostics] == [None]
    root = svg_of(sg, tmp_path)
    note = group(root, "errors")
    assert ERROR in strokes(note)
    assert any("example size of 'Z' must be positive" in t for t in texts(note))


def test_names_and_messages_are_escaped(tmp_path: Path) -> None:
    text = (
        "dagcv: 1\nname: esc\ndescription: 'a <b> & \"c\"'\ninputs: {x: 'Embedding[B, 8]'}\nblocks:\n"
        '  "a<b&c": {type: mlp, in: x}\n  m: {type: \'ml"p\\\\<x>\', in: x}\n'
    )
    sg = analyze(parse_spec_text(text, "esc.yaml"))
    root = svg_of(sg, tmp_path)  # parses as XML: nothing leaked unescaped
    seen = texts(root)
    assert "a<b&c" in seen and sg.spec.blocks["m"].type in seen and sg.spec.blocks["m"].type == 'ml"p\\\\<x>'
    assert_messages_shown(root, sg)


def test_render_file_writes_the_picture_and_returns_the_diagnostics(tmp_path: Path) -> None:
    sg = render_file(ERRORS / "kind_mismatch.yaml", tmp_path / "k.svg")
    assert sg.diagnostics and (tmp_path / "k.svg").read_bytes().startswith(b"<?xml")


# ---------------------------------------------------------------------------------------------------------------
# Writing files


def test_write_formats_and_no_temporary_files_left(tmp_path: Path) -> None:
    dot = render_spec(load_spec(ROOT / "specs/lenet_mnist.yaml"))
    assert write_rendering(dot, tmp_path / "g.dot").read_text().startswith("digraph")
    assert write_rendering(dot, tmp_path / "g.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match="use one of"):
        write_rendering(dot, tmp_path / "g.jpeg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot", "g.pdf"]


def test_missing_dot_is_a_render_error_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "g.svg"
    target.write_text("old")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(RenderError, match="install graphviz"):
        write_rendering(render_spec(load_spec(ROOT / "specs/lenet_mnist.yaml")), target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["g.svg"]


def test_short_message() -> None:
    assert short_message("shape mismatch: a gives B×3 but b expects B×4") == "shape mismatch"
    assert short_message("x" * 50).endswith("…") and len(short_message("x" * 50)) == 40


# ---------------------------------------------------------------------------------------------------------------
# depth: inner modules (imports torch) and depth 0 (does not)


def test_depth_one_draws_blocks_as_clusters_with_collapsed_children(tmp_path: Path) -> None:
    root = svg_of(load_spec(ROOT / "specs/resnet18_classifier.yaml"), tmp_path, depth=1)
    clusters = [g for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"]
    assert any(g.get("id") == "block-backbone" for g in clusters)
    seen = texts(root)
    assert {"layer1", "conv1", "fc", "backbone"} <= seen and "BasicBlock ×2" in seen
    assert "B×512×cdiv(H, 32)×cdiv(W, 32)" in seen  # block edges still attach and carry shapes


def test_depth_two_collapses_identical_runs(tmp_path: Path) -> None:
    seen = texts(svg_of(load_spec(ROOT / "specs/resnet18_classifier.yaml"), tmp_path, depth=2))
    # layer1 holds two identical BasicBlocks (one entry); layer2's first block downsamples (two entries).
    assert {"0–1", " BasicBlock ×2", "0", "1", " BasicBlock"} <= seen


def test_inner_modules_collapse_same_class_and_parameter_shapes() -> None:
    from torch import nn

    seq = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU(), nn.ReLU())
    items = inner_modules(seq, 1)
    assert [(i.name, i.cls, i.count) for i in items] == [("0–2", "Linear", 3), ("3", "Linear", 1), ("4–5", "ReLU", 2)]
    assert items[0].params == 3 * 20


def test_invalid_spec_with_depth_still_renders(tmp_path: Path) -> None:
    sg = analyze(load_spec(ERRORS / "kind_mismatch.yaml"))
    root = svg_of(sg, tmp_path, depth=1)
    assert_messages_shown(root, sg)
    assert {"conv1", "conv2", "layers"} <= texts(root)  # the healthy blocks expand


def test_depth_zero_does_not_import_torch() -> None:
    # The registry comes straight from the manifest file: a stale manifest makes the registry import the blocks
    # (and torch) by design, which is not the renderer's doing.
    probe = (
        "import json, sys\n"
        "from dagcv.registry import Contract, Registry\n"
        "from dagcv.compiler import analyze\n"
        "from dagcv.render import render_spec, write_rendering\n"
        "from dagcv.spec import load_spec\n"
        "reg = Registry()\n"
        "for c in json.load(open('blocks/manifest.json'))['blocks']:\n"
        "    reg.contracts[c['name']] = Contract.from_json(c)\n"
        "for path in sys.argv[1:]:\n"
        "    assert 'B×' in render_spec(analyze(load_spec(path), reg)).source\n"
        "assert 'torch' not in sys.modules, 'rendering at depth 0 imported torch'\n"
        "assert not any(m == 'blocks' or m.startswith('blocks.') for m in sys.modules), 'imported the blocks'\n"
    )
    specs = [str(p) for p in SPECS if p.stem != "actor_critic_cartpole"]
    run = subprocess.run([sys.executable, "-c", probe, *specs], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr


def test_tooltips_unescape_to_the_messages(tmp_path: Path) -> None:
    sg = analyze(load_spec(ERRORS / "unknown_block_type.yaml"))
    raw = write_rendering(render_spec(sg), tmp_path / "u.svg").read_text()
    assert "unknown block type 'resnet51'" in html.unescape(raw)
    assert "did you mean 'resnet50'?" in html.unescape(raw)  # the hint travels with the message
