"""Generative adversarial networks: DCGAN generators and discriminators, their class-conditional variants, and
Pix2Pix's U-Net generator and PatchGAN discriminator.

Sized for small images such as 1×28×28 MNIST. Generators end in ``tanh``, so their images lie in [-1, 1] (scale
real images the same way); discriminators give raw scores (``Logits``), no sigmoid, so that one block serves the
non-saturating, hinge and Wasserstein losses alike. Every block initialises its weights as DCGAN does
(:func:`init_dcgan_weights`) in its constructor.

Normalisation in a discriminator is a choice of ``norm``: BatchNorm (DCGAN's) mixes the samples of a batch, so a
sample's score depends on the others. WGAN-GP penalises the gradient of each sample's score with respect to that
sample alone, which only means something when the scores are per-sample functions: use ``norm="layer"``
(``GroupNorm(1, C)``, normalising each sample over its own channels and positions), ``"instance"`` (PatchGAN) or
``"none"`` there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Size, register_block

# Each norm name to a factory of that layer over ``channels`` feature maps.
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "layer": lambda channels: nn.GroupNorm(1, channels),
    # Affine, unlike CycleGAN's default: the conv before it has no bias, so the norm gives the learned shift.
    "instance": lambda channels: nn.InstanceNorm2d(channels, affine=True),
    "none": lambda channels: nn.Identity(),
}

_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_NORMALISING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)

# The slope of every LeakyReLU (DCGAN, Pix2Pix).
LEAK = 0.2


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN's initialisation (Radford et al., 2016), in place, over every submodule of ``module``.

    Conv, transposed conv and linear weights are drawn from N(0, 0.02), norm-layer scales from N(1, 0.02), and
    every bias is zero. Embeddings keep their own initialisation.

    Example:
        >>> conv = nn.Conv2d(16, 32, 4)
        >>> init_dcgan_weights(conv)
        >>> round(conv.weight.std().item(), 2), conv.bias.abs().sum().item()
        (0.02, 0.0)
    """
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, _NORMALISING) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def norm_conv(in_channels: int, out_channels: int, norm: str, **conv: int) -> nn.Sequential:
    """A conv followed by the norm layer ``norm`` names; the conv has a bias only without a norm.

    A per-channel bias before BatchNorm or InstanceNorm is removed again by their mean subtraction (and before
    GroupNorm nearly so); the norm's own learned shift takes its place.

    >>> block = norm_conv(8, 16, "batch", kernel_size=4, stride=2, padding=1)
    >>> [type(m).__name__ for m in block], block[0].bias
    (['Conv2d', 'BatchNorm2d'], None)
    """
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, bias=norm == "none", **conv), NORMS[norm](out_channels))


def _check_side(height: int, width: int, block: str) -> None:
    if height < 4 or width < 4:
        raise ValueError(f"{block}: the image must be at least 4×4 (two stride-2 convs), got {height}×{width}")


# ---------------------------------------------------------------------------------------------------------------
# DCGAN generators


