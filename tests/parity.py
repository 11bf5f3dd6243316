"""Shared by the parity tests against torchvision's models."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def max_diff(a: Tensor, b: Tensor) -> float:
    """The largest absolute difference of two tensors of the same shape and dtype (0 for empty ones)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    return 0.0 if a.numel() == 0 else (a.double() - b.double()).abs().max().item()


def run_detectors(
    reference: nn.Module, ours: nn.Module, images: Tensor, targets: list[dict[str, Tensor]] | None, *, seed: int
) -> tuple[Any, Any]:
    """torchvision's detector and the spec-built one on the same batch, the RNG reset to ``seed`` before each.

    Without ``targets`` both run in evaluation (no grad) and give their detections; with them both run in
    training, each on its own copy of the targets, and give their outputs (torchvision's loss dict, the spec's
    outputs).
    """
    training = targets is not None
    reference.train(training), ours.train(training)
    with torch.set_grad_enabled(training):
        torch.manual_seed(seed)
        want = reference(list(images), copy.deepcopy(targets)) if training else reference(list(images))
        torch.manual_seed(seed)
        got = ours(image=images, targets=copy.deepcopy(targets)) if training else ours(image=images)["detections"]
    return want, got


def detection_diffs(
    got: list[dict[str, Tensor]], want: list[dict[str, Tensor]], keys: tuple[str, ...], *, more_than: int = 0
) -> dict[str, float]:
    """The max abs difference of each detection field over the images; the images, the fields and the numbers of
    detections must agree, and each reference image must keep more than ``more_than`` detections."""
    assert len(got) == len(want)
    diffs = dict.fromkeys(keys, 0.0)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w) == set(keys)
        assert len(w["boxes"]) > more_than, "the score threshold should leave detections to compare"
        for k in keys:
            diffs[k] = max(diffs[k], max_diff(g[k], w[k]))
    return diffs


def grad_diff(reference: nn.Module, ours: nn.Module, key: Callable[[str], str] = str) -> float:
    """The max abs difference between the gradient of every trainable parameter of ``reference`` and that of its
    twin in ``ours`` (named by ``key``). Both must agree on which parameters train, and each of those must have a
    gradient on both sides."""
    params = dict(ours.named_parameters())
    diff = 0.0
    for name, p in reference.named_parameters():
        q = params[key(name)]
        assert p.requires_grad == q.requires_grad, name
        if p.requires_grad:
            assert p.grad is not None and q.grad is not None, name
            diff = max(diff, max_diff(p.grad, q.grad))
    return diff
