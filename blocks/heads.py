"""Heads: features in, class logits out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.layers import linear_stack, make_dropout, require_inferred, run_stack
from dagcv.registry import Fraction, Size, register_block


@register_block(
    "mlp_head",
    family="head",
    inputs={"x": "Tensor[B, *F]"},
    outputs={"out": "Logits[B, num_classes]"},
    infer={"in_features": "prod(F)"},
)
class MLPHead(nn.Module):
    """Flatten everything but the batch dim, then Linear and ReLU per hidden layer, then a Linear to the classes.

    The Linear layers sit in ``layers`` in order, so the classic tutorial LeNet's ``fc1``, ``fc2``, ``fc3`` map
    onto ``layers.0``, ``layers.1``, ``layers.2`` with ``in_features=400, hidden=[120, 84]``.

    Args:
        in_features: number of features per sample after flattening (inferred from ``prod(F)``).
        hidden: widths of the hidden layers, in order; empty for a linear classifier.
        num_classes: number of output logits.
        dropout: dropout probability after each hidden ReLU (0 disables it).

    Example:
        >>> MLPHead(in_features=400, hidden=(120, 84), num_classes=10)(torch.zeros(2, 16, 5, 5)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        in_features: Size | None = None,
        hidden: tuple[Size, ...] = (),
        num_classes: Size,
        dropout: Fraction = 0.0,
    ) -> None:
        super().__init__()
        in_features = require_inferred(in_features, "in_features", "mlp_head")
        self.layers = linear_stack([in_features, *hidden, num_classes])
        self.dropout = make_dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return run_stack(self.layers, torch.flatten(x, 1), F.relu, self.dropout)


@register_block(
    "global_pool_head",
    family="head",
    inputs={"x": "FeatureMap[B, C, H, W]"},
    outputs={"out": "Logits[B, num_classes]"},
    infer={"in_channels": "C"},
)
class GlobalPoolHead(nn.Module):
    """Average-pool each channel over the whole map, then one Linear ``fc`` to the classes.

    This is torchvision's ResNet classifier (``avgpool`` + ``fc``): its ``fc.*`` keys load here unchanged.

    Args:
        in_channels: channels of the feature map (inferred from ``C``).
        num_classes: number of output logits.

    Example:
        >>> GlobalPoolHead(in_channels=512, num_classes=10)(torch.zeros(2, 512, 3, 5)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, in_channels: Size | None = None, num_classes: Size) -> None:
        super().__init__()
        self.fc = nn.Linear(require_inferred(in_channels, "in_channels", "global_pool_head"), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
