"""Necks: a backbone's stages in, a feature pyramid out.

Both necks are torchvision's ``FeaturePyramidNetwork`` itself (a subclass that only names its inputs), so the
keys of a torchvision detector's ``backbone.fpn.*`` load into a neck node by swapping that prefix for the node's
name. Each input level's channels are inferred from the stage that feeds it, so any backbone with ``c2``-``c5``
outputs plugs in.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from dagcv.registry import Size, register_block


@register_block(
    "fpn",
    family="neck",
    inputs={
        "c2": "FeatureMap[B, C2, H2, W2]",
        "c3": "FeatureMap[B, C3, H3, W3]",
        "c4": "FeatureMap[B, C4, H4, W4]",
        "c5": "FeatureMap[B, C5, H5, W5]",
    },
    outputs={"features": "FeaturePyramid[B, out_channels]"},
    infer={"c2_channels": "C2", "c3_channels": "C3", "c4_channels": "C4", "c5_channels": "C5"},
    param_count="36 * out_channels * out_channels + out_channels * (c3_channels + c4_channels + c5_channels)",
)
class FPN(FeaturePyramidNetwork):
    """Feature pyramid over ``c2``-``c5`` plus a max-pooled extra level (Faster / Mask R-CNN).

    torchvision's ``resnet_fpn_backbone`` neck: a 1×1 lateral conv per level, top-down nearest upsampling and
    sum, a 3×3 output conv per level, and ``LastLevelMaxPool`` (a 1×1 max-pool with stride 2 over the coarsest
    output). The pyramid's keys are torchvision's: ``'0'``-``'3'`` (strides 4-32) and ``'pool'`` (stride 64).

    Args:
        c2_channels: channels of ``c2`` (inferred).
        c3_channels: channels of ``c3`` (inferred).
        c4_channels: channels of ``c4`` (inferred).
        c5_channels: channels of ``c5`` (inferred).
        out_channels: channels of every pyramid level.

    Example:
        >>> import torch
        >>> fpn = FPN(c2_channels=8, c3_channels=16, c4_channels=32, c5_channels=64, out_channels=4)
        >>> x = {f"c{k}": torch.zeros(1, 2 ** (k + 1), 2 ** (7 - k), 2 ** (7 - k)) for k in (2, 3, 4, 5)}
        >>> {k: tuple(v.shape) for k, v in fpn(**x).items()}
        {'0': (1, 4, 32, 32), '1': (1, 4, 16, 16), '2': (1, 4, 8, 8), '3': (1, 4, 4, 4), 'pool': (1, 4, 2, 2)}
    """

    def __init__(
        self, *, c2_channels: Size, c3_channels: Size, c4_channels: Size, c5_channels: Size, out_channels: Size = 256
    ) -> None:
        super().__init__(
            in_channels_list=[c2_channels, c3_channels, c4_channels, c5_channels],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
        )

    def forward(self, c2: Tensor, c3: Tensor, c4: Tensor, c5: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return super().forward(OrderedDict([("0", c2), ("1", c3), ("2", c4), ("3", c5)]))


@register_block(
    "fpn_p3p7",
    family="neck",
    inputs={
        "c3": "FeatureMap[B, C3, H3, W3]",
        "c4": "FeatureMap[B, C4, H4, W4]",
        "c5": "FeatureMap[B, C5, H5, W5]",
    },
    outputs={"features": "FeaturePyramid[B, out_channels]"},
    infer={"c3_channels": "C3", "c4_channels": "C4", "c5_channels": "C5"},
    param_count="45 * out_channels * out_channels + out_channels * (c3_channels + c4_channels + c5_channels)",
)
class FPNP3P7(FeaturePyramidNetwork):
    """Feature pyramid P3-P7 over ``c3``-``c5`` with two strided extra levels (RetinaNet, FCOS).

    The neck of torchvision's ``retinanet_resnet50_fpn``: P3-P5 as in ``fpn``, then ``LastLevelP6P7``: P6 is a
    3×3 stride-2 conv of P5 (``out_channels`` in and out, torchvision's v1 layout; FCOS uses the same), P7 a 3×3
    stride-2 conv of ReLU(P6). Keys: ``'0'``-``'2'`` (strides 8-32), ``'p6'``, ``'p7'`` (64, 128).

    Args:
        c3_channels: channels of ``c3`` (inferred).
        c4_channels: channels of ``c4`` (inferred).
        c5_channels: channels of ``c5`` (inferred).
        out_channels: channels of every pyramid level.

    Example:
        >>> import torch
        >>> fpn = FPNP3P7(c3_channels=16, c4_channels=32, c5_channels=64, out_channels=4)
        >>> x = {f"c{k}": torch.zeros(1, 2 ** (k + 1), 2 ** (8 - k), 2 ** (8 - k)) for k in (3, 4, 5)}
        >>> {k: tuple(v.shape) for k, v in fpn(**x).items()}
        {'0': (1, 4, 32, 32), '1': (1, 4, 16, 16), '2': (1, 4, 8, 8), 'p6': (1, 4, 4, 4), 'p7': (1, 4, 2, 2)}
    """

    def __init__(self, *, c3_channels: Size, c4_channels: Size, c5_channels: Size, out_channels: Size = 256) -> None:
        super().__init__(
            in_channels_list=[c3_channels, c4_channels, c5_channels],
            out_channels=out_channels,
            extra_blocks=LastLevelP6P7(out_channels, out_channels),
        )

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return super().forward(OrderedDict([("0", c3), ("1", c4), ("2", c5)]))
