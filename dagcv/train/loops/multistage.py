"""Stages trained in order over one graph: a VQ-VAE, then a prior on its frozen codes (or an autoencoder, then a
latent model).

Each stage (:mod:`dagcv.train.multistage_config`) trains its own blocks on its own losses with its own optimizer
and budget; the blocks of earlier stages are frozen (no gradients, eval mode). A stage's program is
``stage_<name>``: the sub-graph over its losses, cut at its ``cache:`` outputs. Those are computed once, by the
frozen model in eval mode over the training split in order, and stored in ``cache/<stage>-<hash>.pt`` in the run
directory together with the spec inputs the stage also reads (a class label); ``<hash>`` is the SHA-256 of the
frozen weights, so a cache is reused exactly when the weights that made it are the same (a resumed run) and
never otherwise. The cached stage then draws shuffled batches from memory with the split's batch size.

Its clock is steps within each stage (the log's ``step`` counts across stages, so records stay ordered); its
state is the stage index, the stage's counters, optimizer and schedule. A run killed in any stage resumes in that
stage, at the batch it had reached.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import torch

from dagcv.compiler import Compiled
from dagcv.errors import SpecError
from dagcv.files import atomic_file
from dagcv.lower import program_arguments
from dagcv.train.context import RunContext, RunResult, check_finite
from dagcv.train.data import TensorLoader, move_to, open_split
from dagcv.train.ema import WeightAverage, averaged_weights
from dagcv.train.multistage_config import MultistageConfig, StageConfig
from dagcv.train.optim import make_optimizer, make_scheduler
from dagcv.train.sampling import SAMPLES, draw


def weights_hash(model: torch.nn.Module, blocks: list[str]) -> str:
    """SHA-256 over the named parameters and buffers of ``blocks``: what a cache computed by them depends on."""
    digest = hashlib.sha256()
    for block in sorted(blocks):
        for name, tensor in sorted(getattr(model, block).state_dict().items()):
            digest.update(f"{block}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class MultistageLoop:
    """Train a compiled spec stage by stage (see the module docstring)."""

    clock = "steps"

    def __init__(self, ctx: RunContext, compiled: Compiled, cfg: MultistageConfig) -> None:
        self.ctx, self.compiled, self.cfg = ctx, compiled, cfg
        if ctx.dist.world > 1:
            raise SpecError.at(compiled.built.sg.spec.source.value("train", "loop"),
                               "the multistage loop runs in one process, not under torchrun",
                               hint="run it without torchrun (DDP is the supervised loop's)")  # fmt: skip
        self.sg = compiled.built.sg
        self.device = ctx.device
        self.model = compiled.module.to(self.device)
        self.data = open_split(self.sg, cfg.train_split, seed=cfg.seed, train=True)
        if len(self.data) == 0:
            raise SpecError.at(self.sg.spec.source.key("data", cfg.train_split), "the training split yields no batch",
                               hint="fewer samples than batch_size with drop_last?")  # fmt: skip
        # Where the run stands.
        self.stage, self.epoch, self.batch_in_epoch, self.stage_step, self.step = 0, 0, 0, 0, 0
        self._enter(0)

    # -- stages -----------------------------------------------------------------------------------------------

    def _enter(self, index: int) -> None:
        """Set up stage ``index``: freeze earlier stages, lower its program, make its optimizer and loader."""
        self.stage = index
        stage = self.cfg.stages[index]
        frozen = [b for s in self.cfg.stages[:index] for b in s.blocks]
        for block in frozen:
            getattr(self.model, block).requires_grad_(False)
        self.program = self.model.program(list(stage.losses), "train", stage.cache)
        self.params = [p for b in stage.blocks for p in getattr(self.model, b).parameters()]
        self.loader: Any = self._cached_loader(stage, frozen) if stage.cache else self.data
        per_epoch = len(self.loader)
        self.total = stage.steps or stage.epochs * per_epoch  # type: ignore[operator]
        self.epochs = stage.epochs or math.ceil(self.total / per_epoch)
        self.optimizer = make_optimizer(stage.optimizer, self.params)
        self.scheduler = make_scheduler(stage.schedule, self.optimizer, self.total)
        ema = stage.ema
        self.ema = WeightAverage(self.model, decay=ema.decay, warmup=ema.warmup) if ema else None

    def _cached_loader(self, stage: StageConfig, frozen: list[str]) -> TensorLoader:
        path = self.ctx.run_dir / "cache" / f"{stage.name}-{weights_hash(self.model, frozen)[:16]}.pt"
        if path.is_file():
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        else:
            tensors = self._compute_cache(stage)
            if self.ctx.main:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path) as f:
                    torch.save(tensors, f)
        split = self.sg.training.data[self.cfg.train_split]  # type: ignore[attr-defined]
        return TensorLoader(tensors, batch_size=split.batch_size, shuffle=split.shuffle, seed=self.cfg.seed)

    @torch.no_grad()
    def _compute_cache(self, stage: StageConfig) -> dict[str, torch.Tensor]:
        """The cached outputs and the spec inputs the stage reads, over the training split in order."""
        compute = self.model.program(stage.cache, "eval")
        wanted = program_arguments(self.program)
        names = {self._argument(out): out for out in stage.cache}
        ordered = open_split(self.sg, self.cfg.train_split, seed=self.cfg.seed, train=False)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
        self.model.eval()
        try:
            for batch in ordered.epoch(0):
                batch = move_to(batch, self.device)
                out = compute(**{k: batch[k] for k in program_arguments(compute)})
                for name in wanted:
                    parts[name].append((out[names[name]] if name in names else batch[name]).cpu())
        finally:
            self.model.train()
        return {name: torch.cat(values) for name, values in parts.items()}

    def _argument(self, output: str) -> str:
        from dagcv.graph import source_argument

        return source_argument(*self.sg.outputs[output])

    # -- state ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "stage_step": self.stage_step,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.stage:
            self._enter(state["stage"])  # after the weights were restored: its cache hashes the trained ones
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.stage_step, self.step = state["stage_step"], state["step"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])

    def save(self, name: str = "last.pt") -> None:
        self.ctx.save(self.model, self.state_dict(), name)

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        while True:
            self.run_stage()
            if self.stage + 1 == len(self.cfg.stages):
                break
            self._enter(self.stage + 1)
            self.epoch, self.batch_in_epoch, self.stage_step = 0, 0, 0
            self.save()
        return RunResult(self.ctx.run_dir, self.ctx.history, False, self.ctx.main)

    def run_stage(self) -> None:
        stage = self.cfg.stages[self.stage]
        frozen = {b for s in self.cfg.stages[: self.stage] for b in s.blocks}
        progress = self.ctx.progress(self.total, self.stage_step)
        with progress:
            while self.stage_step < self.total:
                progress.start_epoch(self.epoch, self.epochs)
                self._train_epoch(stage, frozen, progress)
                self._end_epoch(stage, progress)

    def _train_epoch(self, stage: StageConfig, frozen: set[str], progress: Any) -> None:
        self.model.train()
        for block in frozen:
            getattr(self.model, block).eval()  # frozen: batch-norm statistics and dropout as trained
        sums: dict[str, float] = {}
        count, tick = 0, time.perf_counter()
        wanted = program_arguments(self.program)
        for batch in self.loader.epoch(self.epoch, self.batch_in_epoch):
            if self.stage_step >= self.total:
                break
            batch = move_to(batch, self.device)
            out = self.program(**{k: batch[k] for k in wanted})
            values = check_finite({k: out[k] for k in stage.losses}, self.step + 1)
            total = sum(w * out[k] for k, w in stage.losses.items())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[union-attr]
            if stage.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, stage.grad_clip)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.stage_step += 1
            self.step += 1
            self.batch_in_epoch += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if self.stage_step % self.cfg.log_every == 0 or self.stage_step == self.total:
                now = time.perf_counter()
                record = {"kind": "step", "step": self.step, "stage": stage.name, "epoch": self.epoch + 1,
                          **{f"train/{k}": v / count for k, v in sums.items()},
                          "lr": self.optimizer.param_groups[0]["lr"],
                          "steps_per_s": count / max(now - tick, 1e-9)}  # fmt: skip
                self.ctx.log(record)
                progress.update(self.stage_step, record)
                self.last = {k: v for k, v in record.items() if k.startswith("train/")}
                sums, count, tick = {}, 0, now
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save()
        else:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _end_epoch(self, stage: StageConfig, progress: Any) -> None:
        done = self.batch_in_epoch / len(self.loader)
        epoch = self.epoch if self.batch_in_epoch == 0 else round(self.epoch + done, 3)
        record = {"kind": "epoch", "step": self.step, "stage": stage.name, "epoch": epoch, **getattr(self, "last", {})}
        self.ctx.log(record)
        progress.epoch_line(record, self.epochs)
        last_stage = self.stage + 1 == len(self.cfg.stages)
        if last_stage and SAMPLES in self.sg.outputs and self.cfg.samples > 0:
            with averaged_weights(self.ema, self.model):
                images = draw(self.compiled, self.cfg.samples, seed=self.cfg.seed, device=self.device,
                              sampler=self.cfg.sampler)  # fmt: skip
            self.ctx.save_images(f"samples_{stage.name}_epoch{math.ceil(epoch):03d}.png", images)
        self.save()
