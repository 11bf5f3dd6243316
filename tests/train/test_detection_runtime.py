"""Detection and segmentation through the training runtime: batches of per-image targets, the model's
train-mode losses, and COCO mAP / mean IoU on the evaluation split, from `dagcv train` on generated COCO files."""

from __future__ import annotations

import json

import pytest
import torch

from dagcv.train.metrics import detection_map, results, segmentation_metric
from tests.conftest import ROOT
from tests.train.test_runner import dagcv, overrides

SMALL_SPECS = {  # spec -> the metric its evaluation logs
    "retinanet_r18_shapes": "val/map_50",
    "fasterrcnn_tiny_shapes": "val/map_50",
    "fcos_tiny_shapes": "val/map_50",
    "yolo_grid": "val/map_50",
    "unet_shapes": "val/mean_iou",
    "detr_tiny": "val/map_50",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_SPECS)
def test_dagcv_train_runs_a_small_spec_on_generated_coco_files(name, tmp_path) -> None:
    spec = ROOT / "specs" / f"{name}.yaml"
    sets = overrides(
        f"data.train.dataset.root={tmp_path / 'data'}", f"data.val.dataset.root={tmp_path / 'data'}",
        "data.train.dataset.generate=16", "data.val.dataset.generate=8", "data.train.batch_size=4",
        "data.val.batch_size=4", "train.epochs=null", "train.steps=4", "train.threads=1", "train.log_every=2",
    )  # fmt: skip
    if "subset:" in spec.read_text():
        sets += overrides("data.train.subset=null")  # a subset of the full split does not fit 16 images
    trained = dagcv("train", str(spec), *sets, "--run-dir", str(tmp_path / "run"), "--json")
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all(v == v for r in steps for k, v in r.items() if k.startswith("train/"))  # finite losses
    last = [r for r in records if r["kind"] == "epoch"][-1]
    assert 0.0 <= last[SMALL_SPECS[name]] <= 1.0


def _box(x1: float, y1: float, x2: float, y2: float) -> torch.Tensor:
    return torch.tensor([[x1, y1, x2, y2]])


def test_map_is_one_for_perfect_detections_and_counts_a_miss() -> None:
    metric = detection_map("bbox")
    target = [{"boxes": torch.cat([_box(2, 2, 20, 20), _box(30, 30, 60, 50)]), "labels": torch.tensor([1, 2])}]
    perfect = [{**target[0], "scores": torch.tensor([0.9, 0.8])}]
    metric.update(perfect, target)
    assert results("map", metric.compute())["map_50"] == pytest.approx(1.0)
    metric.reset()
    wrong_class = [{"boxes": target[0]["boxes"], "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}]
    metric.update(wrong_class, target)
    scores = results("box_map", metric.compute())
    assert scores["box_map_50"] == pytest.approx(0.5)  # class 1 found, class 2 missed: mean over classes
    assert "map" not in scores and "box_map" in scores


def test_mask_map_thresholds_soft_masks() -> None:
    metric = detection_map("segm")
    masks = torch.zeros(1, 16, 16, dtype=torch.uint8)
    masks[0, 2:10, 3:12] = 1
    target = [{"boxes": _box(3, 2, 12, 10), "labels": torch.tensor([1]), "masks": masks}]
    soft = masks[:, None].float() * 0.9  # Mask R-CNN's N×1×H×W probabilities
    metric.update([{"boxes": _box(3, 2, 12, 10), "labels": torch.tensor([1]), "scores": torch.ones(1),
                    "masks": soft}], target)  # fmt: skip
    assert results("map", metric.compute())["map_50"] == pytest.approx(1.0)


def test_mean_iou_is_dataset_level_and_averages_over_classes() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])  # 1×2×4
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 1]]])
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    metric = segmentation_metric("mean_iou", 2)
    metric.update(logits, target)
    # class 0: intersection 3, union 4; class 1: intersection 4, union 5
    assert metric.compute().item() == pytest.approx((3 / 4 + 4 / 5) / 2)
