"""Checkpoints: everything a run needs to continue exactly, written atomically, read with ``weights_only``.

A checkpoint holds the model, every optimizer and scheduler, the RNG states (torch, Python, NumPy), and where
the run stands (epoch, batches done in that epoch, global step, early-stopping state). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one: a run killed mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dagcv.files import atomic_file


def rng_state() -> dict[str, Any]:
    state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(_tuplelist(random.getstate())),
        "numpy": {
            "keys": torch.from_numpy(state[1].astype(np.int64)),
            "pos": int(state[2]),
            "has_gauss": int(state[3]),
            "gauss": float(state[4]),
        },
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _tuplelist(value: Any) -> Any:
    # weights_only loading accepts lists and ints; Python's RNG state is nested tuples of ints.
    return [_tuplelist(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_file(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
