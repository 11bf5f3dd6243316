"""Adversarial training over a spec's graph: critic steps on real batches and detached fakes, then a generator step.

The spec holds both players and their objectives (see :mod:`blocks.adversarial`); ``train:`` names which blocks
each player trains and which Loss outputs it minimises (:mod:`dagcv.train.gan_config`). The loop asks the
compiled model for three programs:

- ``generate``: noise (and labels, or a paired image) → the fake batches (the ``fake:`` outputs);
- ``critic_losses``: real batch + fakes *given* as arguments → the critic's losses. The generator is not part of
  this program, so no gradient can reach it and no graph through it is built;
- ``generator_losses``: noise → generator → the shared critic → the generator's losses.

One generator step (Goodfellow et al. 2014, Algorithm 1; Arjovsky et al. 2017, Algorithm 1 for ``n_critic``):

1. ``n_critic`` times: take the next real batch; draw noise for its size; generate fakes without gradients; run
   ``critic_losses``; backpropagate the critic's weighted sum; clip its gradient norm; step its optimizer and
   schedule; clamp its weights to ``[-c, c]`` when ``clip_weights`` is set (WGAN);
2. draw fresh noise; freeze the critic's parameters (their gradients are not needed, which saves their
   computation); run ``generator_losses`` on the last real batch's inputs (labels, paired images); step the
   generator's optimizer; unfreeze.

Its clock is generator steps; an epoch is a pass of the critic over the real data, after which the loop logs a
summary and, when the spec has a ``samples`` output, writes a grid of samples from fixed noise to
``plots/samples_epoch<N>.png``. Its state: both optimizers and schedules, the counters, where the data stands,
and every noise source's generator, so a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from dagcv.compiler import Compiled
from dagcv.errors import SpecError
from dagcv.graph import source_argument
from dagcv.lower import program_arguments
from dagcv.train.context import RunContext, RunResult, check_finite
from dagcv.train.data import batch_size, move_to, open_split
from dagcv.train.gan_config import GanConfig, PlayerConfig
from dagcv.train.optim import make_optimizer, make_scheduler
from dagcv.train.sampling import SAMPLES, draw, noise_sources


class Player:
    """One side of the game: its parameters, optimizer, schedule and the weighted losses it minimises."""

    def __init__(self, name: str, model: torch.nn.Module, cfg: PlayerConfig, total_steps: int) -> None:
        self.name, self.cfg = name, cfg
        self.params = [p for b in cfg.blocks for p in getattr(model, b).parameters()]
        self.optimizer = make_optimizer(cfg.optimizer, self.params)
        self.scheduler = make_scheduler(cfg.schedule, self.optimizer, total_steps)

    def step(self, out: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Backpropagate the weighted sum of this player's losses and step; returns their values."""
        values = check_finite({name: out[name] for name in self.cfg.losses}, step)
        total = sum(w * out[name] for name, w in self.cfg.losses.items())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return values

    def requires_grad(self, flag: bool) -> None:
        for p in self.params:
            p.requires_grad_(flag)

    def state_dict(self) -> dict[str, Any]:
        sched = self.scheduler.state_dict() if self.scheduler is not None else {}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": sched}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


