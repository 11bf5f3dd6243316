"""The anchor generator against torchvision's ``AnchorGenerator``, and RetinaNet's anchor sizes."""

from __future__ import annotations

import doctest

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen

import blocks.detection.anchors
from blocks.detection.anchors import Anchors, retinanet_anchor_sizes


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.anchors, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def pyramid(height: int, width: int, strides: list[int]) -> dict[str, torch.Tensor]:
    return {str(i): torch.zeros(2, 4, -(-height // s), -(-width // s)) for i, s in enumerate(strides)}


def test_retinanet_anchors_match_torchvision() -> None:
    sizes = retinanet_anchor_sizes([32, 64, 128, 256, 512])
    reference = _default_anchorgen()
    assert tuple(map(tuple, sizes)) == reference.sizes
    ours = Anchors(sizes=sizes)  # aspect ratios default to 0.5, 1, 2 on every level
    assert ours.num_anchors_per_location() == [9] * 5
    images = torch.zeros(2, 3, 96, 128)
    image_sizes = torch.tensor([[95, 128], [96, 120]])
    features = pyramid(96, 128, [8, 16, 32, 64, 128])
    got = ours(images, image_sizes, features)
    want = reference(ImageList(images, [(95, 128), (96, 120)]), list(features.values()))
    assert len(got) == 2 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert got[0].shape == (9 * (12 * 16 + 6 * 8 + 3 * 4 + 2 * 2 + 1), 4)


def test_per_level_aspect_ratios_match_torchvision() -> None:
    sizes, ratios = [[16], [32, 64]], [[1.0], [0.5, 2.0]]
    ours = Anchors(sizes=sizes, aspect_ratios=ratios)
    reference = AnchorGenerator(((16,), (32, 64)), ((1.0,), (0.5, 2.0)))
    images, features = torch.zeros(2, 3, 37, 50), pyramid(37, 50, [4, 8])
    got = ours(images, torch.tensor([[37, 50], [37, 50]]), features)
    want = reference(ImageList(images, [(37, 50), (37, 50)]), list(features.values()))
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_mismatched_levels_are_errors() -> None:
    with pytest.raises(ValueError, match="2 levels of sizes but 1 of aspect_ratios"):
        Anchors(sizes=[[8], [16]], aspect_ratios=[[1.0]])
    gen = Anchors(sizes=[[8], [16]])
    with pytest.raises(ValueError, match=r"the pyramid has 3 levels \(0, 1, 2\) but sizes has 2"):
        gen(torch.zeros(1, 3, 32, 32), torch.tensor([[32, 32]]), pyramid(32, 32, [4, 8, 16]))
