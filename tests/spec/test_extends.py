"""Variant specs (``extends:``), ``dagcv diff`` and ``--set`` on every command that reads a spec."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

from dagcv.compiler import check_spec
from dagcv.errors import SpecError
from dagcv.spec import diff as diff_module
from dagcv.spec import extends as extends_module
from dagcv.spec import load_spec
from dagcv.spec.diff import spec_diff
from dagcv.sweep import points as points_module
from dagcv.sweep import report as report_module
from tests.conftest import ROOT

BASE = """\
dagcv: 1
name: base
inputs:
  image: Image[B, 1, 8, 8]
  label: Labels[B]
blocks:
  features: {type: lenet_features, in: image}
  classifier: {type: mlp_head, in: features, hidden: [32], num_classes: 10}
  loss: {type: cross_entropy, in: {logits: classifier, target: label}}
outputs:
  logits: classifier
  loss: loss
"""


def dagcv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("module", [diff_module, extends_module, points_module, report_module])
def test_docstring_examples_run(module, at_root: Path) -> None:
    assert doctest.testmod(module).failed == 0


def test_a_variant_merges_swaps_replaces_and_removes(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nname: mid\nblocks:\n  classifier: {hidden: [64, 32]}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: mid.yaml\n"
        "name: child\n"
        "blocks:\n"
        "  features: {type: tiny_convnet, width: 8}\n"  # a swap: keeps `in: image`
        "  classifier: {type: mlp_head, in: features.c5, num_classes: 10, replace: true}\n"
        "outputs:\n"
        "  logits: {remove: true}\n"
    )
    spec = load_spec(tmp_path / "child.yaml")
    assert spec.name == "child" and list(spec.outputs) == ["loss"]
    assert spec.blocks["features"].type == "tiny_convnet" and spec.blocks["features"].inputs == "image"
    assert spec.blocks["features"].params == {"width": 8}
    assert spec.blocks["classifier"].params == {"num_classes": 10}  # replaced whole: mid's hidden is gone
    mid = load_spec(tmp_path / "mid.yaml")
    assert mid.blocks["classifier"].params == {"hidden": [64, 32], "num_classes": 10}  # merged
    check_spec(spec)


def test_errors_point_at_the_file_that_wrote_the_value(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE.replace("num_classes: 10", "num_classes: 0"))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nblocks:\n  features: {type: lenet_featurs}\n")
    with pytest.raises(SpecError) as info:
        check_spec(load_spec(tmp_path / "child.yaml"))
    where = {(Path(d.span.file).name, d.span.line) for d in info.value.diagnostics}
    assert ("child.yaml", 3) in where and ("base.yaml", 8) in where, info.value.format()
    text = info.value.format()
    assert "did you mean 'lenet_features'?" in text and "num_classes: 0" in text  # excerpts from both files


@pytest.mark.parametrize(
    ("child", "message"),
    [
        ("extends: child.yaml\n", "`extends` makes a cycle: child.yaml → child.yaml"),
        ("extends: missing.yaml\n", "no such spec file"),
        ("extends: base.yaml\nblocks:\n  nothing: {remove: true}\n", "'blocks.nothing' is not in the base spec"),
        ("extends: [base.yaml]\n", "`extends` takes the path of a spec file"),
        ('extends: "a\\0b.yaml"\n', "`extends` names no usable path"),  # found by the fuzzer: a NUL byte
        ("extends: " + "a" * 5000 + ".yaml\n", "`extends` names no usable path"),  # and a name too long
    ],
)
def test_bad_extends_is_a_positioned_error(tmp_path: Path, child: str, message: str) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text(child)
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "child.yaml")
    d = info.value.diagnostics[0]
    assert message in d.message and d.span is not None and d.span.file.endswith("child.yaml"), info.value.format()


def test_the_shipped_variant_equals_its_dsl_twin_and_differs_from_its_base_as_written() -> None:
    yaml_spec = load_spec(ROOT / "specs" / "variants" / "retinanet_r34_shapes.yaml")
    dsl_spec = load_spec(ROOT / "specs" / "variants" / "retinanet_r34_shapes.dagcv")
    assert spec_diff(yaml_spec, dsl_spec) == {}
    base = load_spec(ROOT / "specs" / "retinanet_r18_shapes.yaml")
    diff = spec_diff(base, yaml_spec)
    assert diff["blocks"] == ["backbone.type: resnet18 → resnet34", "loss.focal_gamma: (absent) → 1.0"]
    assert diff["train"] == ["epochs: 20 → 10"]
    check_spec(yaml_spec)


def test_diff_and_fmt_resolved_on_the_command_line() -> None:
    run = dagcv("diff", "specs/lenet_mnist.yaml", "specs/lenet_mnist.yaml", "--set", "train.epochs=3")
    assert run.returncode == 1 and run.stdout == "train:\n  epochs: 12 → 3\n", run.stdout + run.stderr
    assert dagcv("diff", "specs/lenet_mnist.yaml", "specs/lenet_mnist.dagcv").returncode == 0
    point = "studies/backbone_ablation.yaml#backbone=resnet18,seed=0"
    run = dagcv("diff", "studies/backbone_ablation.yaml#backbone=lenet,seed=0", point)
    assert "features.type: lenet_features → resnet18" in run.stdout and "classifier.in: features → features.c5" in (
        run.stdout
    )
    resolved = dagcv("fmt", "--resolved", "specs/variants/retinanet_r34_shapes.yaml")
    assert resolved.returncode == 0 and "backbone:  {type: resnet34, in: transform.images}" in resolved.stdout
    assert "extends" not in resolved.stdout
    kept = dagcv("fmt", "--check", "specs/variants/retinanet_r34_shapes.yaml")
    assert kept.returncode == 0 and "left as written" in kept.stderr


def test_set_works_on_check_compile_and_render(tmp_path: Path) -> None:
    swap = ["--set", "blocks.features={type: resnet18}", "--set", "blocks.classifier.in=features.c5"]
    assert dagcv("check", "specs/lenet_mnist.yaml", *swap).returncode == 0
    out = tmp_path / "build"
    run = dagcv("compile", "specs/lenet_mnist.yaml", "-q", "-o", str(out), *swap)
    assert run.returncode == 0, run.stderr
    assert "type: resnet18" in (out / "spec.resolved.yaml").read_text()
    svg = tmp_path / "g.dot"
    assert dagcv("render", "specs/lenet_mnist.yaml", "-o", str(svg), *swap).returncode == 0
    assert "resnet18" in svg.read_text()
    bad = dagcv("check", "specs/lenet_mnist.yaml", "--set", "blocks.features={type: resnet81}")
    assert bad.returncode == 2 and "--set #1:1:17: error: unknown block type 'resnet81'" in bad.stderr
    assert "did you mean 'resnet18'?" in bad.stderr
