"""Faster R-CNN: the RoI blocks one by one, and the spec-built detector against torchvision's, weight for weight.

The parity tests build torchvision's ``fasterrcnn_resnet50_fpn`` with random weights and small images, load its
``state_dict`` into the model compiled from ``specs/fasterrcnn_r50_fpn.yaml`` through a key map (strictly), and
compare evaluation outputs, training losses and gradients with the RNG fixed before each forward.
"""

from __future__ import annotations

import doctest
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import roi_align, roi_pool

import blocks.detection.roi_heads
from blocks.detection.roi_heads import MultiScaleRoiAlign, RoiAlign, RoiPool, RoiSampler
from tests.detection.overfit import overfit_map50, shapes_batch
from tests.parity import detection_diffs, grad_diff, run_detectors

ROOT = Path(__file__).resolve().parents[2]


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.roi_heads, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# ---------------------------------------------------------------------------------------------------------------
# The RoI blocks


def _proposals_and_targets() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    proposals = []
    for n in (30, 20):
        xy = torch.rand(n, 2, generator=g) * 40
        proposals.append(torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 20], dim=1))
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 58.0, 50.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
    ]
    return proposals, targets


def test_sampler_passes_proposals_through_in_eval() -> None:
    proposals, targets = _proposals_and_targets()
    sampler = RoiSampler(batch_size_per_image=8).eval()
    for given in (None, targets):  # evaluation ignores targets, and draws nothing from the RNG
        state = torch.get_rng_state()
        out = sampler(proposals, given)
        assert torch.equal(torch.get_rng_state(), state)
        assert out["proposals"] is proposals
        assert out["labels"] is None and out["matched_idxs"] is None and out["regression_targets"] is None


def test_sampler_matches_select_training_samples() -> None:
    proposals, targets = _proposals_and_targets()
    sampler = RoiSampler(batch_size_per_image=16, positive_fraction=0.25, fg_iou_thresh=0.4, bg_iou_thresh=0.3)
    heads = RoIHeads(None, None, None, 0.4, 0.3, 16, 0.25, None, 0.05, 0.5, 100)
    torch.manual_seed(5)
    want_props, want_idxs, want_labels, want_targets = heads.select_training_samples(proposals, targets)
    torch.manual_seed(5)
    out = sampler.train()(proposals, targets)
    assert len(out["proposals"]) == 2
    for got, want in zip(out["proposals"], want_props, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(out["labels"], torch.cat(want_labels))
    assert torch.equal(out["matched_idxs"], torch.cat(want_idxs))
    assert torch.equal(out["regression_targets"], torch.cat(want_targets))
    assert len(out["labels"]) == sum(len(p) for p in out["proposals"]) == len(out["regression_targets"])
    assert (out["labels"] > 0).any() and (out["labels"] == 0).any()


def test_sampler_needs_targets_in_training() -> None:
    proposals, _ = _proposals_and_targets()
    with pytest.raises(ValueError, match="targets are required"):
        RoiSampler().train()(proposals)


def test_roi_pool_matches_torchvision_ops() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 16, 20, generator=g)
    boxes, _ = _proposals_and_targets()
    out = RoiPool(output_size=5, spatial_scale=0.25)(features, boxes)
    assert out.shape == (50, 3, 5, 5)
    assert torch.equal(out, roi_pool(features, boxes, 5, 0.25))
    assert list(RoiPool().state_dict()) == []


def test_roi_align_matches_torchvision_ops() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 16, 20, generator=g)
    boxes, _ = _proposals_and_targets()
    out = RoiAlign(output_size=4, spatial_scale=0.25, sampling_ratio=2, aligned=True)(features, boxes)
    assert torch.equal(out, roi_align(features, boxes, 4, 0.25, 2, True))


def test_multiscale_roi_align_works_out_scales_per_batch() -> None:
    """Shape propagation calls the block once with example sizes; later batches must not reuse those scales."""
    boxes, _ = _proposals_and_targets()
    pool = MultiScaleRoiAlign(featmap_names=["0", "1"], output_size=3)
    small = OrderedDict([("0", torch.randn(2, 4, 4, 4)), ("1", torch.randn(2, 4, 2, 2))])
    pool(small, boxes, torch.tensor([[16, 16], [16, 16]]))
    g = torch.Generator().manual_seed(0)
    features = OrderedDict([("0", torch.randn(2, 4, 16, 16, generator=g)), ("1", torch.randn(2, 4, 8, 8, generator=g))])
    sizes = torch.tensor([[64, 64], [60, 64]])
    from torchvision.ops import MultiScaleRoIAlign

    want = MultiScaleRoIAlign(["0", "1"], 3, 2)(features, boxes, [(64, 64), (60, 64)])
    assert torch.equal(pool(features, boxes, sizes), want)


