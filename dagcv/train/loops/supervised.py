"""The supervised loop: epochs of batches from the ``data:`` splits, optimizer groups over the Loss outputs,
evaluation with torchmetrics, early stopping.

Its clock is epochs (or a ``steps:`` budget that may end mid-epoch); its state is the optimizer groups, where
the run stands (epoch, batches done in it, step) and the early-stopping record. Everything else -- the run
directory, seeding, checkpoints, logs, the NaN guard's stop -- is the run context's.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from dagcv.compiler import Compiled
from dagcv.errors import SpecError
from dagcv.train.config import SupervisedConfig
from dagcv.train.context import EarlyStopping, RunContext, RunResult
from dagcv.train.data import SplitLoader, batch_size, move_to, open_split
from dagcv.train.metrics import make_metric, results
from dagcv.train.optim import GroupStepper, make_groups
from dagcv.train.plan import TrainingPlan
from dagcv.train.sampling import SAMPLES, draw


class SupervisedLoop:
    """Train a compiled spec on its data splits (see the module docstring)."""

    clock = "epochs"

    def __init__(self, ctx: RunContext, compiled: Compiled, cfg: SupervisedConfig) -> None:
        self.ctx, self.compiled, self.cfg = ctx, compiled, cfg
        sg = compiled.built.sg
        self.plan: TrainingPlan = sg.training  # type: ignore[attr-defined]
        self.device = ctx.device
        self.model = compiled.module.to(self.device)
        self.net: torch.nn.Module = self.model
        if ctx.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_loader = self._loader(cfg.train_split, train=True)
        self.eval_loader = self._loader(cfg.eval_split, train=False) if self._has_eval() else None
        per_epoch = len(self.train_loader)
        if per_epoch == 0:
            raise SpecError.at(
                sg.spec.source.key("data", cfg.train_split),
                "the training split yields no batch",
                hint="fewer samples than batch_size with drop_last?",
            )
        self.epochs = cfg.epochs or math.ceil(cfg.steps / per_epoch)  # type: ignore[operator]
        self.total_steps = cfg.steps or self.epochs * per_epoch
        self.groups = make_groups(self.model, cfg, self.plan.loss_outputs, self.total_steps)
        self.stepper = GroupStepper(self.net, self.groups, grad_clip=cfg.grad_clip, amp=cfg.amp, device=self.device)
        self.metrics = {m.key: make_metric(m, sg).to(self.device) for m in cfg.metrics}
        es = cfg.early_stopping
        self.early = EarlyStopping(mode=es.mode, patience=es.patience, min_delta=es.min_delta) if es else None
        # Where the run stands.
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.last_losses: dict[str, float] = {}

    @staticmethod
    def programs(sg: Any, cfg: SupervisedConfig) -> dict[str, tuple[list[str], str]]:
        """The supervised loop runs the whole train and eval programs (``forward``): no named programs."""
        return {}

    # -- set-up helpers ---------------------------------------------------------------------------------------

    def _has_eval(self) -> bool:
        return self.cfg.eval_split is not None and self.cfg.eval_split in self.plan.data

    def _loader(self, split: str, *, train: bool) -> SplitLoader:
        sg, dist = self.compiled.built.sg, self.ctx.dist
        return open_split(sg, split, seed=self.cfg.seed, rank=dist.rank, world=dist.world, train=train)

    # -- state ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": self.stepper.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "early_stopping": self.early.state_dict() if self.early else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stepper.load_state_dict(state["groups"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        if self.early is not None and state["early_stopping"] is not None:
            self.early.load_state_dict(state["early_stopping"])

    def save(self, name: str = "last.pt") -> None:
        self.ctx.save(self.model, self.state_dict(), name)

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        progress = self.ctx.progress(self.total_steps, self.step)
        stopped = False
        with progress:
            while self.epoch < self.epochs and self.step < self.total_steps and not stopped:
                self.train_epoch(progress)
                if self.batch_in_epoch == 0:  # the epoch finished (not cut by a step budget)
                    stopped = self._end_epoch(progress)
            history = self.ctx.history
            if self.batch_in_epoch and (not history or history[-1]["step"] != self.step):
                self._end_epoch(progress)  # a run cut mid-epoch by `steps:` still ends with an evaluation
        self.save()
        return RunResult(self.ctx.run_dir, self.ctx.history, stopped, self.ctx.main)

    def train_epoch(self, progress: Any) -> None:
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
            losses = self.stepper.step(batch, self.step + 1)  # raises before touching the counters on a NaN
            self.step += 1
            self.batch_in_epoch += 1
            self.after_step()
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v
            count += 1
            seen += batch_size(batch) * self.ctx.dist.world
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
                self.ctx.log(record)
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
        self.ctx.log(record)
        progress.epoch_line(record, self.epochs)
        if SAMPLES in self.compiled.built.sg.outputs and self.grid_size > 0:  # a generative model (a VAE): a grid
            self.ctx.save_images(f"samples_epoch{math.ceil(epoch):03d}.png", self.draw_samples())
        stop = self._early_stopping(record)
        if self.cfg.checkpoint_every is None or self.step % self.cfg.checkpoint_every:
            self.save()
        return stop

    def after_step(self) -> None:
        """Called after every optimizer step (a subclass averages weights here)."""

    @property
    def grid_size(self) -> int:
        """How many samples the grid drawn after every epoch holds (0: none)."""
        return 64

    def draw_samples(self) -> torch.Tensor:
        """The grid drawn after every epoch of a model with a ``samples`` output."""
        return draw(self.compiled, self.grid_size, seed=self.cfg.seed, device=self.device)

    def _early_stopping(self, record: dict[str, Any]) -> bool:
        es = self.cfg.early_stopping
        if self.early is None or es is None or es.metric not in record:
            return False
        improved, stop = self.early.update(float(record[es.metric]))
        if improved:
            self.save("best.pt")
        return stop

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
                if cfg.target is None:  # the mean of a Metric output over the split's samples
                    self.metrics[cfg.key].update(out[cfg.output], weight=batch_size(batch))
                else:
                    self.metrics[cfg.key].update(out[cfg.output], batch[cfg.target])
        self.net.train()
        return {name: v for k, m in self.metrics.items() for name, v in results(k, m.compute()).items()}
