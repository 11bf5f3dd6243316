"""The training runtime as a user relies on it: exact resume (also after SIGKILL), atomic checkpoints, DDP
equivalence, a NaN stop that names the loss, and `dagcv eval` agreeing with the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dagcv.train.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT

DIGITS = str(ROOT / "specs" / "mlp_digits.yaml")
# Dropout and a random transform make the run depend on the global RNG, which a resume must restore exactly.
RANDOM = ["blocks.classifier.dropout=0.2", "data.train.transforms=[{type: random_erasing, p: 0.5, scale: [0.02, 0.1]}]"]


def dagcv(*args: str, cwd: Path = ROOT, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=cwd, **kw)


def overrides(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def step_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if r["kind"] == "step"}


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_same_trajectory(tmp_path) -> None:
    common = overrides(*RANDOM, "train.epochs=2", "train.log_every=1", "train.checkpoint_every=7", "train.threads=1")
    straight = dagcv("train", DIGITS, *common, "--run-dir", str(tmp_path / "straight"), "-q")
    assert straight.returncode == 0, straight.stderr
    expected = step_losses(tmp_path / "straight")
    assert len(expected) == 90

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dagcv.cli", "train", DIGITS, *common, "--run-dir", str(run), "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill it mid-epoch, some steps after a checkpoint (steps 7, 14, ... are checkpointed; 45 make an epoch).
    while time.time() < deadline:
        log = run / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 31:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 0 < state["loop"]["step"] < 45 and state["loop"]["step"] % 7 == 0, state["loop"]["step"]
    # Usually it logged past its checkpoint before dying (those records must go); a kill that lands between a
    # checkpoint and the next step's record leaves none to drop, and the rest of the test still holds.
    assert len(step_losses(run)) >= state["loop"]["step"]

    resumed = dagcv("train", "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert step_losses(run) == expected  # every step, before and after the kill, bit for bit
    final = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x][-1]
    reference = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["val/accuracy"] == reference["val/accuracy"]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted in the middle of writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_ddp_two_processes_equal_one_process_on_the_same_global_batch(tmp_path) -> None:
    common = overrides("train.steps=6", "train.epochs=null", "train.threads=1", "train.eval_split=null",
                       "train.optimizer={type: sgd, lr: 0.1, momentum: 0.9}")  # fmt: skip
    single = dagcv("train", DIGITS, *common, "--set", "data.train.batch_size=32", "--run-dir", str(tmp_path / "one"),
                   "-q")  # fmt: skip
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dagcv.cli",
         "train", DIGITS, *common, "--set", "data.train.batch_size=16", "--run-dir", str(tmp_path / "two"), "-q"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert one["loop"]["step"] == two["loop"]["step"] == 6
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert not torch.equal(one["model"]["classifier.layers.0.weight"], torch.zeros(1))


def test_nan_loss_stops_with_the_loss_name_and_a_checkpoint(tmp_path) -> None:
    run = tmp_path / "nan"
    result = dagcv("train", DIGITS, *overrides("train.optimizer={type: sgd, lr: 1.0e+12}", "train.threads=1",
                   "train.eval_split=null"), "--run-dir", str(run), "-q")  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "non-finite loss 'loss'" in result.stderr and "node 'loss'" in result.stderr
    step = int(result.stderr.split("at step ")[1].split()[0])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["loop"]["step"] == step - 1  # the last good step
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_eval_of_the_final_checkpoint_matches_the_run(tmp_path) -> None:
    run = tmp_path / "run"
    trained = dagcv("train", DIGITS, *overrides("train.epochs=2", "train.threads=1"), "--run-dir", str(run), "--json")
    assert trained.returncode == 0, trained.stderr
    last = json.loads(trained.stdout.strip().splitlines()[-1])
    evaluated = dagcv("eval", DIGITS, "--ckpt", str(run / "checkpoints" / "last.pt"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["accuracy"] == last["val/accuracy"] and metrics["f1"] == last["val/f1"]
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "env.json", "metrics.csv", "metrics.jsonl", "plots", "spec.resolved.yaml",
    ]  # fmt: skip
    assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "env.json").read_text())["torch"] == torch.__version__
    assert "dropout: 0.0" in (run / "spec.resolved.yaml").read_text()
    # The same checkpoint on a changed model: the differences in a few lines, exit 2, no traceback.
    other = dagcv("eval", DIGITS, "--ckpt", str(run / "checkpoints" / "last.pt"),
                  "--set", "blocks.classifier.hidden=[128, 32, 16]")  # fmt: skip
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    assert "does not fit the model of" in other.stderr
    assert "unexpected in the checkpoint" not in other.stderr and "missing in the checkpoint: classifier (2 keys)" in (
        other.stderr
    )
    assert "shapes differ: classifier.layers.1.weight is 64×128 in the checkpoint, 32×128 here" in other.stderr
    not_a_checkpoint = dagcv("eval", DIGITS, "--ckpt", DIGITS)
    assert not_a_checkpoint.returncode == 2 and "is not a torch checkpoint" in not_a_checkpoint.stderr


def test_unknown_override_path_is_a_spec_error() -> None:
    result = dagcv("train", DIGITS, "--set", "train.optimiser.lr=0.1")
    assert result.returncode == 2
    assert result.stderr.startswith("--set #1:1:7: error: unknown key 'optimiser' in train")
    assert "did you mean 'optimizer'" in result.stderr


def test_missing_dataset_files_name_the_path(tmp_path) -> None:
    result = dagcv("train", str(ROOT / "specs" / "lenet_cifar10.yaml"), "--set", f"data.train.dataset.root={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(tmp_path) in result.stderr and "download" in result.stderr
