"""The Ray executor trains a study's points on a local Ray instance into the same run directories, with the same
results per point as the local executor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("ray.tune")
MNIST = ROOT.parent / "shared" / "datasets" / "mnist-t10k"

# The shipped MNIST study, made small: two of its backbones, one epoch on 1,000 images, one seed.
STUDY = f"""\
sweep: 1
base: {ROOT / "specs" / "lenet_mnist.yaml"}
set: {{train.epochs: 1, data.train.subset.range: [0, 1000], data.val.subset.range: [8000, 8500]}}
axes:
  backbone:
    variants:
      lenet: {{}}
      mlp: {{blocks.features: {{remove: true}}, blocks.classifier: {{type: mlp_head, in: image, hidden: [64],
                                                                    num_classes: 10}}}}
seeds: [0, 1]
metric: {{name: val/accuracy}}
executor: {{workers: 2, threads: 1}}
"""


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="needs ../shared/datasets/mnist-t10k")
def test_the_ray_executor_gives_the_local_executors_results(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    finals = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        run = subprocess.run([sys.executable, "-m", "dagcv.cli", "sweep", "run", str(study), "--out", str(out), "-q",
                              "--executor", executor], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        results = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}
        assert len(results) == 4 and all(r["status"] == "done" for r in results.values())
        finals[executor] = {name: r["final"] for name, r in results.items()}
    assert finals["ray"] == finals["local"]  # same run directories (hash-keyed), same numbers
    assert all(f["val/accuracy"] > 0.2 for f in finals["ray"].values())  # trained: chance is 0.1
