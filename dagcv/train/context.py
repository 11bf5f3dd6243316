"""The run context: everything a training loop must not re-implement.

A loop (``dagcv/train/loops/``) gets one :class:`RunContext`. It owns

- the run directory (``runs/<name>/<timestamp>/`` by default) and what is written there once: the resolved spec
  and ``env.json`` (versions, seed, device, command line);
- seeding (Python, NumPy, torch) before the model is built, and the RNG states in every checkpoint;
- the device and, under ``torchrun``, the process group;
- logging: ``log(record)`` appends to ``metrics.jsonl``, keeps ``metrics.csv`` (summary records), feeds
  TensorBoard, and prints a JSON line per summary with ``--json``; ``finish()`` draws the plots;
- checkpoints: ``save(state)`` writes ``checkpoints/last.pt`` atomically with the model and RNG states added,
  ``restore()`` reads them back and drops log records written after them;
- the NaN guard (:func:`check_finite`) and early stopping (:class:`EarlyStopping`) as services.

A loop declares its own clock and state; it calls these services and never writes a file itself.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dagcv import __version__
from dagcv.files import read_jsonl, write_text_atomically
from dagcv.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

SUMMARY = ("epoch", "rollout", "eval")  # record kinds that go into metrics.csv and --json output


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops after saving the last good state."""

    def __init__(self, losses: dict[str, float], step: int) -> None:
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        names = ", ".join(f"'{k}' = {v}" for k, v in bad.items()) or ", ".join(losses)
        super().__init__(f"loss {names} at step {step}")
        self.losses, self.step = bad, step


class TrainingDiverged(RuntimeError):
    """The run stopped on a NaN/inf loss (a checkpoint of the last good state was saved)."""


