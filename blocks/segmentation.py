"""Semantic segmentation: heads and decoders from feature maps to per-pixel class logits.

FCN and DeepLabV3 are torchvision's own heads (``FCNHead``, ``DeepLabHead`` with its ``ASPP``) under torchvision's
submodule names, so ``fcn_resnet50`` / ``deeplabv3_resnet50`` checkpoints load into a spec built from
``resnet50_os8 -> head -> upsample`` through a key map. Heads predict at the feature map's stride; ``upsample``
brings the logits to the image's size exactly as torchvision's ``_SimpleSegmentationModel`` does. DeepLabV3+
adds a decoder that fuses the ASPP output with the stride-4 ``c2`` stage; U-Net is an encoder of conv blocks with
max-pooling whose skips a decoder concatenates back on the way up.

Every head outputs ``Logits[B, num_classes, h, w]``; the losses (``cross_entropy``) and metrics (``mean_iou``)
read ``Logits[B, K, H, W]`` against ``Labels[B, H, W]``.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead as TorchvisionFCNHead

from blocks.layers import require_inferred
from dagcv.registry import Size, register_block

# ---------------------------------------------------------------------------------------------------------------
# FCN and DeepLabV3: torchvision's heads


@register_block(
    "fcn_head",
    family="head",
    inputs={"x": "FeatureMap[B, C, H, W]"},
    outputs={"out": "Logits[B, num_classes, H, W]"},
    infer={"in_channels": "C"},
    param_count="9 * in_channels * in_channels // 4 + in_channels // 4 * num_classes",
)
class FCNHead(TorchvisionFCNHead):
    """torchvision's FCN head: 3×3 conv to ``C/4`` channels, BatchNorm, ReLU, Dropout(0.1), 1×1 conv to the classes.

    Its submodules ``0``-``4`` are torchvision's, so ``classifier.*`` (or ``aux_classifier.*``) of a
    ``fcn_resnet50`` checkpoint load here unchanged. On ``c5`` of ``resnet50_os8`` it is FCN-ResNet50's
    classifier; on ``c4`` its auxiliary classifier.

    Args:
        in_channels: channels of the feature map (inferred from ``C``).
        num_classes: number of classes, the background included (21 for Pascal VOC).

    Example:
        >>> FCNHead(in_channels=64, num_classes=21)(torch.zeros(2, 64, 8, 8)).shape
        torch.Size([2, 21, 8, 8])
    """

    def __init__(self, *, in_channels: Size | None = None, num_classes: Size) -> None:
        super().__init__(require_inferred(in_channels, "in_channels", "fcn_head"), num_classes)


@register_block(
    "deeplabv3_head",
    family="head",
    inputs={"x": "FeatureMap[B, C, H, W]"},
    outputs={"out": "Logits[B, num_classes, H, W]"},
    infer={"in_channels": "C"},
    param_count="(2 + 9 * len(atrous_rates)) * in_channels * 256 + 9 * 256 * 256 + 256 * num_classes",
)
class DeepLabV3Head(DeepLabHead):
    """torchvision's DeepLabV3 head: ASPP (256 channels), 3×3 conv, BatchNorm, ReLU, 1×1 conv to the classes.

    The ASPP runs a 1×1 conv, one 3×3 conv per atrous rate and an image-pooling branch in parallel, then projects
    their concatenation to 256 channels (with Dropout(0.5)). Submodule names are torchvision's (``0.convs.*``,
    ``0.project.*``, ``1``-``4``): ``classifier.*`` of a ``deeplabv3_resnet50`` checkpoint loads here unchanged.
    Its image-pooling branch normalises a 1×1 map: in training the batch needs at least 2 images.

    Args:
        in_channels: channels of the feature map (inferred from ``C``).
        num_classes: number of classes, the background included (21 for Pascal VOC).
        atrous_rates: dilation of each 3×3 ASPP branch; (12, 24, 36) at output stride 8, (6, 12, 18) at 16.

    Example:
        >>> DeepLabV3Head(in_channels=64, num_classes=21).eval()(torch.zeros(1, 64, 8, 8)).shape
        torch.Size([1, 21, 8, 8])
    """

    def __init__(
        self, *, in_channels: Size | None = None, num_classes: Size, atrous_rates: tuple[Size, ...] = (12, 24, 36)
    ) -> None:
        super().__init__(require_inferred(in_channels, "in_channels", "deeplabv3_head"), num_classes, atrous_rates)


@register_block(
    "aspp",
    family="neck",
    inputs={"x": "FeatureMap[B, C, H, W]"},
    outputs={"out": "FeatureMap[B, out_channels, H, W]"},
    infer={"in_channels": "C"},
    param_count=(
        "(2 + "
        "9 * len(atrous_rates)) * in_channels * out_channels + (len(atrous_rates) + 2) * out_channels * out_channels"
    ),
)
class ASPP(TorchvisionASPP):
    """torchvision's atrous spatial pyramid pooling, alone: the encoder end of DeepLabV3+.

    A 1×1 conv, one dilated 3×3 conv per rate and global average pooling (broadcast back) run in parallel, each
    with BatchNorm and ReLU; a 1×1 conv projects their concatenation to ``out_channels``, then Dropout(0.5). Its
    pooling branch normalises a 1×1 map: in training the batch needs at least 2 images.

    Args:
        in_channels: channels of the feature map (inferred from ``C``).
        atrous_rates: dilation of each 3×3 branch; (12, 24, 36) at output stride 8, (6, 12, 18) at 16.
        out_channels: channels of every branch and of the output.

    Example:
        >>> ASPP(in_channels=64, atrous_rates=(6, 12, 18)).eval()(torch.zeros(1, 64, 8, 8)).shape
        torch.Size([1, 256, 8, 8])
    """

    def __init__(
        self,
        *,
        in_channels: Size | None = None,
        atrous_rates: tuple[Size, ...] = (12, 24, 36),
        out_channels: Size = 256,
    ) -> None:
        super().__init__(require_inferred(in_channels, "in_channels", "aspp"), atrous_rates, out_channels)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A bias-free conv (``same`` padding), BatchNorm and ReLU, as ``0``, ``1``, ``2``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@register_block(
    "deeplabv3plus_decoder",
    family="decoder",
    inputs={"x": "FeatureMap[B, C, h, w]", "c2": "FeatureMap[B, L, H, W]"},
    outputs={"out": "Logits[B, num_classes, H, W]"},
    infer={"in_channels": "C", "low_level_in_channels": "L"},
    param_count=(
        "low_level_in_channels * low_level_channels + "
        "9 * channels * (in_channels + low_level_channels) + 9 * channels * channels + channels * num_classes"
    ),
)
class DeepLabV3PlusDecoder(nn.Module):
    """The DeepLabV3+ decoder: fuse the ASPP output with low-level features, predict at the low level's stride.

    ``c2`` (stride 4) goes through a 1×1 conv to ``low_level_channels`` (48: few, so the low level does not
    outweigh the 256 ASPP channels); the ASPP output is upsampled bilinearly to ``c2``'s size
    (``align_corners=False``); the two are concatenated and refined by two 3×3 convs (each with BatchNorm and
    ReLU) before a 1×1 conv to the classes. Pair it with ``upsample`` for logits at the image's size.

    Args:
        in_channels: channels of the ASPP output (inferred from ``C``).
        low_level_in_channels: channels of ``c2`` (inferred from ``L``).
        num_classes: number of classes, the background included.
        low_level_channels: width of the 1×1 projection of ``c2``.
        channels: width of the two 3×3 convs.

    Example:
        >>> decoder = DeepLabV3PlusDecoder(in_channels=256, low_level_in_channels=64, num_classes=4)
        >>> decoder(torch.zeros(2, 256, 4, 4), torch.zeros(2, 64, 16, 16)).shape
        torch.Size([2, 4, 16, 16])
    """

    def __init__(
        self,
        *,
        in_channels: Size | None = None,
        low_level_in_channels: Size | None = None,
        num_classes: Size,
        low_level_channels: Size = 48,
        channels: Size = 256,
    ) -> None:
        super().__init__()
        in_channels = require_inferred(in_channels, "in_channels", "deeplabv3plus_decoder")
        low_in = require_inferred(low_level_in_channels, "low_level_in_channels", "deeplabv3plus_decoder")
        self.project = conv_bn_relu(low_in, low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(in_channels + low_level_channels, channels, 3), conv_bn_relu(channels, channels, 3)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor, c2: Tensor) -> Tensor:
        low = self.project(c2)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


@register_block(
    "upsample",
    family="layer",
    inputs={"x": "Logits[B, K, h, w]", "image": "Image[B, C, H, W]"},
    outputs={"out": "Logits[B, K, H, W]"},
)
class Upsample(nn.Module):
    """Resize logits bilinearly to the image's height and width, as torchvision's segmentation models end.

    ``F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)``: the image only lends its
    size. Logits at stride 8 of a 64×64 image become 64×64 logits.

    Example:
        >>> Upsample()(torch.zeros(2, 21, 8, 8), torch.zeros(2, 3, 64, 60)).shape
        torch.Size([2, 21, 64, 60])
    """

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        return F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# U-Net


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """U-Net's unit: two 3×3 convs, each with BatchNorm and ReLU (padded, so the size is kept)."""
    return nn.Sequential(conv_bn_relu(in_channels, out_channels, 3), conv_bn_relu(out_channels, out_channels, 3))


