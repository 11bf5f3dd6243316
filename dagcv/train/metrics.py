"""Metrics from torchmetrics, sized from the graph (``num_classes`` comes from the output's inferred shape)."""

from __future__ import annotations

from typing import Any

import torch

from dagcv.graph import SpecGraph
from dagcv.train.config import MetricConfig


def make_metric(cfg: MetricConfig, sg: SpecGraph) -> Any:
    import torchmetrics

    node, port = sg.outputs[cfg.output]
    dims = sg.node(node)["shapes"].get(port) or []
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


def plain(value: torch.Tensor) -> float | list:
    """A metric value as JSON: a float, or nested lists for a matrix."""
    return value.item() if value.numel() == 1 else value.tolist()
