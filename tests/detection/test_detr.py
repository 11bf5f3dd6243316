"""DETR blocks: the matcher, the set loss against hand computation, post-processing, and the tiny spec overfitting."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from blocks.detection.detr import (
    DetrHead,
    DetrTransformer,
    HungarianMatcher,
    SetCriterion,
    sine_position_encoding,
)
from dagcv.registry import registry
from tests.detection.overfit import overfit_map50, shapes_batch, single_threaded

SPEC = Path(__file__).resolve().parents[2] / "specs" / "detr_tiny.yaml"


def giou(a: list[float], b: list[float]) -> float:
    """GIoU of two xyxy boxes, in plain Python."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def xyxy(cxcywh: list[float]) -> list[float]:
    cx, cy, w, h = cxcywh
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_sine_position_encoding_follows_detr() -> None:
    pos = sine_position_encoding(2, 3, 8)  # 4 channels for y, then 4 for x; frequencies 1, 1, 100, 100
    y, x = 2 * (2 * math.pi) / (2 + 1e-6), 3 * (2 * math.pi) / (3 + 1e-6)  # the last row and column
    want = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100)]
    want += [math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    torch.testing.assert_close(pos[-1], torch.tensor(want))
    assert len({tuple(row.tolist()) for row in pos}) == 6  # every position distinct


def test_transformer_and_head_give_one_detection_per_query() -> None:
    torch.manual_seed(0)
    transformer = DetrTransformer(in_channels=32, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                  dim_feedforward=32, num_queries=7)  # fmt: skip
    out = DetrHead(d_model=16, num_classes=4)(transformer(torch.randn(3, 32, 2, 5)))
    assert out["logits"].shape == (3, 7, 5) and out["boxes"].shape == (3, 7, 4)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()


def test_matcher_recovers_a_known_permutation() -> None:
    torch.manual_seed(0)
    num_queries, height, width = 8, 48, 64
    xy = torch.rand(5, 2) * torch.tensor([width - 20, height - 20])
    boxes = torch.cat([xy, xy + 5 + torch.rand(5, 2) * 15], dim=1)  # absolute xyxy
    labels = torch.tensor([1, 3, 2, 1, 2])
    perm = torch.randperm(num_queries)[:5]  # target j is predicted by query perm[j]
    scale = torch.tensor([width, height, width, height])
    pred = torch.rand(1, num_queries, 4) * 0.2 + 0.4  # decoys in the middle
    cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1) / scale
    pred[0, perm] = cxcywh + 0.01 * torch.randn(5, 4)
    logits = torch.zeros(1, num_queries, 5)
    logits[0, perm, labels] = 3.0

    matcher = registry().implementation("hungarian_matcher")(image_height=height, image_width=width)
    [(queries, targets)] = matcher(logits, pred, [{"boxes": boxes, "labels": labels}])
    assert torch.equal(queries, perm.sort().values)
    assert torch.equal(queries, perm[targets])


def test_matcher_handles_an_image_without_objects() -> None:
    matcher = HungarianMatcher(image_height=8, image_width=8)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    [(queries, targets)] = matcher(torch.zeros(1, 3, 4), torch.full((1, 3, 4), 0.5), [empty])
    assert queries.numel() == targets.numel() == 0


