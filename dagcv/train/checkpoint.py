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

from dagcv.errors import SpecError
from dagcv.files import atomic_file, checkpoint_problem


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
    """A checkpoint's contents, read with ``weights_only`` (no pickled code runs); a file that is not one is an
    error naming why."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    problem = checkpoint_problem(str(path))
    if problem is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # an archive torch.save did not write, or a pickle weights_only refuses
            problem = f"{path} cannot be read as a checkpoint: {' '.join(str(exc).split())[:200]}"
        else:
            if isinstance(state, dict):
                return state
            problem = f"{path} holds a {type(state).__name__}, not a checkpoint or a state_dict"
    raise SpecError.at(None, problem, hint="give checkpoints/last.pt of a run, or a file written by torch.save")


def state_dict_mismatch(model: torch.nn.Module, state: dict[str, Any], shown: int = 3) -> list[str]:
    """How ``state`` fails to fit ``model``, in a few lines: keys missing and unexpected, grouped by node, and
    shapes that differ. Empty when ``model.load_state_dict(state, strict=True)`` would succeed."""
    own = model.state_dict()
    lines = []
    for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
    ):
        if keys:
            nodes: dict[str, int] = {}
            for key in keys:
                node = key.split(".", 1)[0]
                nodes[node] = nodes.get(node, 0) + 1
            groups = ", ".join(f"{node} ({n} key{'s' * (n > 1)})" for node, n in list(nodes.items())[:shown])
            more = f" and {len(nodes) - shown} more nodes" if len(nodes) > shown else ""
            lines.append(f"{what} in the checkpoint: {groups}{more}" if what == "missing" else
                         f"{what} in the checkpoint (not in this model): {groups}{more}")  # fmt: skip
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        listed = "; ".join(f"{k} is {_shape(a)} in the checkpoint, {_shape(b)} here" for k, a, b in shapes[:shown])
        more = f"; and {len(shapes) - shown} more" if len(shapes) > shown else ""
        lines.append(f"shapes differ: {listed}{more}")
    return lines


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape)) or "a scalar"
