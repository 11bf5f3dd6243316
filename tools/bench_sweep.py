"""What a sweep costs beyond the training it runs, side by side in one run.

1. **Per-point overhead** of each executor (local, and Ray when installed) on 20 trivial points
   (``mlp_digits`` for 5 steps, 20 seeds): the wall time of ``dagcv sweep run`` (plan included: checking
   every point, compiling the model, starting the workers) minus the time the same 20 trainings take as plain
   ``train_spec`` calls in one process, divided by 20. Goal for the local executor: at most 0.5 s per point.
2. **The MNIST study** (``studies/backbone_ablation.yaml``: 9 points) with 1 and with 2 workers of one thread,
   and the speed-up. Needs ``../shared/datasets/mnist-t10k``; ``--skip-mnist`` leaves it out.

    python tools/bench_sweep.py [--points 20] [--skip-mnist]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRIVIAL = """\
sweep: 1
base: {base}
set: {{train.steps: 5, train.epochs: null, train.log_every: 5, data.train.subset.range: [0, 160]}}
axes:
  width: {{at: blocks.classifier.hidden, values: [[64]]}}
seeds: {seeds}
metric: {{name: val/accuracy}}
executor: {{workers: 1, threads: 1}}
"""


def sweep_wall(sweep_file: Path, out: Path, workers: int, executor: str = "local") -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "dagcv.cli", "sweep", "run", str(sweep_file), "--out", str(out), "-q",
           "--workers", str(workers), "--executor", executor]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def plain_training(sweep_file: Path) -> float:
    """The same points trained by train_spec in this process, one after another (imports already paid)."""
    import torch

    from dagcv.sweep.points import load_sweep
    from dagcv.train.runner import Options, train_spec

    torch.set_num_threads(1)
    sweep = load_sweep(sweep_file)
    specs = [sweep.spec(p) for p in sweep.points()]
    train_spec(specs[0], Options(quiet=True, run_dir=Path(tempfile.mkdtemp()) / "warm"))  # imports, caches
    start = time.perf_counter()
    for spec in specs:
        train_spec(spec, Options(quiet=True, run_dir=Path(tempfile.mkdtemp()) / "run"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--skip-mnist", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep-"))
    trivial = tmp / "trivial.yaml"
    trivial.write_text(TRIVIAL.format(base=ROOT / "specs" / "mlp_digits.yaml", seeds=list(range(args.points))))

    train_s = plain_training(trivial)
    local_s = sweep_wall(trivial, tmp / "local", workers=1)
    overhead = (local_s - train_s) / args.points
    print(f"{args.points} trivial points (mlp_digits, 5 steps each), 1 worker × 1 thread")
    print(f"  plain train_spec calls, one process:  {train_s:6.2f} s  ({train_s / args.points:.3f} s per point)")
    print(f"  dagcv sweep run (local executor):     {local_s:6.2f} s  (plan, worker start-up and bookkeeping included)")
    verdict = "ok" if overhead <= 0.5 else "MISSED"
    print(f"  overhead per point:                   {overhead:6.3f} s  (goal ≤ 0.5 s)  {verdict}")
    try:
        import ray  # noqa: F401
    except ImportError:
        print("  ray executor: skipped (pip install 'dagcv[ray]')")
    else:
        ray_s = sweep_wall(trivial, tmp / "ray", workers=1, executor="ray")
        print(f"  dagcv sweep run --executor ray:       {ray_s:6.2f} s  (a local Ray instance started and stopped)")
        print(f"  overhead per point:                   {(ray_s - train_s) / args.points:6.3f} s")

    if args.skip_mnist:
        return
    if not (ROOT.parent / "shared" / "datasets" / "mnist-t10k").exists():
        print("MNIST study skipped: ../shared/datasets/mnist-t10k is not there")
        return
    study = ROOT / "studies" / "backbone_ablation.yaml"
    one = sweep_wall(study, tmp / "mnist1", workers=1)
    two = sweep_wall(study, tmp / "mnist2", workers=2)
    print("MNIST study (studies/backbone_ablation.yaml: 9 points, 2 epochs each), 1 thread per worker")
    print(f"  1 worker:  {one:7.1f} s")
    print(f"  2 workers: {two:7.1f} s   speed-up {one / two:.2f}×")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
