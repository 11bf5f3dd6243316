"""The command line as a user meets it: exit codes, files written, and nothing half-written on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SPECS


def dagcv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=cwd)


# Runs `dagcv check` on the files given and fails if it imported torch, torchvision, torchmetrics or the blocks.
CHECK_WITHOUT_TORCH = (
    "import sys; from dagcv.cli import main\n"
    "try:\n    main(['check', *sys.argv[1:]])\n"
    "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'torchmetrics', 'blocks')]\n"
    "assert not bad, f'dagcv check imported {bad[:5]}'\n"
)


def check_without_torch(*specs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_TORCH, *map(str, specs)], capture_output=True, text=True, cwd=ROOT
    )


def test_check_every_shipped_spec_without_importing_torch() -> None:
    run = check_without_torch(*SPECS)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok: ")


def test_check_never_imports_torch_whatever_the_spec_uses(tmp_path) -> None:
    # COCO mAP with early stopping on one of its sub-metrics, detection blocks, an env and a policy, all in one file.
    detection = (ROOT / "specs" / "retinanet_r18_shapes.yaml").read_text()
    detection = detection.replace(
        "metrics: [{type: map", "early_stopping: {metric: val/map_50}\n  metrics: [{type: map"
    )
    specs = [tmp_path / "det.yaml", tmp_path / "rl.yaml"]
    specs[0].write_text(detection)
    specs[1].write_text((ROOT / "specs" / "actor_critic_cartpole.yaml").read_text())
    run = check_without_torch(*specs)
    assert run.returncode == 0, run.stderr


def test_compile_writes_resolved_spec_model_and_summary(tmp_path) -> None:
    out = tmp_path / "out"
    run = dagcv("compile", "specs/lenet_mnist.yaml", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["graph.svg", "model.py", "spec.resolved.yaml", "summary.md"]
    assert "<svg" in (out / "graph.svg").read_text() and "classifier" in (out / "graph.svg").read_text()
    assert "classifier" in run.stdout and "44,426" in run.stdout  # the printed table, with the total
    resolved = (out / "spec.resolved.yaml").read_text()
    assert "in_features: 256  # inferred: prod(F)" in resolved and "dropout: 0.0" in resolved
    # The resolved spec is itself a valid spec that compiles to the same thing.
    again = dagcv("compile", str(out / "spec.resolved.yaml"), "-o", str(tmp_path / "again"), "-q")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "model.py").read_text().split('"""', 2)[2] == (out / "model.py").read_text().split(
        '"""', 2
    )[2]
    summary = (out / "summary.md").read_text()
    assert "| classifier | mlp_head | both | Logits B×10 = 2×10 | 41,854 |" in summary


def test_invalid_spec_exits_2_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "out"
    run = dagcv("compile", "tests/golden/errors/kind_mismatch.yaml", "-o", str(out))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and ":9:44: error: kind mismatch" in run.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_failed_recompile_keeps_previous_output(tmp_path) -> None:
    out = tmp_path / "out"
    assert dagcv("compile", "specs/lenet_mnist.yaml", "-o", str(out), "-q").returncode == 0
    before = {p.name: p.read_text() for p in out.iterdir()}
    assert dagcv("compile", "tests/golden/errors/cycle.yaml", "-o", str(out), "-q").returncode == 2
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_file_is_a_spec_error(tmp_path) -> None:
    run = dagcv("check", str(tmp_path / "nope.yaml"))
    assert run.returncode == 2 and "no such spec file" in run.stderr and "Traceback" not in run.stderr


def test_blocks_lists_families_and_shows_one() -> None:
    listing = dagcv("blocks")
    assert listing.returncode == 0
    assert "backbone:" in listing.stdout and "resnet50" in listing.stdout and "cartpole" in listing.stdout
    one = dagcv("blocks", "mlp_head")
    assert one.returncode == 0
    assert "class: blocks.heads.MLPHead" in one.stdout and "file:  blocks/heads.py:" in one.stdout
    assert "num_classes: int > 0 (required)" in one.stdout and "in_features" in one.stdout
    data = json.loads(dagcv("blocks", "--json").stdout)
    assert {b["name"] for b in data} >= {"lenet_features", "resnet18", "vector_quantizer"}
    unknown = dagcv("blocks", "resnet51")
    assert unknown.returncode == 2 and "did you mean 'resnet50'" in unknown.stderr


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_compiles_and_its_resolved_spec_too(spec) -> None:
    from dagcv.compiler import compile_file, compile_spec
    from dagcv.spec import parse_spec_text

    files = compile_file(spec).files()
    again = compile_spec(parse_spec_text(files["spec.resolved.yaml"], "resolved.yaml")).files()
    assert again["model.py"].split('"""', 2)[2] == files["model.py"].split('"""', 2)[2]
    assert again["summary.md"].split("\n", 3)[3] == files["summary.md"].split("\n", 3)[3]
