"""Shared fixtures: the repository root, and compiling a spec from text."""

from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread for the suite and every process it starts: on a 2-core machine, OpenMP with two threads
# stalls whenever anything else runs (a ResNet-18 step measured 4 s instead of 0.17 s), and tests spawn
# subprocesses. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from the repository root, so spec paths in messages are relative."""
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write spec text to a file and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
