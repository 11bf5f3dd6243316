"""Generative models: the encoder, vector quantizer and decoder of a VQ-VAE (van den Oord et al., 2017).

Sized for small images such as 1×28×28 MNIST: the encoder shrinks each side by 4, the decoder grows it back.
"""

from __future__ import annotations

import torch
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
    "vector_quantizer",
    family="quantizer",
    inputs={"x": "FeatureMap[B, D, H, W]"},
    outputs={
        "quantized": "FeatureMap[B, D, H, W]",
        "codes": "Codes[B, H, W]",
        "codebook_loss": "Loss[]",
        "commitment_loss": "Loss[]",
    },
    infer={"embedding_dim": "D"},
)
class VectorQuantizer(nn.Module):
    """Replace each latent vector by its nearest codebook entry, passing gradients straight through.

    With ``z`` the input and ``e`` the nearest entries: ``quantized`` equals ``e`` in the forward pass, while its
    gradient flows to ``z`` unchanged (the straight-through estimator). ``codebook_loss`` is the mean of
    ``(sg[z] - e)²`` and moves the codebook; ``commitment_loss`` is ``beta`` times the mean of ``(z - sg[e])²``
    and keeps the encoder close to its codes (``sg`` stops the gradient).

    Args:
        embedding_dim: size of each latent vector and codebook entry (inferred from ``D``).
        num_codes: number of codebook entries.
        beta: weight of the commitment loss.

    Example:
        >>> out = VectorQuantizer(num_codes=8)(torch.zeros(2, 16, 7, 7))
        >>> out["quantized"].shape, out["codes"].shape
        (torch.Size([2, 16, 7, 7]), torch.Size([2, 7, 7]))
    """

    def __init__(self, *, embedding_dim: Size = 16, num_codes: Size = 64, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(torch.empty(num_codes, embedding_dim).uniform_(-1 / num_codes, 1 / num_codes))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b, d, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, d)
        # |z - e|² = |z|² - 2 z·e + |e|², one matrix product instead of a (positions × codes × dim) difference.
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)
        codes = distances.argmin(1)
        nearest = self.codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)
        return {
            "quantized": x + (nearest - x).detach(),
            "codes": codes.view(b, h, w),
            "codebook_loss": F.mse_loss(nearest, x.detach()),
            "commitment_loss": self.beta * F.mse_loss(x, nearest.detach()),
        }

    def extra_repr(self) -> str:
        return f"num_codes={self.codebook.shape[0]}, embedding_dim={self.codebook.shape[1]}, beta={self.beta}"


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