class _DCGANBody(nn.Module):
    """DCGAN's generator from a latent vector: project and reshape, then two ×2 transposed-conv upsamplings."""

    def __init__(self, *, in_features: int, base: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.base, self.channels = base, channels
        # The projection feeds BatchNorm, which cancels a bias; the projected map is normalised per channel
        # like any conv output (DCGAN's "project and reshape").
        self.project = nn.Linear(in_features, channels * base * base, bias=False)
        self.norm0 = nn.BatchNorm2d(channels)
        self.up1 = nn.ConvTranspose2d(channels, channels // 2, kernel_size=4, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels // 2)
        self.up2 = nn.ConvTranspose2d(channels // 2, out_channels, kernel_size=4, stride=2, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(-1, self.channels, self.base, self.base)
        x = F.relu(self.norm0(x))
        x = F.relu(self.norm1(self.up1(x)))
        return torch.tanh(self.up2(x))


_GENERATOR_RULES = {"channels >= 2": "the first upsampling halves the width: channels // 2 must be at least 1"}


@register_block(
    "dcgan_generator",
    family="generator",
    inputs={"z": "Embedding[B, Z]"},
    outputs={"out": "Image[B, out_channels, 4*base, 4*base]"},
    infer={"latent_dim": "Z"},
    requires=_GENERATOR_RULES,
    param_count="latent_dim * channels * base * base + 8 * channels * (channels + out_channels)",
)
class DCGANGenerator(nn.Module):
    """DCGAN's generator (Radford et al., 2016): a latent vector to an image in [-1, 1], each side ``4 * base``.

    A linear projection to a ``channels × base × base`` map, BatchNorm and ReLU; a 4×4 stride-2 transposed conv
    to ``channels // 2`` with BatchNorm and ReLU; a second one to ``out_channels``; ``tanh``. With the defaults:
    64×7×7, 32×14×14, 1×28×28.

    Args:
        latent_dim: size of the latent vector (inferred from ``Z``).
        base: side of the first feature map; the image's side is four times it.
        channels: width of the first feature map, halved by each upsampling.
        out_channels: channels of the image.

    Example:
        >>> DCGANGenerator(latent_dim=16)(torch.randn(2, 16)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, *, latent_dim: Size = 100, base: Size = 7, channels: Size = 64, out_channels: Size = 1) -> None:
        super().__init__()
        self.body = _DCGANBody(in_features=latent_dim, base=base, channels=channels, out_channels=out_channels)
        init_dcgan_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


@register_block(
    "conditional_dcgan_generator",
    family="generator",
    inputs={"z": "Embedding[B, Z]", "label": "Labels[B]"},
    outputs={"out": "Image[B, out_channels, 4*base, 4*base]"},
    infer={"latent_dim": "Z"},
    requires=_GENERATOR_RULES,
    param_count=(
        "(latent_dim + embed_dim) * channels * base * base + 8 * channels * (channels + out_channels)"
        " + num_classes * embed_dim"
    ),
)
class ConditionalDCGANGenerator(nn.Module):
    """A class-conditional DCGAN generator (cGAN, Mirza & Osindero, 2014): ``z`` with its label's embedding.

    A learned embedding of the class label is concatenated to the latent vector, and the result runs through
    the network of ``dcgan_generator`` (its ``body``). The embedding keeps PyTorch's N(0, 1) initialisation,
    the scale of ``z`` it sits beside.

    Args:
        latent_dim: size of the latent vector (inferred from ``Z``).
        base: side of the first feature map; the image's side is four times it.
        channels: width of the first feature map, halved by each upsampling.
        out_channels: channels of the image.
        num_classes: number of class labels.
        embed_dim: size of the class embedding.

    Example:
        >>> g = ConditionalDCGANGenerator(latent_dim=16)
        >>> g(torch.randn(2, 16), torch.tensor([3, 7])).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        *,
        latent_dim: Size = 100,
        base: Size = 7,
        channels: Size = 64,
        out_channels: Size = 1,
        num_classes: Size = 10,
        embed_dim: Size = 10,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.body = _DCGANBody(
            in_features=latent_dim + embed_dim, base=base, channels=channels, out_channels=out_channels
        )
        init_dcgan_weights(self)

    def forward(self, z: Tensor, label: Tensor) -> Tensor:
        return self.body(torch.cat([z, self.embed(label)], dim=1))


# ---------------------------------------------------------------------------------------------------------------
# DCGAN discriminators


class _ConvTrunk(nn.Module):
    """Two 4×4 stride-2 convs with LeakyReLU (a norm on the second only, as in DCGAN), flattened to one vector.

    Each conv takes a side ``n`` to ``n // 2``, so the vector has ``2 * channels * (H // 4) * (W // 4)`` entries.
    """

    def __init__(self, *, in_channels: int, channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1)
        self.conv2 = norm_conv(channels, 2 * channels, norm, kernel_size=4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(x), LEAK)
        return F.leaky_relu(self.conv2(x), LEAK).flatten(1)


def _features(channels: int, height: int, width: int) -> int:
    return 2 * channels * (height // 4) * (width // 4)


_DISCRIMINATOR_RULES = {"height >= 4 and width >= 4": "two stride-2 convs need an image of at least 4×4"}


@register_block(
    "dcgan_discriminator",
    family="discriminator",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={"out": "Logits[B]"},
    infer={"in_channels": "C", "height": "H", "width": "W"},
    requires=_DISCRIMINATOR_RULES,
    param_count="16 * channels * (in_channels + 2 * channels) + 2 * channels * (height // 4) * (width // 4)",
)
class DCGANDiscriminator(nn.Module):
    """DCGAN's discriminator: two strided convs, then a linear layer to one raw score per image.

    4×4 stride-2 convs to ``channels`` then ``2 * channels`` maps with LeakyReLU(0.2), the second normalised by
    ``norm``; the flattened map goes through a linear layer to one logit. Each conv halves a side (rounding
    down), so any image of at least 4×4 fits; ``height`` and ``width`` size the linear layer.

    ``norm="batch"`` is DCGAN's, but it makes each score depend on the whole batch (in train mode). WGAN-GP's
    gradient penalty treats ``∇ₓ D(x)`` per sample, which is wrong under BatchNorm: use ``norm="layer"``
    (``GroupNorm(1, ·)``, per sample) or ``"none"`` there, as Gulrajani et al. (2017) do.

    Args:
        in_channels: channels of the image (inferred from ``C``).
        height: height of the image (inferred from ``H``).
        width: width of the image (inferred from ``W``).
        channels: width of the first conv; the second has twice as many.
        norm: normalisation after the second conv: ``batch``, ``layer`` (GroupNorm with one group) or ``none``.

    Example:
        >>> DCGANDiscriminator()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        *,
        in_channels: Size = 1,
        height: Size = 28,
        width: Size = 28,
        channels: Size = 64,
        norm: Literal["batch", "layer", "none"] = "batch",
    ) -> None:
        super().__init__()
        _check_side(height, width, "dcgan_discriminator")
        self.trunk = _ConvTrunk(in_channels=in_channels, channels=channels, norm=norm)
        self.classify = nn.Linear(_features(channels, height, width), 1)
        init_dcgan_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.trunk(x)).squeeze(1)


@register_block(
    "projection_discriminator",
    family="discriminator",
    inputs={"x": "Image[B, C, H, W]", "label": "Labels[B]"},
    outputs={"out": "Logits[B]"},
    infer={"in_channels": "C", "height": "H", "width": "W"},
    requires=_DISCRIMINATOR_RULES,
    param_count=(
        "16 * channels * (in_channels + 2 * channels) + 2 * channels * (height // 4) * (width // 4) * (num_classes + 1)"
    ),
)
class ProjectionDiscriminator(nn.Module):
    """A class-conditional discriminator by projection (Miyato & Koyama, 2018).

    With ``φ(x)`` the flattened output of ``dcgan_discriminator``'s conv trunk, the score is
    ``linear(φ(x)) + ⟨embed(label), φ(x)⟩``: the class enters as an inner product with the features instead of
    being concatenated to the input. The class embedding has one vector of ``φ``'s size per class and is drawn
    from N(0, 0.02) like the linear layer it extends.

    Args:
        in_channels: channels of the image (inferred from ``C``).
        height: height of the image (inferred from ``H``).
        width: width of the image (inferred from ``W``).
        num_classes: number of class labels.
        channels: width of the first conv; the second has twice as many.
        norm: normalisation after the second conv: ``batch``, ``layer`` (GroupNorm with one group) or ``none``.

    Example:
        >>> d = ProjectionDiscriminator(channels=8)
        >>> d(torch.zeros(2, 1, 28, 28), torch.tensor([0, 9])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        *,
        in_channels: Size = 1,
        height: Size = 28,
        width: Size = 28,
        num_classes: Size = 10,
        channels: Size = 64,
        norm: Literal["batch", "layer", "none"] = "batch",
    ) -> None:
        super().__init__()
        _check_side(height, width, "projection_discriminator")
        features = _features(channels, height, width)
        self.trunk = _ConvTrunk(in_channels=in_channels, channels=channels, norm=norm)
        self.classify = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)
        init_dcgan_weights(self)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        phi = self.trunk(x)
        return self.classify(phi).squeeze(1) + (self.embed(label) * phi).sum(1)


# ---------------------------------------------------------------------------------------------------------------
# Pix2Pix and CycleGAN: image-to-image


@register_block(
    "unet_generator",
    family="generator",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={"out": "Image[B, out_channels, H, W]"},
    infer={"in_channels": "C"},
    requires={
        "H % 4 == 0 and W % 4 == 0": "the skips line up with the upsampled maps only when 4 divides each side",
        "norm != 'instance' or H * W > 16": "InstanceNorm needs more than one position per map (H/4 × W/4)",
    },
    param_count="132 * channels * channels + 16 * channels * (in_channels + 2 * out_channels)",
)
class UNetGenerator(nn.Module):
    """Pix2Pix's U-Net generator (Isola et al., 2017), two levels deep: an image to an image of the same size.

    Down: a 4×4 stride-2 conv to ``channels`` (no norm), then LeakyReLU(0.2) and a 4×4 stride-2 conv to
    ``2 * channels`` with ``norm``. Bottleneck at ``H/4``: LeakyReLU, a 3×3 conv and ``norm``. Up, each step
    on its level's output concatenated with the skip from the same level: ReLU, a 4×4 stride-2 transposed conv
    to ``channels`` with ``norm`` (and Dropout(0.5), Pix2Pix's noise, when ``dropout``), then ReLU, a transposed
    conv to ``out_channels`` and ``tanh``. Dropout is off in eval mode. ``norm: instance`` is CycleGAN's choice:
    its generators also run on the other domain's images (identity and cycle losses), and batch statistics
    would mix the two domains.

    Args:
        in_channels: channels of the input image (inferred from ``C``).
        out_channels: channels of the output image.
        channels: width of the first down conv; the inner levels have twice as many.
        dropout: Dropout(0.5) after the innermost upsampling, in train mode.
        norm: ``batch`` (Pix2Pix) or ``instance`` (CycleGAN), after every conv but the outermost ones.

    Example:
        >>> UNetGenerator(in_channels=3, out_channels=3, channels=8)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self, *, in_channels: Size = 1, out_channels: Size = 1, channels: Size = 64, dropout: bool = True,
        norm: Literal["batch", "instance"] = "batch",
    ) -> None:  # fmt: skip
        super().__init__()
        wide = 2 * channels
        self.down1 = nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1)
        self.down2 = norm_conv(channels, wide, norm, kernel_size=4, stride=2, padding=1)
        self.bottleneck = norm_conv(wide, wide, norm, kernel_size=3, padding=1)
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(2 * wide, channels, kernel_size=4, stride=2, padding=1, bias=False),
            NORMS[norm](channels),
            nn.Dropout(0.5) if dropout else nn.Identity(),
        )
        self.up2 = nn.ConvTranspose2d(2 * channels, out_channels, kernel_size=4, stride=2, padding=1)
        init_dcgan_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        skip1 = self.down1(x)
        skip2 = self.down2(F.leaky_relu(skip1, LEAK))
        inner = self.bottleneck(F.leaky_relu(skip2, LEAK))
        up = self.up1(F.relu(torch.cat([inner, skip2], dim=1)))
        return torch.tanh(self.up2(F.relu(torch.cat([up, skip1], dim=1))))


@register_block(
    "patchgan_discriminator",
    family="discriminator",
    inputs={"x": "Image[B, C, H, W]", "condition": "Image[B, D, H, W]?"},
    outputs={"out": "Logits[B, 1, H/4, W/4]"},
    infer={"in_channels": "C", "condition_channels": "D"},
    requires={"norm != 'instance' or H * W > 16": "InstanceNorm needs more than one position per map (H/4 × W/4)"},
    param_count="16 * channels * (in_channels + 2 * channels) + 18 * channels",
)
class PatchGANDiscriminator(nn.Module):
    """Pix2Pix's and CycleGAN's PatchGAN discriminator, small: one raw score per overlapping patch.

    4×4 stride-2 convs to ``channels`` (no norm) then ``2 * channels`` (normalised by ``norm``), each with
    LeakyReLU(0.2), then a 3×3 conv with padding 1 to one channel: a ``H/4 × W/4`` map of logits, each seeing an
    18×18 patch of the input. (Pix2Pix's last conv is 4×4 with padding 1, which would shrink each side by one.)

    With ``condition`` connected the discriminator is conditional, as in Pix2Pix: it scores the pair, ``x``
    concatenated with ``condition`` on channels. CycleGAN leaves it unconnected.

    Args:
        in_channels: channels of the scored image (inferred from ``C``).
        condition_channels: channels of ``condition`` (inferred from ``D``); None without a condition.
        channels: width of the first conv; the second has twice as many.
        norm: normalisation after the second conv: ``batch`` (Pix2Pix), ``instance`` (CycleGAN), ``layer``
            (GroupNorm with one group) or ``none``.

    Example:
        >>> d = PatchGANDiscriminator(in_channels=3, condition_channels=1, channels=8)
        >>> d(torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        *,
        in_channels: Size = 1,
        condition_channels: Size | None = None,
        channels: Size = 64,
        norm: Literal["batch", "layer", "instance", "none"] = "batch",
    ) -> None:
        super().__init__()
        self.conditional = condition_channels is not None
        self.conv1 = nn.Conv2d(in_channels + (condition_channels or 0), channels, kernel_size=4, stride=2, padding=1)
        self.conv2 = norm_conv(channels, 2 * channels, norm, kernel_size=4, stride=2, padding=1)
        self.score = nn.Conv2d(2 * channels, 1, kernel_size=3, padding=1)
        init_dcgan_weights(self)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        if (condition is not None) != self.conditional:
            built = "with condition_channels" if self.conditional else "without condition_channels"
            raise ValueError(f"patchgan_discriminator was built {built}: pass `condition` exactly then")
        if condition is not None:
            x = torch.cat([x, condition], dim=1)
        x = F.leaky_relu(self.conv1(x), LEAK)
        return self.score(F.leaky_relu(self.conv2(x), LEAK))

    def extra_repr(self) -> str:
        return f"conditional={self.conditional}"
