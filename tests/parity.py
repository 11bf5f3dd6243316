"""Shared by the parity tests against torchvision's models."""

from __future__ import annotations

from torch import Tensor


def max_diff(a: Tensor, b: Tensor) -> float:
    """The largest absolute difference of two tensors of the same shape and dtype (0 for empty ones)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    return 0.0 if a.numel() == 0 else (a.double() - b.double()).abs().max().item()
