"""Studies: expansion against hand-written point lists, errors at the sweep file's lines, stable hashes, a sweep
killed and resumed that ends exactly like an uninterrupted one, and the report's statistics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

from dagcv.errors import SpecError
from dagcv.sweep.points import load_sweep
from tests.conftest import ROOT

DIGITS = ROOT / "specs" / "mlp_digits.yaml"


def dagcv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=cwd)


def write_sweep(tmp_path: Path, body: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"sweep: 1\nbase: {DIGITS}\n{body}")
    return path


GRID = """\
axes:
  width: {at: blocks.classifier.hidden, values: [[32], [64, 32]]}
  lr: {at: train.optimizer.lr, values: [0.01, 0.003], zip_with: warmup}
  warmup: {at: train.optimizer.weight_decay, values: [0.0, 0.001]}
  act: {variants: {a: {}, b: {train.epochs: 1}}}
seeds: [0, 7]
exclude: [{width: "[32]", act: b}]
baseline: {width: "[64, 32]", lr: 0.003}
metric: {name: val/accuracy}
"""


def test_expansion_crosses_groups_zips_axes_excludes_and_repeats_seeds(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    names = [p.name for p in sweep.points()]
    expected = []
    for width in ("[32]", "[64, 32]"):
        for lr, wd in (("0.01", "0.0"), ("0.003", "0.001")):  # zipped: two pairs, not four combinations
            for act in ("a", "b"):
                if width == "[32]" and act == "b":
                    continue
                expected += [f"width={width},lr={lr},warmup={wd},act={act},seed={s}" for s in (0, 7)]
    assert names == expected
    spec = sweep.spec(sweep.points()[-1])
    assert spec.blocks["classifier"].params["hidden"] == [64, 32]
    assert spec.train["optimizer"]["lr"] == 0.003 and spec.train["optimizer"]["weight_decay"] == 0.001
    assert spec.train["epochs"] == 1 and spec.train["seed"] == 7
    assert sweep.with_zipped({"lr": "0.01"}) == {"lr": "0.01", "warmup": "0.0"}


@pytest.mark.parametrize(
    ("body", "where", "message", "hint"),
    [
        ("axes:\n  w: {at: blocks.clasifier.hidden, values: [[8]]}\n", 4, "unknown key 'clasifier' in blocks",
         "did you mean 'classifier'?"),
        ("axes:\n  w: {at: train.optimizer.lr, values: [0.1], zip_with: x}\n", 4, "zips with unknown axis 'x'", None),
        ("axes:\n  w: {at: train.optimizer.lr, values: [0.1, 0.2]}\nexclude: [{w: 0.3}]\n", 5,
         "axis 'w' has no value 0.3", None),
        ("axes:\n  w: {at: train.optimizer.lr, values: [0.1]}\nbaseline: {v: 0.1}\n", 5, "unknown axis 'v'",
         "axes: w"),
        ("axes:\n  w: {at: train.optimizer.lr, valuse: [0.1]}\n", 4, "unknown key 'valuse'", "did you mean 'values'?"),
        ("axes:\n  a: {at: train.seed, values: [" + ", ".join(map(str, range(101))) + "]}\n"
         "  b: {at: train.epochs, values: [" + ", ".join(map(str, range(1, 101))) + "]}\n", 3,
         "the study has 10,100 points", "zip axes"),
    ],
)  # fmt: skip
def test_a_bad_sweep_is_an_error_at_its_line(tmp_path: Path, body: str, where: int, message: str, hint) -> None:
    path = write_sweep(tmp_path, body + "metric: {name: val/accuracy}\n")
    with pytest.raises(SpecError) as info:
        sweep = load_sweep(path)
        for point in sweep.points():
            sweep.spec(point)
    d = info.value.diagnostics[0]
    assert d.span is not None and d.span.file == str(path) and d.span.line == where, info.value.format()
    assert message in d.message and (hint is None or hint in (d.hint or "")), info.value.format()


@pytest.mark.parametrize("base", ['"a\\0b.yaml"', "a" * 5000])
def test_a_base_that_is_no_usable_path_is_an_error_at_its_line(tmp_path: Path, base: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"sweep: 1\nbase: {base}\naxes: {{a: {{at: name, values: [x]}}}}\nmetric: {{name: m}}\n")
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    d = info.value.diagnostics[0]
    assert "`base` names no usable path" in d.message and d.span.line == 2, info.value.format()


def test_plan_names_an_invalid_point_with_its_error_and_trains_nothing(tmp_path: Path) -> None:
    body = (
        "axes:\n  head: {at: blocks.classifier, variants: {ok: {type: mlp_head, num_classes: 10},"
        " bad: {type: mlp_haed}}}\nmetric: {name: val/accuracy}\n"
    )
    path = write_sweep(tmp_path, body)
    out = tmp_path / "out"
    result = dagcv("sweep", "run", str(path), "--out", str(out), "-q")
    assert result.returncode == 2, result.stderr
    assert "point head=bad,seed=0 is invalid" in result.stderr
    assert f"{path}:4:" in result.stderr and "did you mean 'mlp_head'?" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "runs").exists()


def test_point_hashes_are_stable_across_processes_and_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    hashes = []
    for folder in (a, b):
        path = write_sweep(folder, GRID)
        code = (
            "import sys; from dagcv.sweep.points import load_sweep; s = load_sweep(sys.argv[1]);"
            "print(' '.join(s.resolve(p)[1] for p in s.points()))"
        )
        env = {**os.environ, "PYTHONHASHSEED": str(len(hashes) + 1)}
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                              cwd=folder, check=True)  # fmt: skip
        hashes.append(done.stdout.split())
    assert hashes[0] == hashes[1] and len(set(hashes[0])) == len(hashes[0]) == 12
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    assert sweep.resolve(sweep.points()[0])[1] == hashes[0][0]


# ---------------------------------------------------------------------------------------------------------------
# Running, killing, resuming


KILLABLE = """\
set: {train.epochs: 12, train.log_every: 5}
axes:
  lr: {at: train.optimizer.lr, values: [0.002, 0.01]}
