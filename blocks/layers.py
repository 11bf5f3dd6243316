"""Generic layers: the multi-layer perceptron, and the small pieces other families build from.

``linear_stack`` and ``run_stack`` are shared by the MLP-shaped blocks (``mlp``, ``mlp_head``, ``mlp_policy``,
``mlp_critic``) so that each of them stores its Linear layers the same way: an ``nn.ModuleList`` named
``layers``, whose state_dict keys (``layers.0.weight``, ...) map one to one onto a hand-written network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Fraction, Size, register_block

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}


def require_inferred(value: int | None, name: str, block: str) -> int:
    """``value``, or a clear error when a block that dagcv would have sized is built by hand without it."""
    if value is None:
        raise ValueError(f"{block}: '{name}' is required (dagcv infers it from the input shape; pass it by hand)")
    return value


def linear_stack(sizes: Sequence[int]) -> nn.ModuleList:
    """One ``nn.Linear`` between each pair of consecutive sizes.

    >>> linear_stack([4, 8, 2])
    ModuleList(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    return nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))


def run_stack(
    layers: nn.ModuleList, x: Tensor, activation: Callable[[Tensor], Tensor], dropout: nn.Module | None = None
) -> Tensor:
    """Apply ``layers`` in order, with ``activation`` (then ``dropout``) after every layer but the last."""
    # A hot path for small models: no ModuleList slicing (it builds a new ModuleList per call) and no call at all
    # for absent dropout.
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < last:
            x = activation(x)
            if dropout is not None:
                x = dropout(x)
    return x


def make_dropout(p: float) -> nn.Module | None:
    """``nn.Dropout(p)``, or None when ``p == 0`` so that the forward pays for no no-op module."""
    return nn.Dropout(p) if p > 0 else None


@register_block(
    "mlp",
    family="layer",
    inputs={"x": "Tensor[B, D]"},
    outputs={"out": "Embedding[B, out_features]"},
    infer={"in_features": "D"},
)
class MLP(nn.Module):
    """A multi-layer perceptron over the last dim: Linear, activation (and dropout) per hidden layer, then Linear.

    Args:
        in_features: size of the input's last dim (inferred from ``D``).
        hidden: widths of the hidden layers, in order; empty for a single Linear.
        out_features: width of the output.
        activation: non-linearity after each hidden layer.
        dropout: dropout probability after each hidden activation (0 disables it).

    Example:
        >>> MLP(in_features=4, hidden=(8,), out_features=3)(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        *,
        in_features: Size | None = None,
        hidden: tuple[Size, ...] = (),
        out_features: Size,
        activation: Literal["relu", "tanh", "gelu"] = "relu",
        dropout: Fraction = 0.0,
    ) -> None:
        super().__init__()
        in_features = require_inferred(in_features, "in_features", "mlp")
        self.layers = linear_stack([in_features, *hidden, out_features])
        self.activation = activation
        self.dropout = make_dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return run_stack(self.layers, x, ACTIVATIONS[self.activation], self.dropout)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


@register_block("sigmoid", family="layer", inputs={"x": "Image[B, C, H, W]"}, outputs={"out": "Image[B, C, H, W]"})
class Sigmoid(nn.Module):
    """Logits to probabilities in ``[0, 1]``: a Bernoulli decoder's output as an image (``samples`` of a VAE).

    Example:
        >>> Sigmoid()(torch.zeros(1, 1, 1, 2))
        tensor([[[[0.5000, 0.5000]]]])
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


@register_block("unit_range", family="layer", inputs={"x": "Image[B, C, H, W]"}, outputs={"out": "Image[B, C, H, W]"})
class UnitRange(nn.Module):
    """Map images from ``[-1, 1]`` (a tanh generator) to ``[0, 1]``: ``(x + 1) / 2``, clamped.

    Example:
        >>> UnitRange()(torch.tensor([[[[-1.0, 0.0, 1.0]]]]))
        tensor([[[[0.0000, 0.5000, 1.0000]]]])
    """

    def forward(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)


@register_block("signed_range", family="layer", inputs={"x": "Image[B, C, H, W]"}, outputs={"out": "Image[B, C, H, W]"})
class SignedRange(nn.Module):
    """Map images from ``[0, 1]`` to ``[-1, 1]``: ``2x - 1``, the inverse of ``unit_range`` (the data space of a
    diffusion model, whose samplers clip x̂_0 to [-1, 1]).

    Example:
        >>> SignedRange()(torch.tensor([[[[0.0, 0.5, 1.0]]]]))
        tensor([[[[-1.,  0.,  1.]]]])
    """

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x - 1
