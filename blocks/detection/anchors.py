"""Anchor boxes over a feature pyramid: torchvision's ``AnchorGenerator`` as a block.

Each pyramid level gets ``len(sizes[i]) × len(aspect_ratios[i])`` anchors per location, centred on the
location's pixel ``(x·stride, y·stride)`` of the padded batch (stride = padded size // level size), in the order
torchvision lays them out (location-major, then ratio, then size), so a head's outputs line up with them.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from dagcv.registry import PositiveFloat, Size, register_block


def retinanet_anchor_sizes(base_sizes: list[int]) -> list[list[int]]:
    """RetinaNet's three octave scales per level: ``x``, ``int(x·2^(1/3))``, ``int(x·2^(2/3))`` (torchvision's rule).

    Example:
        >>> retinanet_anchor_sizes([32, 64])
        [[32, 40, 50], [64, 80, 101]]
    """
    return [[x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))] for x in base_sizes]


@register_block(
    "anchor_generator",
    family="layer",
    inputs={"images": "Image[B, C, H, W]", "image_sizes": "ImageSizes[B, 2]", "features": "FeaturePyramid"},
    outputs={"anchors": "Boxes"},
    requires={"len(sizes) == len(aspect_ratios)": "sizes and aspect_ratios each give one list per pyramid level"},
)
class Anchors(nn.Module):
    """Anchor boxes (xyxy, padded-image pixels) for every location of every pyramid level, per image.

    torchvision's ``AnchorGenerator``: returns a list of ``B`` tensors of shape ``(sum_l H_l·W_l·A_l)×4``, the levels
    in pyramid order. ``images`` is the padded batch (only its height and width are read).

    Args:
        sizes: anchor side lengths (the square root of the area), one list per pyramid level. RetinaNet:
            ``[[32, 40, 50], [64, 80, 101], [128, 161, 203], [256, 322, 406], [512, 645, 812]]``.
        aspect_ratios: height/width ratios, one list per pyramid level (as many as ``sizes``); ``None`` gives
            ``[0.5, 1.0, 2.0]`` on every level.

    Example:
        >>> import torch
        >>> gen = Anchors(sizes=[[8], [16]], aspect_ratios=[[1.0], [1.0]])
        >>> features = {"0": torch.zeros(1, 4, 4, 4), "1": torch.zeros(1, 4, 2, 2)}
        >>> anchors = gen(torch.zeros(1, 3, 16, 16), torch.tensor([[16, 16]]), features)
        >>> anchors[0].shape, anchors[0][0].tolist(), anchors[0][-1].tolist()
        (torch.Size([20, 4]), [-4.0, -4.0, 4.0, 4.0], [0.0, 0.0, 16.0, 16.0])
    """

    def __init__(self, *, sizes: list[list[Size]], aspect_ratios: list[list[PositiveFloat]] | None = None) -> None:
        super().__init__()
        if aspect_ratios is None:
            aspect_ratios = [[0.5, 1.0, 2.0]] * len(sizes)
        if len(aspect_ratios) != len(sizes):
            raise ValueError(
                f"anchor_generator: {len(sizes)} levels of sizes but {len(aspect_ratios)} of aspect_ratios"
            )
        self.generator = AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per location on each level (what a head's ``num_anchors`` must be)."""
        return self.generator.num_anchors_per_location()

    def forward(self, images: Tensor, image_sizes: Tensor, features: OrderedDict[str, Tensor]) -> list[Tensor]:
        levels = list(features.values())
        if len(levels) != len(self.generator.sizes):
            raise ValueError(
                f"anchor_generator: the pyramid has {len(levels)} levels ({', '.join(features)}) but sizes "
                f"has {len(self.generator.sizes)}"
            )
        sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        return self.generator(ImageList(images, sizes), levels)
