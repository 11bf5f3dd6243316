"""Shared by the detectors' learning tests: a batch of generated shapes, and mAP@0.5 after overfitting it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn


def shapes_batch(root: Path, n: int, size: int = 64) -> tuple[Tensor, list[dict]]:
    """The first ``n`` images of a generated shapes split under ``root``, batched as a detector takes them."""
    from blocks.shapes import CocoInstances, ShapesCoco

    data = ShapesCoco(root=str(root), generate=n, height=size, width=size).dataset()
    return CocoInstances.collate_fn([data[i] for i in range(n)])


def overfit_map50(
    model: nn.Module,
    images: Tensor,
    targets: list[dict],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, float] | None = None,
    clip: float | None = None,
) -> float:
    """Full-batch steps on the weighted sum of the model's training losses, then COCO mAP@0.5 on the same images."""
    from torchmetrics.detection import MeanAveragePrecision

    model.train()
    for _ in range(steps):
        losses = model(image=images, targets=targets)
        loss = sum((weights or {}).get(name, 1.0) * value for name, value in losses.items())
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    with torch.no_grad():
        detections = model.eval()(image=images)["detections"]
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    metric.update(detections, [{"boxes": t["boxes"].as_subclass(Tensor), "labels": t["labels"]} for t in targets])
    return metric.compute()["map_50"].item()


def single_threaded(fn: Callable[[], float]) -> float:
    """``fn()`` on one thread (timings and results as on a loaded CI machine), restoring the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)
