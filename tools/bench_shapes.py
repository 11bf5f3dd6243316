"""Train the small shapes specs with `dagcv train`, as shipped, and report wall time and held-out quality.

Each spec trains on its generated `train` split and is evaluated on 200 held-out images of its `val` split
(another seed), both written as COCO files under a fresh folder. Wall time is the whole `dagcv train` process,
data generation included, on this machine's cores. Targets from issue 5: one-stage detector mAP@0.5 >= 0.90,
Faster R-CNN >= 0.85, segmentation mIoU >= 0.85, each within 5 minutes on 2 cores.

    python tools/bench_shapes.py [SPEC ...]        # default: fcos_tiny_shapes fasterrcnn_tiny_shapes unet_shapes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = {  # spec -> (metric, target); the first three are the default run
    "fcos_tiny_shapes": ("val/map_50", 0.90),
    "fasterrcnn_tiny_shapes": ("val/map_50", 0.85),
    "unet_shapes": ("val/mean_iou", 0.85),
    "retinanet_r18_shapes": ("val/map_50", 0.90),
    "yolo_grid": ("val/map_50", 0.90),
    "fasterrcnn_r18_shapes": ("val/map_50", 0.85),
    "deeplabv3plus_r18_shapes": ("val/mean_iou", 0.85),
    "detr_tiny": ("val/map_50", 0.90),
}
DEFAULT = ["fcos_tiny_shapes", "fasterrcnn_tiny_shapes", "unet_shapes"]


def train(name: str, folder: Path) -> dict:
    spec = ROOT / "specs" / f"{name}.yaml"
    data = folder / "data"
    sets = [f"data.train.dataset.root={data}", f"data.val.dataset.root={data}"]
    args = [sys.executable, "-m", "dagcv.cli", "train", str(spec), "--run-dir", str(folder / "run"), "--quiet"]
    start = time.perf_counter()
    run = subprocess.run([*args, *(x for s in sets for x in ("--set", s))], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{name}: dagcv train failed\n{run.stderr[-3000:]}")
    records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "epoch"][-1]
    metric, target = METRICS[name]
    return {"spec": name, "wall_s": round(wall, 1), "metric": metric, "value": last[metric], "target": target,
            "epochs": last["epoch"], "steps": last["step"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT, help=f"any of {', '.join(METRICS)}")
    names = parser.parse_args().specs
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        parser.error(f"no benchmark for {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            r = train(name, Path(tmp))
        ok = r["value"] >= r["target"] and r["wall_s"] <= 300
        print(f"{r['spec']:24s} {r['metric']} = {r['value']:.4f} (target {r['target']}) in {r['wall_s']:.0f} s, "
              f"{r['epochs']} epochs / {r['steps']} steps  {'ok' if ok else 'MISSED'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
