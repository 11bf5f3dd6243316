"""The detection transform blocks against torchvision's ``GeneralizedRCNNTransform``, and their shape contracts."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import blocks.detection.transform
from blocks.detection.transform import DetectionRescale, FixedSizeTransform, RCNNTransform
from dagcv.compiler import compile_spec
from dagcv.registry import registry
from dagcv.spec.parse import parse_spec_text
from dagcv.types import Dim, evaluate_dims, rcnn_resize


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.transform, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def batch(height: int, width: int, n: int = 2) -> tuple[Tensor, list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(height * 1000 + width)
    images = torch.rand(n, 3, height, width, generator=g)
    targets = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=g) * torch.tensor([width / 2, height / 2])
        boxes = torch.cat([xy, xy + 1 + torch.rand(3, 2, generator=g) * torch.tensor([width / 2, height / 2])], 1)
        masks = (torch.rand(3, height, width, generator=g) > 0.5).to(torch.uint8)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks})
    return images, targets


def contract_dims(block: str, port: str, sizes: dict[str, int], params: dict[str, int]) -> list[int]:
    contract = registry().get(block)
    env = {k: Dim.symbol(k, v) for k, v in sizes.items()} | params
    return [d.value for d in evaluate_dims(contract.output(port).parsed.dims, env)]


CASES = [  # (H, W, min_size, max_size, size_divisible): odd sizes, both orientations, both limits binding
    (75, 101, 96, 128, 32),
    (101, 75, 96, 128, 32),
    (33, 47, 800, 1333, 32),
    (480, 640, 800, 1333, 32),
    (37, 211, 64, 100, 7),
    (64, 64, 64, 64, 1),
    (17, 5, 20, 31, 16),
]


@pytest.mark.parametrize(("height", "width", "min_size", "max_size", "divisible"), CASES)
def test_rcnn_transform_matches_torchvision_and_its_contract(height, width, min_size, max_size, divisible) -> None:
    images, targets = batch(height, width)
    ours = RCNNTransform(min_size=min_size, max_size=max_size, size_divisible=divisible)
    reference = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], divisible)
    torch.manual_seed(3)
    want_images, want_targets = reference(list(images), copy.deepcopy(targets))
    torch.manual_seed(3)
    got = ours(images, copy.deepcopy(targets))
    rng_after = torch.rand(1)
    torch.manual_seed(3)
    reference(list(images), copy.deepcopy(targets))
    assert torch.equal(torch.rand(1), rng_after)  # the same draws from the global RNG
    assert torch.equal(got["images"], want_images.tensors)
    assert got["image_sizes"].dtype == torch.int64
    assert [tuple(s) for s in got["image_sizes"].tolist()] == want_images.image_sizes
    for g, w in zip(got["targets"], want_targets, strict=True):
        assert all(torch.equal(g[k], w[k]) for k in ("boxes", "labels", "masks"))

    sizes, params = {"B": 2, "H": height, "W": width}, {"min_size": min_size, "max_size": max_size}
    params["size_divisible"] = divisible
    resized = [
        rcnn_resize(height, height, width, min_size, max_size),
        rcnn_resize(width, height, width, min_size, max_size),
    ]
    assert got["image_sizes"].tolist() == [resized, resized]
    assert list(got["images"].shape) == contract_dims("rcnn_transform", "images", sizes, params)
    assert contract_dims("rcnn_transform", "targets", sizes, params) == [2, *resized]
    assert list(got["targets"][0]["masks"].shape[1:]) == resized


def test_rcnn_resize_agrees_with_torchvision_on_many_sizes() -> None:
    reference = GeneralizedRCNNTransform(64, 100, [0.0] * 3, [1.0] * 3, 1).eval()
    for height in range(1, 90, 7):
        for width in (1, 3, 50, 61, 99, 140):
            if min(rcnn_resize(side, height, width, 64, 100) for side in (height, width)) == 0:
                continue  # torchvision cannot resize to an empty image either
            image = torch.zeros(3, height, width)
            want = reference(image[None].unbind(0))[0].image_sizes[0]
            assert (rcnn_resize(height, height, width, 64, 100), rcnn_resize(width, height, width, 64, 100)) == want


def test_evaluation_without_targets_gives_none_and_draws_nothing() -> None:
    images, targets = batch(40, 50)
    ours = RCNNTransform(min_size=32, max_size=64).eval()
    state = torch.get_rng_state()
    out = ours(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert out["targets"] is None and out["images"].shape == (2, 3, 32, 64)
    given = ours(images, targets)["targets"]  # given targets are resized in either mode, like torchvision
    assert given[0]["masks"].shape == (3, 32, 40) and targets[0]["masks"].shape == (3, 40, 50)


def test_fixed_size_transform_matches_torchvisions_ssd_transform() -> None:
    images, targets = batch(45, 70)
    ours = FixedSizeTransform(height=30, width=40, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.2, 0.3])
    reference = GeneralizedRCNNTransform(
        30, 40, [0.5, 0.4, 0.3], [0.2, 0.2, 0.3], size_divisible=1, fixed_size=(40, 30)
    )
    torch.manual_seed(0)
    want_images, want_targets = reference(list(images), copy.deepcopy(targets))
    torch.manual_seed(0)
    got = ours(images, copy.deepcopy(targets))
    assert got["images"].shape == (2, 3, 30, 40) and torch.equal(got["images"], want_images.tensors)
    assert got["image_sizes"].tolist() == [[30, 40], [30, 40]]
    assert all(torch.equal(g["boxes"], w["boxes"]) for g, w in zip(got["targets"], want_targets, strict=True))
    params = {"height": 30, "width": 40}
    assert contract_dims("fixed_size_transform", "images", {"B": 2, "H": 45, "W": 70}, params) == [2, 3, 30, 40]


def test_detection_rescale_matches_postprocess_with_masks() -> None:
    g = torch.Generator().manual_seed(0)
    detections = []
    for n in (4, 0):
        xy = torch.rand(n, 2, generator=g) * 40
        detections.append({
            "boxes": torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 20], 1),
            "scores": torch.rand(n, generator=g),
            "labels": torch.randint(1, 4, (n,), generator=g),
            "masks": torch.rand(n, 1, 28, 28, generator=g),
        })  # fmt: skip
    resized, original = [(64, 80), (60, 80)], (50, 63)
    reference = GeneralizedRCNNTransform(64, 80, [0.0] * 3, [1.0] * 3).eval()
    want = reference.postprocess(copy.deepcopy(detections), resized, [original, original])
    got = DetectionRescale()(detections, torch.tensor(resized), torch.zeros(2, 3, *original))
    for g_, w in zip(got, want, strict=True):
        assert set(g_) == set(w) and all(torch.equal(g_[k], w[k]) for k in w)
    assert got[0]["masks"].shape == (4, 1, 50, 63)
    assert detections[0]["masks"].shape == (4, 1, 28, 28)  # the input is left alone


SPEC = """\
dagcv: 1
name: transform
inputs:
  image: Image[B, 3, H, W]
  targets: Targets[B, H, W]
sizes: {H: 75, W: 101}
blocks:
  transform: {type: rcnn_transform, in: {images: image, targets: targets}, min_size: 96, max_size: 128}
outputs:
  images: transform.images
  image_sizes: transform.image_sizes
"""


def test_a_spec_checks_the_contract_at_odd_sizes_and_targets_are_optional() -> None:
    # Shape propagation runs the block on the example sizes and checks its outputs against the contract.
    compiled = compile_spec(parse_spec_text(SPEC, "transform.yaml"))
    assert [d.value for d in compiled.built.sg.node("transform")["shapes"]["images"]] == [2, 3, 96, 128]
    out = compiled.module.eval()(image=torch.rand(2, 3, 75, 101))  # no targets: an optional argument
    assert out["images"].shape == (2, 3, 96, 128) and out["image_sizes"].tolist() == [[95, 128], [95, 128]]
