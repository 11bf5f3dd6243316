"""FCOS: the spec-built detector against torchvision's ``fcos_resnet50_fpn``, weight for weight.

torchvision's model is built with random weights and small images; its ``state_dict`` loads into the model compiled
from ``specs/fcos_r50_fpn.yaml`` through a key map (strictly). Evaluation detections, training losses and every
gradient must be identical, with the RNG fixed before each forward.
"""

from __future__ import annotations

import doctest
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.fcos import FCOSHead as TvFCOSHead

import blocks.detection.fcos
from blocks.detection.fcos import FCOSHead, FCOSLoss, FCOSPostprocess, fcos_match
from dagcv.compiler import compile_spec
from dagcv.spec import load_spec
from tests.detection.overfit import overfit_map50, shapes_batch
from tests.parity import detection_diffs, grad_diff, run_detectors

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 5
MIN_SIZE, MAX_SIZE = 64, 96  # 48×64 images become 64×85, padded to 64×96
FAST_OVERRIDES = [
    "sizes.H=48",
    "sizes.W=64",
    f"blocks.transform.min_size={MIN_SIZE}",
    f"blocks.transform.max_size={MAX_SIZE}",
    f"blocks.head.num_classes={NUM_CLASSES}",
    "blocks.postprocess.score_thresh=0.05",
]


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.fcos, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def spec_key(name: str) -> str:
    """A torchvision FCOS ``state_dict`` key → the spec-built model's (the head's keys are the same)."""
    for old, new in (("backbone.body.", "backbone."), ("backbone.fpn.", "neck.")):
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def example_batch() -> tuple[Tensor, list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 48, 64, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 46.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0], [2.0, 2.0, 9.0, 8.0]]), "labels": torch.tensor([2, 4])},
    ]
    return images, targets


@pytest.fixture(scope="module")
def fcos_pair() -> tuple[nn.Module, nn.Module]:
    """torchvision's FCOS and the spec-built one holding the same weights."""
    torch.manual_seed(0)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=MIN_SIZE,
                           max_size=MAX_SIZE, score_thresh=0.05)  # fmt: skip
    spec = compile_spec(load_spec(ROOT / "specs" / "fcos_r50_fpn.yaml", overrides=FAST_OVERRIDES)).module
    state = {spec_key(k): v for k, v in tv.state_dict().items()}
    assert len(state) == len(tv.state_dict())
    spec.load_state_dict(state, strict=True)
    return tv, spec


def test_fcos_eval_matches_torchvision(fcos_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = fcos_pair
    images, _ = example_batch()
    want, got = run_detectors(tv, spec, images, None, seed=1)
    assert len(got) == 2
    diffs = detection_diffs(got, want, ("boxes", "scores", "labels"), more_than=10)
    assert diffs == {"boxes": 0.0, "scores": 0.0, "labels": 0.0}


def test_fcos_train_matches_torchvision(fcos_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = fcos_pair
    images, targets = example_batch()
    tv.zero_grad(), spec.zero_grad()
    want, got = run_detectors(tv, spec, images, targets, seed=3)
    assert set(got) == set(want) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert {k: abs(got[k].item() - want[k].item()) for k in want} == dict.fromkeys(want, 0.0)
    sum(want.values()).backward()
    sum(got.values()).backward()
    assert grad_diff(tv, spec, spec_key) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# The blocks alone


def test_head_keeps_torchvision_names_and_outputs() -> None:
    torch.manual_seed(0)
    tv_head = TvFCOSHead(32, 1, 3, num_convs=2)
    head = FCOSHead(in_channels=32, num_classes=3, num_convs=2)
    assert list(head.state_dict()) == list(tv_head.state_dict())
    head.load_state_dict(tv_head.state_dict(), strict=True)
    features = OrderedDict([("0", torch.randn(2, 32, 8, 6)), ("p6", torch.randn(2, 32, 4, 3))])
    want, got = tv_head(list(features.values())), head(features)
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key])


