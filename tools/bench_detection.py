"""Forward time of the spec-built RetinaNet vs torchvision's, side by side in one run, same weights, same inputs.

`specs/retinanet_r50_fpn.yaml` is compiled and loaded with the state_dict of torchvision's
`retinanet_resnet50_fpn(weights=None, weights_backbone=None)` (the key map of tests/detection/test_retinanet.py);
both run in eval mode on the same batch, with the same `min_size`/`max_size`. Rounds alternate which model goes
first; the figure is the median over rounds of (spec-built time / torchvision time). Both outputs are checked equal.

    python tools/bench_detection.py [--rounds 11] [--size 512] [--batch 2] [--threads 1]

Target: ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.compiler import compile_spec  # noqa: E402
from dagcv.spec import load_spec  # noqa: E402
from tests.detection.test_retinanet import rename  # noqa: E402


def models(size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=size).eval()
    sets = [f"blocks.transform.min_size={size}", f"blocks.transform.max_size={size}", f"sizes.H={size}",
            f"sizes.W={size}"]  # fmt: skip
    spec_built = compile_spec(load_spec(ROOT / "specs" / "retinanet_r50_fpn.yaml", sets)).module.eval()
    spec_built.load_state_dict({rename(k): v for k, v in reference.state_dict().items()}, strict=True)
    return spec_built, reference


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--size", type=int, default=512, help="image side and min_size = max_size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec_built, reference = models(args.size)
    images = torch.rand(args.batch, 3, args.size, args.size)
    run_spec = lambda: spec_built(image=images)["detections"]  # noqa: E731
    run_reference = lambda: reference(list(images))  # noqa: E731
    _, a = timed(run_spec)  # warm-up, and the outputs must agree
    _, b = timed(run_reference)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in ("boxes", "scores", "labels")), "outputs differ"
    ratios, ours, theirs = [], [], []
    for r in range(args.rounds):
        order = [(run_spec, ours), (run_reference, theirs)]
        for fn, sink in order if r % 2 == 0 else order[::-1]:
            sink.append(timed(fn)[0])
        ratios.append(ours[-1] / theirs[-1])
    print(f"RetinaNet R50-FPN forward, batch {args.batch} × 3×{args.size}×{args.size}, {args.threads} thread(s), "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"  spec-built  median {statistics.median(ours) * 1000:8.1f} ms")
    print(f"  torchvision median {statistics.median(theirs) * 1000:8.1f} ms")
    print(f"  ratio spec-built / torchvision: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.02")  # fmt: skip


if __name__ == "__main__":
    main()