def test_set_criterion_by_hand() -> None:
    # Image 0: two objects on a 10×10 canvas; query 2 fits object 0, query 0 fits object 1, query 1 is spare.
    # Image 1: no objects, so all three of its queries should say "no object" (class 3).
    boxes = torch.tensor([[[0.7, 0.7, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2], [0.25, 0.2, 0.4, 0.3]],
                          [[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3], [0.5, 0.4, 0.3, 0.3]]])  # fmt: skip
    logits = torch.tensor([[[0.1, 0.2, 2.0, 0.3], [0.0, 0.5, 0.1, 1.0], [0.2, 1.5, 0.1, 0.0]],
                           [[0.3, 0.0, 0.4, 0.2], [1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]])  # fmt: skip
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 10.0, 9.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    eos = 0.2
    losses = SetCriterion(num_classes=3, image_height=10, image_width=10, eos_coef=eos)(logits, boxes, targets)

    target_classes = [[2, 3, 1], [3, 3, 3]]
    weight = [1.0, 1.0, 1.0, eos]
    nll, norm = 0.0, 0.0
    for b in range(2):
        for q in range(3):
            row, c = logits[b, q].tolist(), target_classes[b][q]
            nll += -weight[c] * (row[c] - math.log(sum(math.exp(v) for v in row)))
            norm += weight[c]
    matched = [([0.25, 0.2, 0.4, 0.3], [0.2, 0.2, 0.4, 0.4]), ([0.7, 0.7, 0.5, 0.5], [0.75, 0.7, 0.5, 0.4])]
    l1 = sum(abs(p - t) for pred, tgt in matched for p, t in zip(pred, tgt, strict=True)) / 2
    giou_loss = sum(1 - giou(xyxy(pred), xyxy(tgt)) for pred, tgt in matched) / 2
    assert math.isclose(losses["loss_ce"].item(), nll / norm, rel_tol=1e-6)
    assert math.isclose(losses["loss_bbox"].item(), l1, rel_tol=1e-6)
    assert math.isclose(losses["loss_giou"].item(), giou_loss, rel_tol=1e-6)


def test_set_criterion_gradients_reach_logits_and_matched_boxes_only() -> None:
    torch.manual_seed(0)
    logits, boxes = torch.randn(1, 4, 3, requires_grad=True), torch.rand(1, 4, 4).requires_grad_()
    target = {"boxes": torch.tensor([[2.0, 2.0, 10.0, 12.0]]), "labels": torch.tensor([1])}
    losses = SetCriterion(num_classes=2, image_height=16, image_width=16)(logits, boxes, [target])
    sum(losses.values()).backward()
    assert (logits.grad != 0).all()
    assert (boxes.grad.abs().sum(-1) != 0).sum() == 1  # only the matched query's box


def test_postprocess_keeps_the_best_real_class_and_scales_boxes_to_the_image() -> None:
    logits = torch.tensor([[[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]]])  # query 0 says "no object" most of all
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.5]]])
    [det] = registry().implementation("detr_postprocess")()(logits, boxes, torch.zeros(1, 3, 20, 40))
    probs = logits.softmax(-1)
    torch.testing.assert_close(det["scores"], torch.stack([probs[0, 0, 1], probs[0, 1, 0]]))
    assert det["labels"].tolist() == [1, 0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 40.0, 20.0], [0.0, 10.0, 20.0, 20.0]]))


def test_spec_compiles_with_the_backbone_c5_and_both_modes_run(tmp_path: Path) -> None:
    from dagcv.compiler import compile_file

    torch.manual_seed(0)
    compiled = compile_file(SPEC)
    shapes = compiled.built.shapes
    assert shapes[("backbone", "c5")] == (2, 512, 2, 2)
    assert shapes[("transformer", "out")] == (2, 10, 64)
    assert shapes[("head", "logits")] == (2, 10, 5)
    images, targets = shapes_batch(tmp_path, 2)
    model = compiled.module
    losses = model.train()(image=images, targets=targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        detections = model.eval()(image=images)["detections"]
    assert len(detections) == 2 and detections[0]["boxes"].shape == (10, 4)


@pytest.mark.slow
def test_tiny_detr_overfits_eight_images(tmp_path: Path) -> None:
    """100 full-batch AdamW steps on 8 images, then COCO mAP@0.5 on the same images (about 2 minutes, 1 thread)."""
    from dagcv.compiler import compile_file

    def run() -> float:
        torch.manual_seed(0)
        compiled = compile_file(SPEC)
        weights = compiled.built.sg.spec.train["losses"]  # DETR's 1 : 5 : 2
        images, targets = shapes_batch(tmp_path, 8)
        optimizer = torch.optim.AdamW(compiled.module.parameters(), lr=1e-3, weight_decay=1e-4)
        return overfit_map50(compiled.module, images, targets, steps=100, optimizer=optimizer, weights=weights,
                             clip=1.0)  # fmt: skip

    start = time.perf_counter()
    map_50 = single_threaded(run)
    print(f"tiny DETR overfit: mAP@0.5 = {map_50:.3f} after 100 steps in {time.perf_counter() - start:.0f} s")
    assert map_50 >= 0.9