def _points(stride: int, h: int, w: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    xy = torch.stack([xs.flatten(), ys.flatten()], 1).float()
    return torch.cat([xy - stride / 2, xy + stride / 2], 1)


def test_matching_rules() -> None:
    # Two levels: stride 8 (4×4 points) and stride 16 (2×2 points).
    points = torch.cat([_points(8, 4, 4), _points(16, 2, 2)])
    sizes = [16, 4]
    box = torch.tensor([[4.0, 4.0, 20.0, 20.0]])  # centre (12, 12); points within 1.5 strides and inside the box
    (matched,) = fcos_match([points], [{"boxes": box, "labels": torch.tensor([1])}], sizes, 1.5)
    positives = (matched >= 0).nonzero().flatten().tolist()
    # Level 0 points at (8, 8), (16, 8), (8, 16), (16, 16): inside, within 12 pixels of the centre, reach < 64.
    # On level 1 the point (16, 16) is inside and near the centre, but its reach max(l, t, r, b) = 12 is under
    # 4 × 16: that level takes larger boxes (the finest level has no lower bound, the coarsest no upper one).
    assert positives == [5, 6, 9, 10] and (matched[positives] == 0).all()
    large = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # reach 24 from (16, 16): still level 0's
    (matched,) = fcos_match([points], [{"boxes": large, "labels": torch.tensor([1])}], sizes, 1.5)
    assert (matched[16:] == -1).all() and (matched[:16] == 0).sum() == 4
    two = torch.tensor([[4.0, 4.0, 20.0, 20.0], [0.0, 0.0, 24.0, 24.0]])  # nested boxes: the smaller one wins
    (matched,) = fcos_match([points], [{"boxes": two, "labels": torch.tensor([1, 2])}], sizes, 1.5)
    assert matched[5].item() == 0
    (empty,) = fcos_match([points], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
                          sizes, 1.5)  # fmt: skip
    assert (empty == -1).all()


def test_loss_without_objects_is_pure_background() -> None:
    points = _points(8, 2, 2)
    logits = torch.full((1, 4, 3), -2.0)
    out = FCOSLoss()(logits, torch.ones(1, 4, 4), torch.zeros(1, 4, 1), [points], {"0": torch.zeros(1, 1, 2, 2)},
                     [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])  # fmt: skip
    assert out["bbox_regression"].item() == 0.0 and out["bbox_ctrness"].item() == 0.0
    assert out["classification"].item() > 0.0


def test_postprocess_keeps_per_level_topk() -> None:
    points = torch.cat([_points(8, 2, 2), _points(16, 1, 1)])
    logits = torch.zeros(1, 5, 2)
    out = FCOSPostprocess(score_thresh=0.0, topk_candidates=3, nms_thresh=1.0)(
        logits, torch.ones(1, 5, 4), torch.zeros(1, 5, 1), [points],
        {"0": torch.zeros(1, 1, 2, 2), "1": torch.zeros(1, 1, 1, 1)}, torch.tensor([[16, 16]]),
    )  # fmt: skip
    assert len(out[0]["boxes"]) == 3 + 2  # 3 of level 0's 8 candidates, both of level 1's


@pytest.mark.slow
def test_tiny_shapes_fcos_overfits_eight_images(tmp_path: Path) -> None:
    """specs/fcos_tiny_shapes.yaml (the benchmark's one-stage detector) learns: full-batch Adam steps on 8 images,
    then COCO mAP@0.5 on them."""
    from dagcv.compiler import compile_file

    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / "fcos_tiny_shapes.yaml").module
    images, targets = shapes_batch(tmp_path, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    map_50 = overfit_map50(model, images, targets, steps=100, optimizer=optimizer, clip=10.0)
    assert map_50 >= 0.9, f"fcos_tiny_shapes overfit: mAP@0.5 = {map_50:.3f} after 100 steps"
