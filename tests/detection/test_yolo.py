"""The YOLO grid detector: target assignment by hand, the loss formulas, post-processing, and learning."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch

import blocks.detection.yolo
from blocks.detection.yolo import (
    YoloGridLoss,
    YoloGridPostprocess,
    assign_grid_targets,
    grid_boxes_to_xyxy,
)
from blocks.shapes import generate_shapes
from dagcv.compiler import compile_file

SPEC = Path(__file__).resolve().parents[2] / "specs" / "yolo_grid.yaml"


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.yolo, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def _predictions(s_h: int = 4, s_w: int = 4, a: int = 2) -> torch.Tensor:
    return torch.full((1, s_h, s_w, a, 4), 0.5)


def test_object_goes_to_the_cell_of_its_centre_with_offsets_and_sizes() -> None:
    # 4×4 grid on 64×96 (cells 16 high, 24 wide). Box centre (60, 20): column 2, row 1; offsets 0.5, 0.25.
    t = assign_grid_targets(_predictions(), [_target([[50, 10, 70, 30]], [3])], 64, 96, num_classes=3)
    assert t.responsible.nonzero().tolist() == [[0, 1, 2, 0]]
    torch.testing.assert_close(t.boxes[0, 1, 2, 0], torch.tensor([0.5, 0.25, 20 / 96, 20 / 64]))
    assert t.classes[0, 1, 2].item() == 2 and int(t.has_object.sum()) == 1
    assert (t.classes[~t.has_object] == -1).all()


def test_centre_on_the_far_edge_belongs_to_the_last_cell() -> None:
    t = assign_grid_targets(_predictions(), [_target([[48, 48, 64, 64]], [1])], 64, 64, num_classes=1)
    assert t.responsible.nonzero().tolist() == [[0, 3, 3, 0]]  # centre (56, 56) → row 3, column 3
    t = assign_grid_targets(_predictions(), [_target([[0, 0, 64, 64]], [1])], 64, 64, num_classes=1)
    assert t.responsible.nonzero().tolist() == [[0, 2, 2, 0]]  # centre (32, 32) is the corner of cell (2, 2)
    torch.testing.assert_close(t.boxes[0, 2, 2, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_responsible_predictor_is_the_one_with_highest_iou() -> None:
    pred = _predictions()
    pred[0, 0, 0, 0] = torch.tensor([0.5, 0.5, 0.9, 0.9])  # a large box
    pred[0, 0, 0, 1] = torch.tensor([0.5, 0.5, 0.2, 0.2])  # a small box around the object
    t = assign_grid_targets(pred, [_target([[2, 2, 14, 14]], [1])], 64, 64, num_classes=1)
    assert t.responsible[0, 0, 0].tolist() == [False, True]
    # Its objectness target is the IoU of its own box (12.8×12.8 centred at 8, 8) with the object (12×12).
    want = (12 * 12) / (12.8 * 12.8)
    assert t.ious[0, 0, 0, 1].item() == pytest.approx(want, rel=1e-5)
    assert t.ious[0, 0, 0, 0].item() == 0.0


def test_objects_sharing_a_cell_take_free_predictors_largest_first() -> None:
    pred = _predictions(a=2)
    pred[0, 0, 0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.2])  # a 12.8-pixel box at (8, 8)
    pred[0, 0, 0, 1] = torch.tensor([0.5, 0.5, 0.22, 0.22])  # a 14.08-pixel box at (8, 8)
    small, large, third = [6, 6, 10, 10], [1, 1, 15, 15], [4, 4, 12, 12]
    t = assign_grid_targets(pred, [_target([small, large, third], [1, 2, 3])], 64, 64, num_classes=3)
    # All three are centred on (8, 8). The largest (14×14) picks first and takes predictor 1, its best fit; the
    # 8×8 one takes predictor 0, the only one left; the 4×4 one finds no free predictor and is left out. The cell's
    # class is the largest object's.
    assert t.responsible[0, 0, 0].tolist() == [True, True]
    torch.testing.assert_close(t.boxes[0, 0, 0, 1, 2:], torch.tensor([14 / 64, 14 / 64]))
    torch.testing.assert_close(t.boxes[0, 0, 0, 0, 2:], torch.tensor([8 / 64, 8 / 64]))
    assert t.classes[0, 0, 0].item() == 1  # label 2 → channel 1


def test_images_without_objects_and_bad_labels() -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    t = assign_grid_targets(_predictions(), [empty], 64, 64, num_classes=3)
    assert not t.responsible.any() and not t.has_object.any()
    with pytest.raises(ValueError, match=r"labels must be 1\.\.3"):
        assign_grid_targets(_predictions(), [_target([[0, 0, 8, 8]], [0])], 64, 64, num_classes=3)


def test_loss_terms_follow_the_formulas() -> None:
    torch.manual_seed(0)
    boxes = torch.rand(1, 2, 2, 2, 4)
    objectness, logits = torch.rand(1, 2, 2, 2), torch.randn(1, 2, 2, 3)
    targets = [_target([[4, 4, 20, 28]], [2])]  # centre (12, 16): cell (0, 0)
    loss = YoloGridLoss(num_classes=3, lambda_coord=5.0, lambda_noobj=0.5)
    out = loss(boxes, objectness, logits, torch.zeros(1, 3, 64, 64), targets)
    t = assign_grid_targets(boxes, targets, 64, 64, num_classes=3)
    (a,) = t.responsible[0, 0, 0].nonzero()[0].tolist()
    x, y, w, h = boxes[0, 0, 0, a]
    tx, ty, tw, th = 12 / 32, 16 / 32, 16 / 64, 24 / 64
    coord = 5.0 * ((x - tx) ** 2 + (y - ty) ** 2 + (w.sqrt() - tw**0.5) ** 2 + (h.sqrt() - th**0.5) ** 2)
    torch.testing.assert_close(out["coordinates"], coord)
    others = objectness.flatten().tolist()
    others.pop(a)  # predictor a of cell (0, 0) comes first in the flattened order
    obj = (objectness[0, 0, 0, a] - t.ious[0, 0, 0, a]) ** 2 + 0.5 * sum(c**2 for c in others)
    torch.testing.assert_close(out["objectness"], obj)
    p = logits[0, 0, 0].softmax(-1)
    torch.testing.assert_close(out["classification"], p[0] ** 2 + (p[1] - 1) ** 2 + p[2] ** 2)


def test_loss_is_averaged_over_images_and_gradients_flow() -> None:
    torch.manual_seed(0)
    boxes = torch.rand(2, 2, 2, 2, 4, requires_grad=True)
    objectness = torch.rand(2, 2, 2, 2, requires_grad=True)
    logits = torch.randn(2, 2, 2, 3, requires_grad=True)
    target = _target([[4, 4, 20, 28]], [2])
    twice = [x.detach()[:1].expand(2, *x.shape[1:]) for x in (boxes, objectness, logits)]
    loss = YoloGridLoss(num_classes=3)
    one = loss(boxes[:1], objectness[:1], logits[:1], torch.zeros(1, 3, 64, 64), [target])
    two = loss(*twice, torch.zeros(2, 3, 64, 64), [target, target])
    for k in one:
        torch.testing.assert_close(two[k], one[k])
    total = sum(loss(boxes, objectness, logits, torch.zeros(2, 3, 64, 64), [target, target]).values())
    total.backward()
    assert all(g is not None and torch.isfinite(g).all() for g in (boxes.grad, objectness.grad, logits.grad))


def test_grid_boxes_decode_to_pixels() -> None:
    boxes = torch.zeros(1, 2, 3, 1, 4)
    boxes[0, 1, 2, 0] = torch.tensor([0.5, 0.25, 0.1, 0.5])  # row 1, column 2 of a 2×3 grid on 40×60
    xyxy = grid_boxes_to_xyxy(boxes, 40, 60)
    torch.testing.assert_close(xyxy[0, 1, 2, 0], torch.tensor([50 - 3, 25 - 10, 50 + 3, 25 + 10.0]))


def test_postprocess_scores_thresholds_suppresses_and_labels() -> None:
    boxes = torch.full((1, 1, 2, 2, 4), 0.5)
    boxes[0, 0, 0, 1] = torch.tensor([0.5, 0.5, 0.45, 0.45])  # inside box 0 of the same cell (IoU 0.81)
    objectness = torch.tensor([[[[0.9, 0.8], [0.5, 0.01]]]])
    logits = torch.tensor([[[[0.0, 10.0, 0.0], [10.0, 0.0, 0.0]]]])  # cell 0: label 2; cell 1: label 1
    post = YoloGridPostprocess(score_thresh=0.05, nms_thresh=0.5, detections_per_img=10)
    (out,) = post(boxes, objectness, logits, torch.zeros(1, 3, 32, 64))
    # Cell 0's second box is suppressed by its first; cell 1's second box scores under the threshold.
    assert out["labels"].tolist() == [2, 1]
    p = torch.tensor([10.0, 0.0, 0.0]).softmax(0)[0]
    torch.testing.assert_close(out["scores"], torch.stack([0.9 * p, 0.5 * p]))
    # Half the image wide (32 of 64) and high (16 of 32), centred in each 32×32 cell.
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 8, 32, 24], [32, 8, 64, 24]]))
    (clipped,) = post(boxes, objectness, logits, torch.zeros(1, 3, 32, 64), torch.tensor([[20, 50]]))
    torch.testing.assert_close(clipped["boxes"], torch.tensor([[0.0, 8, 32, 20], [32, 8, 50, 20]]))
    (top,) = YoloGridPostprocess(detections_per_img=1)(boxes, objectness, logits, torch.zeros(1, 3, 32, 64))
    assert top["labels"].tolist() == [2]


def _shapes_batch(n: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    samples = generate_shapes(n, height=64, width=64, seed=3)
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    targets = [{"boxes": torch.from_numpy(s.boxes).float(), "labels": torch.from_numpy(s.labels)} for s in samples]
    return images, targets


def test_spec_loss_goes_down_on_a_fixed_batch_and_detects() -> None:
    model = compile_file(SPEC).module
    torch.manual_seed(0)
    images, targets = _shapes_batch(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(12):
        losses = model.train()(image=images, targets=targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
    first, last = history[0], history[-1]
    assert set(first) == {"coordinates", "objectness", "classification", "total"}
    assert last["total"] < 0.3 * first["total"], (first, last)
    for term in ("coordinates", "objectness", "classification"):
        assert last[term] < first[term], (term, first, last)
    with torch.no_grad():
        detections = model.eval()(image=images)["detections"]  # evaluation needs no targets
    assert len(detections) == len(images)
    for d in detections:
        assert set(d) == {"boxes", "scores", "labels"} and len(d["boxes"]) <= 100
        assert ((d["labels"] >= 1) & (d["labels"] <= 3)).all() and (d["scores"] > 0.05).all()
        assert ((d["boxes"] >= 0) & (d["boxes"] <= 64)).all()