# ---------------------------------------------------------------------------------------------------------------
# Parity with torchvision's detectors (shared with test_maskrcnn.py)

# torchvision key prefix → spec node prefix
KEY_MAP = {
    "backbone.body.": "backbone.",
    "backbone.fpn.": "fpn.",
    "rpn.head.": "rpn_head.",
    "roi_heads.box_head.": "box_head.",
    "roi_heads.box_predictor.": "box_predictor.",
    "roi_heads.mask_head.": "mask_head.",
    "roi_heads.mask_predictor.": "mask_predictor.",
}
SIZE = 64
# Small enough for a CPU test; the same numbers go to torchvision's builder and, as overrides, to the spec.
FAST = {
    "rpn_pre_nms_top_n_train": 200, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "box_detections_per_img": 20,
}  # fmt: skip
FAST_OVERRIDES = [
    f"blocks.transform.min_size={SIZE}", f"blocks.transform.max_size={SIZE}",
    f"sizes.H={SIZE}", f"sizes.W={SIZE}",
    "blocks.rpn_proposals.pre_nms_top_n_train=200", "blocks.rpn_proposals.pre_nms_top_n_test=100",
    "blocks.rpn_proposals.post_nms_top_n_train=100", "blocks.rpn_proposals.post_nms_top_n_test=50",
    "blocks.roi_sampler.batch_size_per_image=32", "blocks.postprocess.detections_per_img=20",
    "blocks.postprocess.score_thresh=0.0",
]  # fmt: skip


def spec_key(key: str) -> str:
    """A torchvision detector's state_dict key under the spec's node names; every key must have a rule."""
    prefix = next((p for p in KEY_MAP if key.startswith(p)), None)
    assert prefix is not None, f"no key-map rule for {key}"
    return KEY_MAP[prefix] + key[len(prefix) :]


def renamed_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision detector's state_dict under the spec's node names."""
    return {spec_key(key): value for key, value in state.items()}


def example_batch(height: int = SIZE, width: int = 80) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Two images of one size with 2 and 3 boxes (labels 1-3) and their box-shaped masks."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, height, width, generator=g)
    all_boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0], [30.0, 30.0, 60.0, 62.0]])
    targets = []
    for n in (2, 3):
        boxes = all_boxes[:n].clone()
        masks = torch.zeros(n, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist(), strict=True):
            mask[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 3, 2][:n]), "masks": masks})
    return images, targets


def load_into_spec(tv: nn.Module, spec: nn.Module) -> None:
    spec.load_state_dict(renamed_state_dict(tv.state_dict()), strict=True)


def compare_eval(tv: nn.Module, spec: nn.Module, images: Tensor, keys: tuple[str, ...]) -> dict[str, float]:
    """Max abs differences of each detection field over both images (the numbers of detections must agree)."""
    want, got = run_detectors(tv, spec, images, None, seed=0)
    return detection_diffs(got, want, keys)


def compare_train(
    tv: nn.Module, spec: nn.Module, images: Tensor, targets: list[dict[str, Tensor]]
) -> tuple[dict[str, float], float]:
    """Max abs differences of each loss, and of every parameter's gradient (matched through the key map)."""
    want, outputs = run_detectors(tv, spec, images, targets, seed=3)
    got = {k: v for k, v in outputs.items() if k.startswith("loss")}
    assert set(got) == set(want)
    loss_diffs = {k: abs(got[k].item() - want[k].item()) for k in want}
    sum(want.values()).backward()
    sum(got[k] for k in want).backward()
    return loss_diffs, grad_diff(tv, spec, spec_key)


def compile_spec_fast(name: str, extra: list[str] | None = None) -> Any:
    from dagcv.compiler import compile_spec
    from dagcv.spec import load_spec

    return compile_spec(load_spec(ROOT / "specs" / name, overrides=[*FAST_OVERRIDES, *(extra or [])]))


def torchvision_fasterrcnn(num_classes: int) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, min_size=SIZE,
                                   max_size=SIZE, box_score_thresh=0.0, **FAST)  # fmt: skip


@pytest.fixture(scope="module")
def fasterrcnn_pair() -> tuple[nn.Module, nn.Module]:
    """torchvision's Faster R-CNN (7 classes) and the spec-built one with its weights."""
    tv = torchvision_fasterrcnn(7)
    spec = compile_spec_fast("fasterrcnn_r50_fpn.yaml", ["blocks.box_predictor.num_classes=7"]).module
    load_into_spec(tv, spec)
    return tv, spec


