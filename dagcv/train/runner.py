"""The training runner: epochs of steps, evaluation, metrics, checkpoints, resume, early stopping, DDP.

A run lives in a run directory (``runs/<name>/<timestamp>/`` by default)::

    spec.resolved.yaml   the spec as trained (overrides applied, every default and inferred value spelled out)
    env.json             versions, seed, device, command line
    metrics.jsonl        one record per logged step ("kind": "step") and per epoch ("kind": "epoch")
    metrics.csv          the epoch records as a table
    checkpoints/last.pt  the latest state (atomic); best.pt when early stopping tracks a metric
    plots/*.png          loss and metric curves, written at the end

``train_spec`` starts a run, ``resume_run`` continues one from its last checkpoint with the same trajectory
as if it had never stopped, and ``evaluate_checkpoint`` computes the metrics of a checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dagcv import __version__
from dagcv.compiler import Compiled, compile_spec
from dagcv.errors import SpecError
from dagcv.files import write_text_atomically
from dagcv.spec import Spec, load_spec
from dagcv.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, state_dict_mismatch
from dagcv.train.config import TrainConfig
from dagcv.train.data import SplitLoader, batch_size, build_dataset, move_to
from dagcv.train.loops import NonFiniteLoss, SupervisedLoop, make_groups
from dagcv.train.metrics import make_metric, results
from dagcv.train.plan import TrainingPlan


class TrainingDiverged(RuntimeError):
    """The run stopped on a NaN/inf loss (a checkpoint of the last good state was saved)."""


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
    history: list[dict[str, Any]]  # epoch records
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


# ---------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(cfg: TrainConfig, d: Dist) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


class Trainer:
    """One training run over a compiled spec."""

    def __init__(self, spec: Spec, options: Options, *, run_dir: Path | None = None) -> None:
        self.options = options
        self.dist = init_distributed()
        self.spec = spec
        train = spec.train
        if train is None:
            raise SpecError.at(spec.source.key(), "the spec has no `train:` section", hint="see docs/design.md")
        # Seed before building: parameter initialisation draws from the global RNG.
        seed_everything(int(train.get("seed", 0)) if isinstance(train, dict) else 0)
        self.compiled: Compiled = compile_spec(spec)
        sg = self.compiled.built.sg
        self.plan: TrainingPlan = sg.training  # type: ignore[attr-defined]
        self.cfg: TrainConfig = self.plan.train  # type: ignore[assignment]
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = _device(self.cfg, self.dist)
        self.model = self.compiled.module.to(self.device)
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_loader = self._loader(self.cfg.train_split, train=True)
        self.eval_loader = self._loader(self.cfg.eval_split, train=False) if self._has_eval() else None
        per_epoch = len(self.train_loader)
        if per_epoch == 0:
            raise SpecError.at(
                spec.source.key("data", self.cfg.train_split),
                "the training split yields no batch",
                hint="fewer samples than batch_size with drop_last?",
            )
        self.epochs = self.cfg.epochs or math.ceil(self.cfg.steps / per_epoch)  # type: ignore[operator]
        self.total_steps = self.cfg.steps or self.epochs * per_epoch
        self.groups = make_groups(self.model, self.cfg, self.plan.loss_outputs, self.total_steps)
        self.loop = SupervisedLoop(
            self.net, self.groups, grad_clip=self.cfg.grad_clip, amp=self.cfg.amp, device=self.device
        )
        self.metrics = {m.key: make_metric(m, sg).to(self.device) for m in self.cfg.metrics}
        # Where the run stands.
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best: float | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.last_losses: dict[str, float] = {}
        self.run_dir = run_dir or self._new_run_dir()
        self.tb = self._tensorboard()

    # -- set-up helpers ---------------------------------------------------------------------------------------

    def _has_eval(self) -> bool:
        return self.cfg.eval_split is not None and self.cfg.eval_split in self.plan.data

    def _loader(self, split: str, *, train: bool) -> SplitLoader:
        cfg = self.plan.data[split]
        try:
            dataset = build_dataset(self.compiled.built.sg, cfg)
        except (FileNotFoundError, ValueError) as exc:
            span = self.spec.source.value("data", split, "dataset")
            raise SpecError.at(
                span,
                f"data.{split}: {exc}",
                hint="dataset paths are relative to the working directory; nothing is downloaded (`download: false`)",
            ) from None
        return SplitLoader(
            dataset,
            cfg,
            self.plan.fields[split],
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world=self.dist.world,
            train=train,
        )

    def _new_run_dir(self) -> Path:
        path = self.options.run_dir
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = self.options.runs_root / self.spec.name / stamp
            n = 1
            while path.exists():
                path = self.options.runs_root / self.spec.name / f"{stamp}-{n}"
                n += 1
        path = Path(_broadcast(str(path), self.dist))
        if self.dist.main:
            path.mkdir(parents=True, exist_ok=True)
            (path / "spec.resolved.yaml").write_text(self.compiled.files()["spec.resolved.yaml"])
            (path / "env.json").write_text(json.dumps(self._environment(), indent=1) + "\n")
        return path

    def _environment(self) -> dict[str, Any]:
        import torchvision

        return {
            "dagcv": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "platform": platform.platform(),
            "seed": self.cfg.seed,
            "device": str(self.device),
            "world_size": self.dist.world,
            "threads": torch.get_num_threads(),
            "argv": self.options.argv,
            "started": datetime.now().isoformat(timespec="seconds"),
        }

    def _tensorboard(self) -> Any:
        if not (self.options.tensorboard and self.dist.main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("dagcv: tensorboard is not installed; skipping TensorBoard logs", file=sys.stderr)
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- checkpoints ------------------------------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loop": self.loop.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "dagcv": __version__,
        }

    def save(self, name: str = "last.pt") -> None:
        if self.dist.main:
            save_checkpoint(self.ckpt_dir / name, self.state_dict())

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.loop.load_state_dict(state["loop"])
        set_rng_state(state["rng"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self._truncate_logs()

    def _truncate_logs(self) -> None:
        """Drop log records written after the checkpoint (a killed run may have logged past it)."""
        path = self.run_dir / "metrics.jsonl"
        if not self.dist.main or not path.exists():
            return
        kept: list[tuple[str, dict[str, Any]]] = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record["step"] <= self.step:
                kept.append((line, record))
        write_text_atomically(path, "".join(f"{line}\n" for line, _ in kept))
        self.history = [record for _, record in kept if record["kind"] == "epoch"]

    # -- logging ----------------------------------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.tb.add_scalar(key, value, record["step"])
        if record["kind"] == "epoch":
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

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        from dagcv.train.progress import Progress

        progress = Progress(
            enabled=self.dist.main and not (self.options.quiet or self.options.json_lines),
            total=self.total_steps,
            done=self.step,
        )
        stopped = False
        try:
            with progress:
                while self.epoch < self.epochs and self.step < self.total_steps and not stopped:
                    self._train_epoch(progress)
                    if self.batch_in_epoch == 0:  # the epoch finished (not cut by a step budget)
                        stopped = self._end_epoch(progress)
                if self.batch_in_epoch and (not self.history or self.history[-1]["step"] != self.step):
                    self._end_epoch(progress)  # a run cut mid-epoch by `steps:` still ends with an evaluation
        except NonFiniteLoss as exc:
            self.save()  # the parameters are still those of the last good step
            nodes = {out: self.compiled.built.sg.outputs[out][0] for out in exc.losses}
            where = ", ".join(f"output '{o}' of node '{n}'" for o, n in nodes.items())
            raise TrainingDiverged(
                f"non-finite {exc} ({where}); the last good state is in {self.ckpt_dir / 'last.pt'}"
            ) from None
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.dist.main:
            self.save()
            from dagcv.train.plots import write_plots

            write_plots(self.run_dir, self.spec.name)
        return RunResult(self.run_dir, self.history, stopped, self.dist.main)

    def _train_epoch(self, progress: Any) -> None:
        self.net.train()
        sums: dict[str, torch.Tensor] = {}
        count, tick, seen = 0, time.perf_counter(), 0
        every, ckpt_every = self.cfg.log_every, self.cfg.checkpoint_every
        progress.start_epoch(self.epoch, self.epochs)
        on_device = self.device.type != "cpu"
        for batch in self.train_loader.epoch(self.epoch, self.batch_in_epoch):
            if self.step >= self.total_steps:
                break  # a `steps:` budget that ends inside this epoch
            if on_device:
                batch = move_to(batch, self.device)
            losses = self.loop.step(batch, self.step + 1)  # raises before touching the counters on a NaN
            self.step += 1
            self.batch_in_epoch += 1
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v
            count += 1
            seen += batch_size(batch) * self.dist.world
            if self.step % every == 0:
                now = time.perf_counter()
                record = {
                    "kind": "step",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    **{f"train/{k}": (v / count).item() for k, v in sums.items()},
                    "lr": self.groups[0].optimizer.param_groups[0]["lr"],
                    "samples_per_s": seen / max(now - tick, 1e-9),
                }
                self.log(record)
                self.last_losses = {k: v for k, v in record.items() if k.startswith("train/")}
                progress.update(self.step, record)
                sums, count, tick, seen = {}, 0, now, 0
            if ckpt_every and self.step % ckpt_every == 0:
                self.save()
        else:
            self.batch_in_epoch = 0
            self.epoch += 1

    def _end_epoch(self, progress: Any) -> bool:
        # A finished epoch is recorded by its 1-based number; a run cut inside one by a fraction (2.4).
        epoch = (
            round(self.epoch + self.batch_in_epoch / len(self.train_loader), 3) if self.batch_in_epoch else self.epoch
        )
        record: dict[str, Any] = {"kind": "epoch", "step": self.step, "epoch": epoch}
        record.update(self.last_losses)
        if self.eval_loader is not None and (self.epoch % self.cfg.eval_every == 0 or self.epoch == self.epochs):
            record.update({f"{self.cfg.eval_split}/{k}": v for k, v in self.evaluate().items()})
        self.history.append(record)
        self.log(record)
        progress.epoch_line(record, self.epochs)
        stop = self._early_stopping(record)
        if self.cfg.checkpoint_every is None or self.step % self.cfg.checkpoint_every:
            self.save()
        return stop

    def _early_stopping(self, record: dict[str, Any]) -> bool:
        es = self.cfg.early_stopping
        if es is None or es.metric not in record:
            return False
        value = float(record[es.metric])
        better = self.best is None or (
            value > self.best + es.min_delta if es.mode == "max" else value < self.best - es.min_delta
        )
        if better:
            self.best, self.bad_epochs = value, 0
            self.save("best.pt")
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= es.patience

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Metrics of the evaluation split, in eval mode (synchronised across ranks by torchmetrics)."""
        assert self.eval_loader is not None
        self.net.eval()
        for m in self.metrics.values():
            m.reset()
        for batch in self.eval_loader.epoch(0):
            batch = move_to(batch, self.device)
            out = self.net(**batch)
            for cfg in self.cfg.metrics:
                self.metrics[cfg.key].update(out[cfg.output], batch[cfg.target])
        self.net.train()
        return {name: v for k, m in self.metrics.items() for name, v in results(k, m.compute()).items()}