def check_finite(losses: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """The NaN guard: raises :class:`NonFiniteLoss` naming every loss that is not finite; returns their values."""
    values = {k: float(v.detach()) for k, v in losses.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLoss(values, step)
    return values


@dataclass
class Options:
    """How to run, as opposed to what to train (that is the spec)."""

    runs_root: Path = Path("runs")
    run_dir: Path | None = None
    quiet: bool = False
    json_lines: bool = False
    tensorboard: bool = False
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]  # summary records (one per epoch, per rollout, ...)
    stopped_early: bool = False
    main_process: bool = True  # False on DDP ranks other than 0, which print nothing

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


# ---------------------------------------------------------------------------------------------------------------
# Distributed set-up (torchrun sets the environment)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    """Leave the process group cleanly: a gloo group torn down at interpreter exit can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _broadcast(value: Any, d: Dist) -> Any:
    if d.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------


class EarlyStopping:
    """Stop when a metric has not improved by ``min_delta`` for ``patience`` evaluations."""

    def __init__(self, *, mode: str, patience: int, min_delta: float = 0.0) -> None:
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best: float | None = None
        self.bad = 0

    def update(self, value: float) -> tuple[bool, bool]:
        """(improved, stop) after one more evaluation."""
        better = self.best is None or (
            value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        )
        if better:
            self.best, self.bad = value, 0
            return True, False
        self.bad += 1
        return False, self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state["best"], state["bad"]


class RunContext:
    """The services every loop shares: run directory, seeding, device, DDP, logging, checkpoints, plots."""

    def __init__(
        self,
        name: str,
        options: Options,
        *,
        seed: int,
        threads: int | None = None,
        device: str = "auto",
        run_dir: Path | None = None,
    ) -> None:
        self.name, self.options, self.seed = name, options, seed
        self.dist = init_distributed()
        # Seed before anything is built: parameter initialisation draws from the global RNG.
        seed_everything(seed)
        if threads:
            torch.set_num_threads(threads)
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", self.dist.local_rank) if use_cuda else torch.device("cpu")
        self.resuming = run_dir is not None
        self.run_dir = run_dir or self._new_run_dir()
        self.history: list[dict[str, Any]] = []
        self.tb = self._tensorboard()

    @property
    def main(self) -> bool:
        return self.dist.main

    # -- the run directory ------------------------------------------------------------------------------------

    def _new_run_dir(self) -> Path:
        path = self.options.run_dir
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = self.options.runs_root / self.name / stamp
            n = 1
            while path.exists():
                path = self.options.runs_root / self.name / f"{stamp}-{n}"
                n += 1
        return Path(_broadcast(str(path), self.dist))

    def write_header(self, resolved_spec: str) -> None:
        """The resolved spec and ``env.json``, written once when a run starts (not when it resumes)."""
        if not self.main or self.resuming:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.run_dir / "spec.resolved.yaml", resolved_spec)
        write_text_atomically(self.run_dir / "env.json", json.dumps(self._environment(), indent=1) + "\n")

    def _environment(self) -> dict[str, Any]:
        import torchvision

        return {
            "dagcv": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "platform": platform.platform(),
            "seed": self.seed,
            "device": str(self.device),
            "world_size": self.dist.world,
            "threads": torch.get_num_threads(),
            "argv": self.options.argv,
            "started": datetime.now().isoformat(timespec="seconds"),
        }

    def _tensorboard(self) -> Any:
        if not (self.options.tensorboard and self.main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("dagcv: tensorboard is not installed; skipping TensorBoard logs", file=sys.stderr)
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- logging ----------------------------------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        """Append a record (``{"kind": ..., "step": ..., ...}``) to ``metrics.jsonl`` and the other sinks."""
        if record["kind"] in SUMMARY:
            self.history.append(record)
        if not self.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.tb.add_scalar(key, value, record["step"])
        if record["kind"] in SUMMARY:
            self._write_csv()
            if self.options.json_lines:
                print(json.dumps(record), flush=True)

    def _write_csv(self) -> None:
        rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in self.history]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def progress(self, total: int, done: int = 0, unit: str = "step") -> Any:
        from dagcv.train.progress import Progress

        enabled = self.main and not (self.options.quiet or self.options.json_lines)
        return Progress(enabled=enabled, total=total, done=done, unit=unit)

    # -- checkpoints ------------------------------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self, model: torch.nn.Module, loop_state: dict[str, Any], name: str = "last.pt") -> None:
        """Write the model, the loop's state and every RNG state, atomically (rank 0 only)."""
        if self.main:
            state = {"model": model.state_dict(), "loop": loop_state, "rng": rng_state(), "dagcv": __version__}
            save_checkpoint(self.ckpt_dir / name, state)

    def restore(self, model: torch.nn.Module) -> dict[str, Any]:
        """Load ``last.pt`` into ``model`` and the RNGs; returns the loop's state."""
        state = load_checkpoint(self.ckpt_dir / "last.pt")
        model.load_state_dict(state["model"], strict=True)
        set_rng_state(state["rng"])
        return state["loop"]

    def truncate_logs(self, step: int, clock: str = "step") -> None:
        """Drop log records written after the checkpoint (a killed run may have logged past it)."""
        path = self.run_dir / "metrics.jsonl"
        kept = [record for record in read_jsonl(path) if record[clock] <= step]  # without a line cut by the kill
        if self.main and path.exists():
            write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))  # as log() wrote them
        self.history = [record for record in kept if record["kind"] in SUMMARY]

    def save_images(self, name: str, images: torch.Tensor) -> None:
        """Samples a generative loop draws as ``plots/<name>`` (rank 0): a grid of images in ``[0, 1]``, or a
        scatter plot of 2-D points."""
        if self.main:
            from dagcv.train.sampling import save_samples

            save_samples(images, self.run_dir / "plots" / name)

    def finish(self) -> None:
        """Close TensorBoard and draw the plots (rank 0)."""
        if self.tb is not None:
            self.tb.close()
        if self.main:
            from dagcv.train.plots import write_plots

            write_plots(self.run_dir, self.name)