seeds: [0, 1]
baseline: {lr: 0.002}
metric: {name: val/accuracy}
executor: {workers: 1, threads: 1}
"""


def _results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))}


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_results_of_an_uninterrupted_one(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, KILLABLE)
    reference = tmp_path / "reference"
    assert dagcv("sweep", "run", str(path), "--out", str(reference), "-q").returncode == 0
    expected = _results(reference)
    assert len(expected) == 4 and all(r["status"] == "done" for r in expected.values())

    killed = tmp_path / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "dagcv.cli", "sweep", "run", str(path), "--out", str(killed),
                               "-q"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    # Kill once a point is finished and the next one has a checkpoint but no result: mid-training.
    while time.monotonic() < deadline:
        runs = sorted((killed / "runs").glob("*")) if (killed / "runs").exists() else []
        done = [r for r in runs if (r / "result.json").exists()]
        mid = [r for r in runs if (r / "checkpoints" / "last.pt").exists() and not (r / "result.json").exists()]
        if done and mid:
            break
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert done and mid, "the sweep ended before it could be killed mid-point"
    time.sleep(1.0)  # the worker dies with its driver (PR_SET_PDEATHSIG)
    finished = {r.name: (r / "result.json").stat().st_mtime_ns for r in done}
    status = dagcv("sweep", "status", str(killed))
    assert "interrupted" in status.stdout and "done" in status.stdout, status.stdout

    resumed = dagcv("sweep", "resume", str(killed), "-q")
    assert resumed.returncode == 0, resumed.stderr
    results = _results(killed)
    assert {k: r["final"] for k, r in results.items()} == {k: r["final"] for k, r in expected.items()}
    assert {r.name: (r / "result.json").stat().st_mtime_ns for r in done} == finished  # nothing finished redone
    records = [json.loads(x) for x in (mid[0] / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    assert epochs == list(range(1, 13)), epochs  # resumed from the checkpoint: each epoch logged once

    again = dagcv("sweep", "run", str(path), "--out", str(killed), "-q")
    assert again.returncode == 0 and "4 done" in again.stdout
    assert {r.name: (r / "result.json").stat().st_mtime_ns for r in done} == finished

    report = dagcv("sweep", "report", str(killed))
    assert report.returncode == 0, report.stderr
    assert (killed / "report.md").exists() and (killed / "report.csv").exists()
    assert (killed / "plots" / "lr.png").exists() and (killed / "plots" / "curves.png").exists()


def test_report_statistics_and_paired_differences(tmp_path: Path) -> None:
    from dagcv.sweep.plan import PlannedPoint
    from dagcv.sweep.report import collect, markdown, tables
    from dagcv.sweep.run import RESULT, SweepDir

    sweep = load_sweep(write_sweep(tmp_path, KILLABLE.replace("seeds: [0, 1]", "seeds: [0, 1, 2]")))
    sdir = SweepDir(tmp_path / "out")
    planned = []
    values = {("0.002", 0): 0.90, ("0.002", 1): 0.92, ("0.002", 2): 0.91,
              ("0.01", 0): 0.95, ("0.01", 1): 0.93, ("0.01", 2): 0.97}  # fmt: skip
    for point in sweep.points():
        pp = PlannedPoint(point, hash=sweep.resolve(point)[1], params=100, flops=200)
        planned.append(pp)
        run = sdir.run_dir(pp)
        run.mkdir(parents=True)
        if (point.label("lr"), point.seed) == ("0.01", 2):
            (run / RESULT).write_text(json.dumps({"status": "failed", "error": "ValueError: boom"}))
            continue
        final = {"val/accuracy": values[(point.label("lr"), point.seed)]}
        (run / RESULT).write_text(json.dumps({"status": "done", "final": final, "wall_s": 1.0}))
    data = collect(sweep, sdir, planned)
    rows = {r.name: r for r in tables(sweep, data)["lr"]}
    assert rows["0.002"].baseline and rows["0.01"].diffs == pytest.approx([0.05, 0.01])
    cells = rows["0.01"].cells()
    half = stats.t.ppf(0.975, 1) * stats.tstd([0.05, 0.01]) / 2**0.5
    assert cells["Δ baseline (95% CI)"] == f"+0.0300 [{0.03 - half:+.4f}, {0.03 + half:+.4f}]"
    assert cells["mean ± std"] == f"0.9400 ± {stats.tstd([0.95, 0.93]):.4f}" and cells["status"] == "2 done, 1 failed"
    text = markdown(sweep, data)
    assert "`lr=0.01,seed=2`: **failed**: ValueError: boom" in text


def test_a_variant_spec_can_be_the_base_and_seeds_point_at_their_own_values(tmp_path: Path) -> None:
    base = ROOT / "specs" / "variants" / "retinanet_r34_shapes.yaml"
    path = tmp_path / "s.yaml"
    path.write_text(f"sweep: 1\nbase: {base}\naxes:\n  g: {{at: blocks.loss.focal_gamma, values: [0.0, 2.0]}}\n"
                    "seeds: [3, 4]\nmetric: {name: val/map_50}\n")  # fmt: skip
    sweep = load_sweep(path)
    spec = sweep.spec(sweep.points()[-1])
    assert spec.blocks["backbone"].type == "resnet34" and spec.blocks["loss"].params["focal_gamma"] == 2.0
    assert spec.train["seed"] == 4 and spec.train["epochs"] == 10
    seed = spec.source.value("train", "seed")
    assert seed.file == str(path) and (seed.line, seed.col) == (5, 12)  # the 4 in `seeds: [3, 4]`