# ---------------------------------------------------------------------------------------------------------------


def train_spec(spec: Spec, options: Options | None = None) -> RunResult:
    """Train a spec in a new run directory."""
    try:
        return Trainer(spec, options or Options()).run()
    finally:
        shutdown_distributed()


def resume_run(run_dir: Path, options: Options | None = None) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint."""
    run_dir = Path(run_dir)
    spec = load_spec(run_dir / "spec.resolved.yaml")
    trainer = Trainer(spec, options or Options(), run_dir=run_dir)
    trainer.restore(load_checkpoint(run_dir / "checkpoints" / "last.pt"))
    try:
        return trainer.run()
    finally:
        shutdown_distributed()


def evaluate_checkpoint(spec: Spec, ckpt: Path, split: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights into the spec's model and compute the metrics of a split."""
    trainer = Trainer(spec, Options(quiet=True), run_dir=Path(os.devnull))
    state = load_checkpoint(Path(ckpt))
    weights = state.get("model", state)
    mismatch = state_dict_mismatch(trainer.model, weights)
    if mismatch:
        raise SpecError.at(
            None,
            f"{ckpt} does not fit the model of {spec.source.file}:\n  " + "\n  ".join(mismatch),
            hint="evaluate a checkpoint of a run of this spec (its run directory holds the spec it was trained with)",
        )
    trainer.model.load_state_dict(weights, strict=True)
    if split is not None and split != trainer.cfg.eval_split:
        trainer.eval_loader = trainer._loader(split, train=False)
        trainer.cfg = trainer.cfg.model_copy(update={"eval_split": split})
    if trainer.eval_loader is None:
        raise SpecError.at(
            spec.source.key("train"), "no evaluation split to evaluate on", hint="set train.eval_split or pass --split"
        )
    return trainer.evaluate()