_UNET_LEVELS = ("s1", "s2", "s3", "s4", "bottom")


@register_block(
    "unet_encoder",
    family="backbone",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={
        "s1": "FeatureMap[B, base_channels, H, W]",
        "s2": "FeatureMap[B, 2*base_channels, H//2, W//2]",
        "s3": "FeatureMap[B, 4*base_channels, H//4, W//4]",
        "s4": "FeatureMap[B, 8*base_channels, H//8, W//8]",
        "bottom": "FeatureMap[B, 16*base_channels, H//16, W//16]",
    },
    infer={"in_channels": "C"},
    param_count="4600 * base_channels * base_channels",
)
class UNetEncoder(nn.Module):
    """The contracting path of U-Net: a double 3×3 conv block, then four times 2×2 max-pool and a double conv.

    Each level doubles the channels and halves the size (rounding down, as max-pooling does). The four skips
    ``s1``-``s4`` and the ``bottom`` of the U come out by name, so ``unet_decoder <- encoder`` wires them all.
    Convs are padded (the size is kept) and each is followed by BatchNorm and ReLU. Sizes need ``H, W >= 16``.

    Args:
        in_channels: channels of the image (inferred from ``C``).
        base_channels: channels of the first level (64 in the paper).

    Example:
        >>> out = UNetEncoder(in_channels=3, base_channels=8)(torch.zeros(1, 3, 33, 48))
        >>> {k: tuple(v.shape[1:]) for k, v in out.items()}
        {'s1': (8, 33, 48), 's2': (16, 16, 24), 's3': (32, 8, 12), 's4': (64, 4, 6), 'bottom': (128, 2, 3)}
    """

    def __init__(self, *, in_channels: Size | None = None, base_channels: Size = 64) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(len(_UNET_LEVELS))]
        in_channels = require_inferred(in_channels, "in_channels", "unet_encoder")
        self.levels = nn.ModuleList(double_conv(a, b) for a, b in itertools.pairwise([in_channels, *widths]))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for i, (name, level) in enumerate(zip(_UNET_LEVELS, self.levels, strict=True)):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            out[name] = x
        return out