def test_fasterrcnn_eval_matches_torchvision(fasterrcnn_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = fasterrcnn_pair
    images, _ = example_batch()
    diffs = compare_eval(tv, spec, images, ("boxes", "labels", "scores"))
    assert diffs == {"boxes": 0.0, "labels": 0.0, "scores": 0.0}


def test_fasterrcnn_train_matches_torchvision(fasterrcnn_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = fasterrcnn_pair
    images, targets = example_batch()
    for t in targets:
        del t["masks"]
    loss_diffs, grad_diff = compare_train(tv, spec, images, targets)
    assert set(loss_diffs) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert max(loss_diffs.values()) == 0.0 and grad_diff == 0.0


def spec_blocks(name: str) -> dict[str, Any]:
    """Every block of a shipped spec built from its checked parameters (static checking only, no propagation)."""
    from dagcv.compiler import check_file

    sg = check_file(ROOT / "specs" / name)
    objects = {}
    for node in sg.blocks():
        data = sg.node(node)
        kwargs = {**data["params"], **{k: v for k, v in data.get("inferred", {}).items() if v is not None}}
        objects[node] = sg.registry.implementation(data["contract"].name)(**kwargs)
    return objects


def assert_rcnn_defaults_match(tv: nn.Module, built: dict[str, Any]) -> None:
    """The spec's architecture (every parameter's shape) and its settings are torchvision's defaults."""
    model = nn.ModuleDict({k: v for k, v in built.items() if isinstance(v, nn.Module)})
    want = {k: tuple(v.shape) for k, v in renamed_state_dict(tv.state_dict()).items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want

    transform = built["transform"].transform
    for attr in ("min_size", "max_size", "image_mean", "image_std", "size_divisible"):
        assert getattr(transform, attr) == getattr(tv.transform, attr), attr
    assert built["anchors"].generator.sizes == tv.rpn.anchor_generator.sizes
    assert built["anchors"].generator.aspect_ratios == tv.rpn.anchor_generator.aspect_ratios

    proposals, rpn_loss, rpn = built["rpn_proposals"].rpn, built["rpn_loss"].rpn, tv.rpn
    assert (proposals._pre_nms_top_n, proposals._post_nms_top_n) == (rpn._pre_nms_top_n, rpn._post_nms_top_n)
    assert (proposals.nms_thresh, proposals.score_thresh, proposals.min_size) == (
        rpn.nms_thresh, rpn.score_thresh, rpn.min_size)  # fmt: skip
    assert_sampling_equal(rpn_loss, rpn)

    sampler, post, heads = built["roi_sampler"].roi_heads, built["postprocess"].roi_heads, tv.roi_heads
    assert_sampling_equal(sampler, heads)
    assert sampler.box_coder.weights == post.box_coder.weights == heads.box_coder.weights
    assert (post.score_thresh, post.nms_thresh, post.detections_per_img) == (0.05, 0.5, 100) == (
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img)  # fmt: skip
    assert repr(built["box_roi_align"].pool) == repr(heads.box_roi_pool)


def assert_sampling_equal(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.proposal_matcher, theirs.proposal_matcher
    assert (a.high_threshold, a.low_threshold, a.allow_low_quality_matches) == (
        b.high_threshold, b.low_threshold, b.allow_low_quality_matches)  # fmt: skip
    a, b = ours.fg_bg_sampler, theirs.fg_bg_sampler
    assert (a.batch_size_per_image, a.positive_fraction) == (b.batch_size_per_image, b.positive_fraction)
    assert ours.box_coder.weights == theirs.box_coder.weights


def test_fasterrcnn_spec_has_torchvision_defaults() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    assert_rcnn_defaults_match(tv, spec_blocks("fasterrcnn_r50_fpn.yaml"))


@pytest.mark.slow
def test_small_shapes_detector_overfits_eight_images(tmp_path: Path) -> None:
    """specs/fasterrcnn_r18_shapes.yaml learns: 80 full-batch SGD steps on 8 images, then COCO mAP@0.5 on them
    (about 2 minutes on one thread)."""
    from dagcv.compiler import compile_file

    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / "fasterrcnn_r18_shapes.yaml").module
    images, targets = shapes_batch(tmp_path, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    map_50 = overfit_map50(model, images, targets, steps=80, optimizer=optimizer, clip=10.0)
    print(f"fasterrcnn_r18_shapes overfit: mAP@0.5 = {map_50:.3f} after 80 steps")
    assert map_50 >= 0.9


@pytest.mark.slow
def test_tiny_shapes_detector_overfits_eight_images(tmp_path: Path) -> None:
    """specs/fasterrcnn_tiny_shapes.yaml (the benchmark's two-stage detector) learns the same way."""
    from dagcv.compiler import compile_file

    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / "fasterrcnn_tiny_shapes.yaml").module
    images, targets = shapes_batch(tmp_path, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    map_50 = overfit_map50(model, images, targets, steps=80, optimizer=optimizer, clip=10.0)
    assert map_50 >= 0.9, f"fasterrcnn_tiny_shapes overfit: mAP@0.5 = {map_50:.3f} after 80 steps"
