"""The diffusion loop: the supervised loop's epochs of batches over a denoising loss, plus an average of the
weights (EMA) that sampling uses, and grids drawn by the spec's sampler.

The objective is in the graph (a schedule block noises the batch at random timesteps, the denoiser predicts the
target, ``diffusion_loss`` weighs the error), so an optimizer step here is the supervised loop's; what this loop
adds is the average (:class:`~dagcv.train.ema.WeightAverage`, updated after every step, saved in checkpoints as
the loop state's ``ema`` so that ``dagcv sample`` draws with it) and the per-epoch grid drawn with the averaged
weights by the ``train.sampler`` settings (DDIM with 50 steps unless told otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from dagcv.compiler import Compiled
from dagcv.train.context import RunContext
from dagcv.train.diffusion_config import DiffusionConfig
from dagcv.train.ema import WeightAverage, averaged_weights
from dagcv.train.loops.supervised import SupervisedLoop
from dagcv.train.sampling import draw


class DiffusionLoop(SupervisedLoop):
    """Train a diffusion spec on its data splits, keeping an average of its weights (see the module docstring)."""

    cfg: DiffusionConfig

    def __init__(self, ctx: RunContext, compiled: Compiled, cfg: DiffusionConfig) -> None:
        super().__init__(ctx, compiled, cfg)
        ema = cfg.ema
        self.ema = WeightAverage(self.model, decay=ema.decay, warmup=ema.warmup) if ema else None

    @property
    def grid_size(self) -> int:
        return self.cfg.samples

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def draw_samples(self) -> torch.Tensor:
        with averaged_weights(self.ema, self.model):
            return draw(self.compiled, self.grid_size, seed=self.cfg.seed, device=self.device, sampler=self.cfg.sampler)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": self.ema.state_dict() if self.ema else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