class UpStep(nn.Module):
    """One step up the expanding path: bring ``x`` to the skip's size and width, concatenate, double conv."""

    def __init__(self, in_channels: int, skip_channels: int, upsampling: str) -> None:
        super().__init__()
        self.upsampling = upsampling
        if upsampling == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        else:  # bilinear resize, then a 1×1 conv for the width
            self.up = nn.Conv2d(in_channels, skip_channels, kernel_size=1)
        self.conv = double_conv(2 * skip_channels, skip_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if self.upsampling == "transposed":
            x = self.up(x)
            # An odd skip size (33 pooled to 16) leaves the doubled map a pixel short: pad it (a negative
            # pad crops) to the skip's size, centred.
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        else:
            x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.conv(torch.cat([skip, x], dim=1))


@register_block(
    "unet_decoder",
    family="decoder",
    inputs={
        "s1": "FeatureMap[B, C1, H, W]",
        "s2": "FeatureMap[B, C2, H2, W2]",
        "s3": "FeatureMap[B, C3, H3, W3]",
        "s4": "FeatureMap[B, C4, H4, W4]",
        "bottom": "FeatureMap[B, C5, H5, W5]",
    },
    outputs={"out": "Logits[B, num_classes, H, W]"},
    infer={
        "s1_channels": "C1",
        "s2_channels": "C2",
        "s3_channels": "C3",
        "s4_channels": "C4",
        "bottom_channels": "C5",
    },
    param_count="10 * bottom_channels * bottom_channels",
)
class UNetDecoder(nn.Module):
    """The expanding path of U-Net: from the ``bottom`` up, four steps of upsample, concatenate the skip, double conv.

    Each step doubles the size of the coarser map (a 2×2 transposed conv, or a bilinear resize then a 1×1 conv)
    to the skip's size and width, concatenates the skip, and runs a double 3×3 conv back to the skip's width; a
    1×1 conv then gives the class logits at ``s1``'s size. The widths follow the inputs, so any encoder with
    four skips fits.

    Args:
        s1_channels: channels of ``s1``, the finest skip (inferred from ``C1``).
        s2_channels: channels of ``s2`` (inferred from ``C2``).
        s3_channels: channels of ``s3`` (inferred from ``C3``).
        s4_channels: channels of ``s4`` (inferred from ``C4``).
        bottom_channels: channels of ``bottom``, the coarsest map (inferred from ``C5``).
        num_classes: number of classes, the background included.
        upsampling: ``transposed`` (the paper's learned 2×2 up-convolution) or ``bilinear``.

    Example:
        >>> encoder = UNetEncoder(in_channels=3, base_channels=8)
        >>> decoder = UNetDecoder(s1_channels=8, s2_channels=16, s3_channels=32, s4_channels=64,
        ...                       bottom_channels=128, num_classes=4)
        >>> decoder(**encoder(torch.zeros(1, 3, 33, 48))).shape
        torch.Size([1, 4, 33, 48])
    """

    def __init__(
        self,
        *,
        s1_channels: Size | None = None,
        s2_channels: Size | None = None,
        s3_channels: Size | None = None,
        s4_channels: Size | None = None,
        bottom_channels: Size | None = None,
        num_classes: Size,
        upsampling: Literal["transposed", "bilinear"] = "transposed",
    ) -> None:
        super().__init__()
        given = [s1_channels, s2_channels, s3_channels, s4_channels, bottom_channels]
        widths = [
            require_inferred(c, f"{lv}_channels", "unet_decoder") for c, lv in zip(given, _UNET_LEVELS, strict=True)
        ]
        # ups[0] goes from the bottom to s4, ups[3] from s2's level to s1.
        self.ups = nn.ModuleList(UpStep(widths[i + 1], widths[i], upsampling) for i in reversed(range(4)))
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, s1: Tensor, s2: Tensor, s3: Tensor, s4: Tensor, bottom: Tensor) -> Tensor:
        x = bottom
        for up, skip in zip(self.ups, (s4, s3, s2, s1), strict=True):
            x = up(x, skip)
        return self.classifier(x)
