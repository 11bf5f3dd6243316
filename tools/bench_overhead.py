"""Overhead of dagcv's lowering, measured side by side in one run.

1. Forward time of the lowered model vs the hand-written module with the same weights, interleaved
   repetitions, median of the per-round ratios: LeNet (CIFAR-10 tutorial net, batch 1, 1 thread) and
   torchvision ResNet-18 (batch 1, 224×224).
2. Compile time (parse, check, build with shape propagation, lower) of a generated 1000-node spec.

    python tools/bench_overhead.py [--rounds 15]

Targets: forward ratio lowered / hand-written <= 1.03; 1000-node compile <= 3 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.compiler import compile_file, compile_spec  # noqa: E402
from dagcv.spec import parse_spec_text  # noqa: E402
from tests.reference import LENET_KEYS, TutorialNet  # noqa: E402
from tests.test_lower import load_mapped  # noqa: E402
from tools.gen_spec import generate_spec  # noqa: E402


def time_calls(fn, x, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - start) / iters


def interleaved_ratio(ours, theirs, x, *, rounds: int, iters: int) -> tuple[float, float, float]:
    """Median per-call times of both and the median of per-round ratios ours/theirs (order alternates)."""
    with torch.inference_mode():
        for _ in range(3):
            time_calls(ours, x, iters), time_calls(theirs, x, iters)  # warm-up
        a, b, ratios = [], [], []
        for r in range(rounds):
            if r % 2:
                tb, ta = time_calls(theirs, x, iters), time_calls(ours, x, iters)
            else:
                ta, tb = time_calls(ours, x, iters), time_calls(theirs, x, iters)
            a.append(ta), b.append(tb), ratios.append(ta / tb)
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


def bench_lenet(rounds: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / "lenet_cifar10.yaml").module.eval()
    reference = TutorialNet().eval()
    load_mapped(model, reference, LENET_KEYS)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x)["logits"], reference(x))
    ours, theirs, ratio = interleaved_ratio(model, reference, x, rounds=rounds, iters=2000)
    print(f"lenet_cifar10  batch 1, 1 thread : dagcv {ours * 1e6:8.1f} us  hand-written {theirs * 1e6:8.1f} us  "
          f"ratio {ratio:.3f}")  # fmt: skip


def bench_resnet18(rounds: int) -> None:
    # One thread: on a shared 2-core machine, OpenMP with 2 threads stalls whenever the other core is busy.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / "resnet18_classifier.yaml").module.eval()
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    state = {("classifier." if k.startswith("fc.") else "backbone.") + k: v for k, v in reference.state_dict().items()}
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 224, 224)
    ours, theirs, ratio = interleaved_ratio(model, reference, x, rounds=rounds, iters=10)
    print(f"resnet18       batch 1, 1 thread : dagcv {ours * 1e3:8.2f} ms  "
          f"hand-written {theirs * 1e3:8.2f} ms  ratio {ratio:.3f}")  # fmt: skip


def bench_compile(n_blocks: int, repeats: int = 3, distinct: bool = False) -> None:
    text = generate_spec(n_blocks, distinct=distinct)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compile_spec(parse_spec_text(text, f"generated_{n_blocks}.yaml"))
        times.append(time.perf_counter() - start)
    label = "every block distinct" if distinct else "repeated block config"
    print(f"compile {n_blocks}-node spec, {label} (parse+check+build+lower): median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {repeats} runs)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    bench_lenet(args.rounds)
    bench_resnet18(args.rounds)
    bench_compile(args.nodes)
    bench_compile(args.nodes, repeats=1, distinct=True)


if __name__ == "__main__":
    main()
