"""Mask R-CNN: the mask blocks, and the spec-built detector against torchvision's ``maskrcnn_resnet50_fpn``.

Same method as ``test_fasterrcnn.py`` (whose helpers this reuses): random torchvision weights loaded strictly
through the key map, then identical detections (boxes, scores, labels, pasted masks), the five training losses and
every gradient, with the RNG fixed before each forward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss

from blocks.detection.roi_heads import MaskRcnnLoss, MaskRcnnPostprocess, MaskRoiSelect, mask_head, mask_predictor
from tests.detection.test_fasterrcnn import (
    FAST,
    SIZE,
    compare_eval,
    compare_train,
    compile_spec_fast,
    example_batch,
    load_into_spec,
)


def test_mask_roi_select_picks_positives_in_training_and_detections_in_eval() -> None:
    proposals = [torch.arange(12.0).view(3, 4), torch.arange(8.0).view(2, 4) + 100]
    labels, matched = torch.tensor([2, 0, 1, 0, 3]), torch.tensor([1, 0, 0, 0, 2])
    out = MaskRoiSelect().train()(proposals, labels, matched)
    assert [b.tolist() for b in out["boxes"]] == [[[0, 1, 2, 3], [8, 9, 10, 11]], [[104, 105, 106, 107]]]
    assert out["matched_idxs"].tolist() == [1, 0, 2]
    detections = [{"boxes": torch.ones(4, 4)}, {"boxes": torch.zeros(0, 4)}]
    out = MaskRoiSelect().eval()(proposals, None, None, detections)
    assert out["boxes"][0] is detections[0]["boxes"] and out["boxes"][1] is detections[1]["boxes"]
    assert out["matched_idxs"] is None


def test_mask_loss_and_postprocess_are_torchvision_functions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 28, 28, generator=g)
    boxes = [torch.tensor([[0.0, 0, 20, 20], [5, 5, 30, 25]]), torch.tensor([[2.0, 3, 40, 30]])]
    matched = torch.tensor([0, 1, 0])
    targets = [
        {"labels": torch.tensor([1, 2]), "masks": (torch.rand(2, 32, 48, generator=g) > 0.5).to(torch.uint8)},
        {"labels": torch.tensor([3]), "masks": (torch.rand(1, 32, 48, generator=g) > 0.5).to(torch.uint8)},
    ]
    want = maskrcnn_loss(logits, boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
                         [matched[:2], matched[2:]])  # fmt: skip
    assert torch.equal(MaskRcnnLoss()(logits, boxes, matched, targets), want)
    detections = [{"boxes": boxes[0], "labels": torch.tensor([1, 3])}, {"boxes": boxes[1], "labels": torch.tensor([2])}]
    out = MaskRcnnPostprocess()(logits, detections)
    for got, want_masks in zip(out, maskrcnn_inference(logits, [d["labels"] for d in detections]), strict=True):
        assert torch.equal(got["masks"], want_masks)
    assert "masks" not in detections[0]  # the input dicts are left alone


def test_mask_head_and_predictor_keep_torchvision_names() -> None:
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    assert list(mask_head(in_channels=8).state_dict()) == list(MaskRCNNHeads(8, [256] * 4, 1).state_dict())
    assert list(mask_predictor(in_channels=8, num_classes=3).state_dict()) == list(
        MaskRCNNPredictor(8, 256, 3).state_dict()
    )


# ---------------------------------------------------------------------------------------------------------------
# Parity with torchvision's maskrcnn_resnet50_fpn


@pytest.fixture(scope="module")
def maskrcnn_pair() -> tuple[nn.Module, nn.Module]:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=SIZE, max_size=SIZE,
                               box_score_thresh=0.0, **FAST)  # fmt: skip
    overrides = ["blocks.box_predictor.num_classes=5", "blocks.mask_predictor.num_classes=5"]
    spec = compile_spec_fast("maskrcnn_r50_fpn.yaml", overrides).module
    load_into_spec(tv, spec)
    return tv, spec


def test_maskrcnn_eval_matches_torchvision(maskrcnn_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = maskrcnn_pair
    images, _ = example_batch()
    diffs = compare_eval(tv, spec, images, ("boxes", "labels", "scores", "masks"))
    assert diffs == {"boxes": 0.0, "labels": 0.0, "scores": 0.0, "masks": 0.0}


def test_maskrcnn_train_matches_torchvision(maskrcnn_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = maskrcnn_pair
    images, targets = example_batch()
    loss_diffs, grad_diff = compare_train(tv, spec, images, targets)
    assert set(loss_diffs) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"}
    assert max(loss_diffs.values()) == 0.0 and grad_diff == 0.0


def test_maskrcnn_spec_has_torchvision_defaults() -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from tests.detection.test_fasterrcnn import assert_rcnn_defaults_match, spec_blocks

    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    built = spec_blocks("maskrcnn_r50_fpn.yaml")
    assert_rcnn_defaults_match(tv, built)
    assert repr(built["mask_roi_align"].pool) == repr(tv.roi_heads.mask_roi_pool)
