"""Metrics from torchmetrics, sized from the graph (``num_classes`` comes from the output's inferred shape).

Classification metrics read ``Logits[B, K]``; segmentation metrics read ``Logits[B, K, H, W]`` against
``Labels[B, H, W]``; detection mAP reads ``Detections`` against ``Targets`` (lists of per-image dicts).
"""

from __future__ import annotations

from typing import Any

import torch

from dagcv.graph import SpecGraph
from dagcv.train.config import MetricConfig, renamed


def make_metric(cfg: MetricConfig, sg: SpecGraph) -> Any:
    import torchmetrics

    node, port = sg.outputs[cfg.output]
    dims = sg.node(node)["shapes"].get(port) or []
    if cfg.type == "map":
        return detection_map(cfg.iou_type)
    if cfg.type == "mean":
        return torchmetrics.MeanMetric()
    if cfg.type in ("mean_iou", "dice"):
        return segmentation_metric(cfg.type, dims[1].value)
    num_classes = dims[-1].value if len(dims) >= 2 else None
    classes = {"task": "multiclass", "num_classes": num_classes}
    if cfg.type == "accuracy":
        return torchmetrics.Accuracy(**classes, top_k=cfg.top_k, average=cfg.average or "micro")
    if cfg.type in ("f1", "precision", "recall"):
        kind = {"f1": torchmetrics.F1Score, "precision": torchmetrics.Precision, "recall": torchmetrics.Recall}
        return kind[cfg.type](**classes, top_k=cfg.top_k, average=cfg.average or "macro")
    if cfg.type == "confusion_matrix":
        return torchmetrics.ConfusionMatrix(**classes)
    return torchmetrics.MeanSquaredError() if cfg.type == "mse" else torchmetrics.MeanAbsoluteError()


def detection_map(iou_type: str) -> Any:
    """COCO mAP (torchmetrics ``MeanAveragePrecision``, ``faster_coco_eval`` backend) over xyxy boxes or masks.

    ``update`` takes the model's ``Detections`` and the batch's ``Targets`` as they flow in the graph: Mask R-CNN's
    soft masks (``N×1×H×W`` probabilities) are thresholded at 0.5, as COCO evaluation of torchvision models does.
    """
    from torchmetrics.detection import MeanAveragePrecision

    class DetectionMAP(MeanAveragePrecision):
        def update(self, preds: list[dict[str, Any]], target: list[dict[str, Any]]) -> None:  # type: ignore[override]
            keys = ("boxes", "labels", "masks") if iou_type == "segm" else ("boxes", "labels")
            super().update([_detection(p, (*keys, "scores")) for p in preds], [_detection(t, keys) for t in target])

    return DetectionMAP(box_format="xyxy", iou_type=iou_type, backend="faster_coco_eval")


def _detection(item: dict[str, Any], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {k: torch.as_tensor(item[k]).as_subclass(torch.Tensor) for k in keys}
    if "masks" in out:
        masks = out["masks"]
        out["masks"] = (masks[:, 0] > 0.5) if masks.dim() == 4 else masks.bool()
    return out


def segmentation_metric(kind: str, num_classes: int) -> Any:
    """Segmentation scores from per-pixel logits ``B×K×H×W`` against class indices ``B×H×W``.

    ``mean_iou`` is the dataset-level mean IoU of VOC and Cityscapes: intersections and unions are summed over
    every pixel of the split, then IoU is averaged over the ``K`` classes, background included (torchmetrics
    ``JaccardIndex``, ``average="macro"``). ``dice`` is torchmetrics ``DiceScore`` with ``average="macro"``.
    """
    import torchmetrics
    from torchmetrics.segmentation import DiceScore

    base = torchmetrics.JaccardIndex if kind == "mean_iou" else DiceScore
    args: dict[str, Any] = (
        {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
        if kind == "mean_iou"
        else {"num_classes": num_classes, "average": "macro", "input_format": "index"}
    )

    class FromLogits(base):  # type: ignore[misc, valid-type]
        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            super().update(preds.argmax(1), target)

    FromLogits.__name__ = base.__name__
    return FromLogits(**args)


def plain(value: torch.Tensor) -> float | list:
    """A metric value as JSON: a float, or nested lists for a matrix."""
    return value.item() if value.numel() == 1 else value.tolist()


def results(key: str, value: Any) -> dict[str, Any]:
    """A computed metric as logged scalars: one entry, or one per scalar of a dict (``map``, ``map_50``, ...).

    A dict's entries keep their names when the metric is logged under its type (``map``), else they are
    prefixed with its name (``mask_map_50``); per-class tensors and class lists are left out.
    """
    if not isinstance(value, dict):
        return {key: plain(value)}
    out = {}
    for sub, v in value.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1 and sub != "classes":
            out[renamed(key, sub)] = v.item()
    return out
