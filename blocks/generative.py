"""Generative models: the convolutional encoder and decoder of a VQ-VAE (van den Oord et al., 2017); its
quantizers live in :mod:`blocks.quantizers`.

Sized for small images such as 1×28×28 MNIST: the encoder shrinks each side by 4, the decoder grows it back.
"""

from __future__ import annotations

import torch  # noqa: F401  (the docstring examples use it)
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Size, register_block


@register_block(
    "conv_encoder",
    family="encoder",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={"out": "FeatureMap[B, latent_dim, H/4, W/4]"},
    infer={"in_channels": "C"},
    param_count="16 * hidden_channels * (in_channels + hidden_channels) + hidden_channels * latent_dim",
)
class ConvEncoder(nn.Module):
    """Two stride-2 4×4 convs with ReLU, then a 1×1 conv to the latent channels; each side shrinks by 4.

    Sides that are not multiples of 4 would round down and never decode back to the input size, so the
    contract asks for ``H/4`` (exact division) and the compiler rejects them.

    Args:
        in_channels: channels of the input image (inferred from ``C``).
        hidden_channels: channels of the two strided convs.
        latent_dim: channels of the output, one latent vector per position.

    Example:
        >>> ConvEncoder()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, *, in_channels: Size = 1, hidden_channels: Size = 32, latent_dim: Size = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.proj = nn.Conv2d(hidden_channels, latent_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.relu(self.conv2(F.relu(self.conv1(x)))))


@register_block(
    "conv_decoder",
    family="decoder",
    inputs={"x": "FeatureMap[B, C, H, W]"},
    outputs={"out": "Image[B, out_channels, H*4, W*4]"},
    infer={"in_channels": "C"},
    param_count="in_channels * hidden_channels + 16 * hidden_channels * (hidden_channels + out_channels)",
)
class ConvDecoder(nn.Module):
    """A 1×1 conv with ReLU, then two stride-2 4×4 transposed convs (ReLU between them); each side grows by 4.

    The output has no final activation: pair it with a loss on raw values (or logits).

    Args:
        in_channels: channels of the latent map (inferred from ``C``).
        hidden_channels: channels between the layers.
        out_channels: channels of the output image.

    Example:
        >>> ConvDecoder()(torch.zeros(2, 16, 7, 7)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, *, in_channels: Size = 16, hidden_channels: Size = 32, out_channels: Size = 1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_channels, kernel_size=1)
        self.deconv1 = nn.ConvTranspose2d(hidden_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(hidden_channels, out_channels, kernel_size=4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv2(F.relu(self.deconv1(F.relu(self.proj(x)))))