class GanLoop:
    """Train a compiled GAN spec on its real data (see the module docstring)."""

    clock = "steps"

    def __init__(self, ctx: RunContext, compiled: Compiled, cfg: GanConfig) -> None:
        self.ctx, self.compiled, self.cfg = ctx, compiled, cfg
        if ctx.dist.world > 1:
            raise SpecError.at(compiled.built.sg.spec.source.value("train", "loop"),
                               "the gan loop runs in one process, not under torchrun",
                               hint="run it without torchrun (DDP is the supervised loop's)")  # fmt: skip
        sg = compiled.built.sg
        self.sg = sg
        self.device = ctx.device
        self.model = compiled.module.to(self.device)
        self.noise = noise_sources(compiled.built.objects)
        kinds = {name: t.kind for name, (n, p) in sg.outputs.items() if (t := sg.out_type(n, p)) is not None}
        programs = cfg.programs(kinds)
        self.generate = self.model.program(*programs["generate"])
        self.critic_program = self.model.program(*programs["critic_losses"])
        self.generator_program = self.model.program(*programs["generator_losses"])
        self.fake_args = {name: source_argument(*sg.outputs[name]) for name in cfg.fakes}
        # Each program's arguments, read once rather than on every step.
        lowered = (self.generate, self.critic_program, self.generator_program)
        self.arguments_of = {p: program_arguments(p) for p in lowered}
        self.loader = open_split(sg, cfg.train_split, seed=cfg.seed, train=True)
        self.per_epoch = len(self.loader)
        if self.per_epoch == 0:
            raise SpecError.at(sg.spec.source.key("data", cfg.train_split), "the training split yields no batch",
                               hint="fewer samples than batch_size with drop_last?")  # fmt: skip
        if cfg.steps is not None:
            self.total_steps = cfg.steps
        else:
            self.total_steps = max(1, math.ceil(cfg.epochs * self.per_epoch / cfg.n_critic))  # type: ignore[operator]
        self.critic = Player("critic", self.model, cfg.critic, self.total_steps * cfg.n_critic)
        self.generator = Player("generator", self.model, cfg.generator, self.total_steps)
        self.can_sample = SAMPLES in sg.outputs and cfg.samples > 0
        # Where the run stands: generator steps, and the position in the real data.
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._batches: Any = None

    # -- state ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "critic": self.critic.state_dict(),
            "generator": self.generator.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "noise": {arg: source.state_dict() for arg, source in self.noise.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.generator.load_state_dict(state["generator"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        for arg, source in self.noise.items():
            source.load_state_dict(state["noise"][arg])

    def save(self, name: str = "last.pt") -> None:
        self.ctx.save(self.model, self.state_dict(), name)

    # -- data -------------------------------------------------------------------------------------------------

    def _next_batch(self) -> tuple[dict[str, Any], bool]:
        """The next real batch, and whether it ended an epoch."""
        if self._batches is None:
            self._batches = iter(self.loader.epoch(self.epoch, self.batch_in_epoch))
        batch = next(self._batches)
        self.batch_in_epoch += 1
        ended = self.batch_in_epoch == self.per_epoch
        if ended:
            self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None
        return (move_to(batch, self.device) if self.device.type != "cpu" else batch), ended

    def _arguments(self, program: Any, batch: dict[str, Any], n: int, fakes: dict | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name in self.arguments_of[program]:
            if name in self.noise:
                args[name] = self.noise[name].draw(n, self.device)
            elif fakes is not None and name in fakes:
                args[name] = fakes[name]
            else:
                args[name] = batch[name]
        return args

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        progress = self.ctx.progress(self.total_steps, self.step)
        sums: dict[str, float] = {}
        count, tick, seen = 0, time.perf_counter(), 0
        self.model.train()
        with progress:
            while self.step < self.total_steps:
                losses, real, epoch_ended = self.train_step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                count, seen = count + 1, seen + real
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    record = {"kind": "step", "step": self.step, "epoch": self.epoch + 1,
                              **{f"train/{k}": v / count for k, v in sums.items()},
                              "lr": self.generator.optimizer.param_groups[0]["lr"],
                              "samples_per_s": seen / max(now - tick, 1e-9)}  # fmt: skip
                    self.ctx.log(record)
                    progress.update(self.step, record)
                    self.last = {k: v for k, v in record.items() if k.startswith("train/")}
                    sums, count, tick, seen = {}, 0, now, 0
                if epoch_ended is not None or self.step == self.total_steps:
                    self._end_epoch(progress, epoch_ended)
                elif self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save()
        return RunResult(self.ctx.run_dir, self.ctx.history, False, self.ctx.main)

    def train_step(self) -> tuple[dict[str, float], int, int | None]:
        """One generator step after ``n_critic`` critic steps; returns the losses, real samples seen, and the
        number of the epoch of real data that ended during it (None if none did)."""
        logs: dict[str, float] = {}
        seen, ended = 0, None
        for _ in range(self.cfg.n_critic):
            batch, epoch_ended = self._next_batch()
            ended = self.epoch if epoch_ended else ended
            n = batch_size(batch)
            seen += n
            with torch.no_grad():
                generated = self.generate(**self._arguments(self.generate, batch, n))
            fakes = {self.fake_args[name]: generated[name] for name in self.cfg.fakes}
            out = self.critic_program(**self._arguments(self.critic_program, batch, n, fakes))
            logs.update(self.critic.step(out, self.step + 1))
            if self.cfg.critic.clip_weights is not None:
                c = self.cfg.critic.clip_weights
                with torch.no_grad():
                    for p in self.critic.params:
                        p.clamp_(-c, c)
        self.critic.requires_grad(False)
        try:
            out = self.generator_program(**self._arguments(self.generator_program, batch, n))
            logs.update(self.generator.step(out, self.step + 1))
        finally:
            self.critic.requires_grad(True)
        self.step += 1
        return logs, seen, ended

    def _end_epoch(self, progress: Any, ended: int | None) -> None:
        """Log a summary, draw a sample grid and checkpoint, after epoch ``ended`` (or at the end of the budget)."""
        epoch = ended if ended is not None else round(self.epoch + self.batch_in_epoch / self.per_epoch, 3)
        record: dict[str, Any] = {"kind": "epoch", "step": self.step, "epoch": epoch, **getattr(self, "last", {})}
        self.ctx.log(record)
        progress.epoch_line(record, math.ceil(self.total_steps * self.cfg.n_critic / self.per_epoch))
        if self.can_sample:
            images = draw(self.compiled, self.cfg.samples, seed=self.cfg.seed, device=self.device)
            self.ctx.save_images(f"samples_epoch{math.ceil(epoch):03d}.png", images)
        self.save()
