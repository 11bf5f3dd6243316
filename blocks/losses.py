"""Losses: predictions and targets in, a scalar to minimise out. They run in training mode by default."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import register_block


@register_block(
    "cross_entropy",
    family="loss",
    inputs={"logits": "Logits[B, K]", "target": "Labels[B]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class CrossEntropy(nn.Module):
    """Mean cross-entropy between class logits and integer labels (``F.cross_entropy``).

    Args:
        label_smoothing: mass taken from the target class and spread uniformly over all classes, in [0, 1).
        class_weights: one rescaling weight per class (length ``K``); ``None`` weighs classes equally.

    Example:
        >>> round(CrossEntropy()(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item(), 4)  # log(3)
        1.0986
    """

    class_weights: Tensor | None

    def __init__(self, *, label_smoothing: float = 0.0, class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        # A buffer follows the module across devices; not persistent, since it is configuration, not state.
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


@register_block(
    "mse_loss",
    family="loss",
    inputs={"input": "Tensor[B, *F]", "target": "Tensor[B, *F]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class MSELoss(nn.Module):
    """Squared error between two tensors of the same shape, averaged or summed over every element.

    Args:
        reduction: ``"mean"`` over all elements, or their ``"sum"``.

    Example:
        >>> MSELoss()(torch.zeros(2, 3), torch.ones(2, 3)).item()
        1.0
    """

    def __init__(self, *, reduction: Literal["mean", "sum"] = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}"
