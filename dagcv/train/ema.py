"""An exponential moving average of a model's weights, the run-context service loops ask for (diffusion's EMA).

Only trainable floating-point parameters are averaged; every other entry of the state_dict (batch-norm
statistics, a step counter, a scale fitted from data) is copied as it is, since an average of counters or flags
means nothing. The average lives beside the model as a state_dict keyed like the model's, so a checkpoint stores
it as such (a loop's state ``ema``) and ``dagcv sample`` loads it into the model in place of the raw weights.

``torch.optim.swa_utils.AveragedModel`` keeps a deep copy of the whole module and averages buffers too (or not
at all), which breaks on integer and boolean buffers; this keeps one tensor per weight and swaps the averaged
weights in only while sampling (:meth:`WeightAverage.swapped_into`).

>>> net = torch.nn.Linear(2, 1)
>>> ema = WeightAverage(net, decay=0.5, warmup=False)
>>> with torch.no_grad():
...     _ = net.weight.add_(1.0)
>>> ema.update(net)
>>> torch.allclose(ema.average["weight"], net.weight - 0.5)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn


class WeightAverage:
    """EMA of the trainable weights of ``model``: ``avg ← d·avg + (1 - d)·w`` after each :meth:`update`.

    Args:
        model: the model whose weights are averaged (its parameters that require gradients at creation).
        decay: d.
        warmup: use ``min(d, (1 + n) / (10 + n))`` after ``n`` updates, so a short run's average is not
            dominated by its initial weights.
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]
        self.average = {n: t.detach().clone() for n, t in model.state_dict().items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average; copy everything that is not averaged."""
        state = model.state_dict()
        decay = self.current_decay()
        averaged = set(self.names)
        for name, value in state.items():
            if name in averaged:
                self.average[name].lerp_(value.detach(), 1 - decay)
            else:
                self.average[name].copy_(value)
        self.updates += 1

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights loaded, its own restored afterwards."""
        own = {n: t.detach().clone() for n, t in model.state_dict().items()}
        model.load_state_dict(self.average, strict=True)
        try:
            yield model
        finally:
            model.load_state_dict(own, strict=True)

    def state_dict(self) -> dict:
        return {"average": self.average, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.average = {n: t.clone() for n, t in state["average"].items()}
        self.updates = state["updates"]


def averaged_weights(ema: WeightAverage | None, model: nn.Module) -> AbstractContextManager:
    """``model`` with the averaged weights while inside, when a loop keeps an average; as it is otherwise."""
    return ema.swapped_into(model) if ema is not None else nullcontext(model)
