"""Training throughput of `dagcv train` vs the canonical hand-written PyTorch loop, side by side in one run.

Both train LeNet (specs/lenet_mnist.yaml) from the same initial weights on the same dataset object (a seeded
subset of the spec's training split, 2,048 samples by default), with the
same batch size (64), SGD (lr 0.01, momentum 0.9), cross-entropy and one thread. Epochs alternate between the
two (dagcv first in even rounds, hand-written first in odd ones); each epoch's samples/s is measured, and the
ratio dagcv / hand-written is the median of the per-round ratios, in wall time and in process CPU time (one
thread, so CPU time is the loop's own work, unaffected by other processes on a shared machine). Both loops see
the same batches in the same order, so they train the same weights: at the end both are evaluated on the same
held-out split and should agree.

    python tools/bench_train.py [--rounds 25] [--samples 2048]

Data: the real MNIST split of the spec when ../shared/datasets/mnist-t10k exists, else 8,000 fake 28×28 images.
Target: ratio >= 0.97 with the same final accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.spec import load_spec  # noqa: E402
from dagcv.train.data import EpochSampler  # noqa: E402
from dagcv.train.progress import Progress  # noqa: E402
from dagcv.train.runner import Options, make_loop  # noqa: E402
from tests.reference import LENET_KEYS, TutorialNet  # noqa: E402

SPEC = ROOT / "specs" / "lenet_mnist.yaml"
FAKE = [
    "data.train.dataset={type: fake_data, size: 8000, channels: 1, height: 28, width: 28, seed: 0}",
    "data.val.dataset={type: fake_data, size: 2000, channels: 1, height: 28, width: 28, seed: 1}",
    "data.train.subset=null",
    "data.val.subset=null",
]


def hand_written_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    """The loop of PyTorch's tutorial, as people write it."""
    criterion = nn.CrossEntropyLoss()
    net.train()
    for inputs, labels in loader:
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def accuracy(net: nn.Module, loader: DataLoader) -> float:
    net.eval()
    correct = total = 0
    for inputs, labels in loader:
        correct += (net(inputs).argmax(1) == labels).sum().item()
        total += labels.numel()
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--samples", type=int, default=2048, help="training samples per epoch (a seeded subset)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    real = (ROOT.parent / "shared" / "datasets" / "mnist-t10k").exists()
    # Short epochs, many rounds: on a shared VM the speed of the CPU drifts over seconds, so a median over
    # many short, alternating epochs compares the loops better than a few long ones.
    overrides = [
        f"data.train.subset={{seed: 0, range: [0, {args.samples}]}}",
        f"train.epochs={args.rounds}",
        "train.schedule=null",
        "train.threads=1",
        "train.optimizer={type: sgd, lr: 0.01, momentum: 0.9}",
        "train.metrics=[{type: accuracy, output: logits, target: label}]",
    ] + ([] if real else FAKE)
    trainer = make_loop(load_spec(SPEC, overrides), Options(quiet=True), run_dir=Path(tempfile.mkdtemp()))
    dataset = trainer.train_loader.loader.dataset
    net = TutorialNet(1, 16 * 4 * 4)
    state = trainer.model.state_dict()
    net.load_state_dict({k: state[f"{LENET_KEYS[k.split('.')[0]]}.{k.split('.', 1)[1]}"] for k in net.state_dict()})
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    # The same shuffled order as dagcv's epochs, so both see identical batches: equal accuracy then means equal
    # training, and the timing compares loops, not orders.
    order = EpochSampler(len(dataset), shuffle=True, seed=trainer.cfg.seed)
    loader = DataLoader(dataset, batch_size=64, sampler=order)
    n = len(dataset)
    progress = Progress(enabled=False, total=trainer.total_steps)

    wall: dict[str, list[float]] = {"dagcv": [], "hand": []}
    cpu: dict[str, list[float]] = {"dagcv": [], "hand": []}
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        order.set_epoch(r)
        runs = [
            ("dagcv", lambda: trainer.train_epoch(progress)),
            ("hand", lambda: hand_written_epoch(net, loader, optimizer)),
        ]
        for name, run in runs if r % 2 == 0 else runs[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(n / (time.perf_counter() - start))
            cpu[name].append(n / (time.process_time() - start_cpu))
        ratios.append(wall["dagcv"][-1] / wall["hand"][-1])
        cpu_ratios.append(cpu["dagcv"][-1] / cpu["hand"][-1])
        print(
            f"round {r + 1}: dagcv {wall['dagcv'][-1]:6.0f} samples/s   hand-written {wall['hand'][-1]:6.0f} samples/s"
            f"   ratio {ratios[-1]:.3f}   (per CPU-second: {cpu_ratios[-1]:.3f})"
        )
    val = trainer.eval_loader.loader.dataset
    ours_acc = trainer.evaluate()["accuracy"]
    theirs_acc = accuracy(net, DataLoader(val, batch_size=500))
    print(
        f"data: {'MNIST t10k' if real else 'fake 28×28 images'}, {n} training samples per epoch, held-out 2,000, "
        f"batch 64, 1 thread, {args.rounds} epochs each"
    )
    print(
        f"samples/s median: dagcv {statistics.median(wall['dagcv']):.0f}, hand-written "
        f"{statistics.median(wall['hand']):.0f}; ratio (median of rounds) {statistics.median(ratios):.3f}; "
        f"per CPU-second (insensitive to other processes) {statistics.median(cpu_ratios):.3f}"
    )
    print(f"held-out accuracy: dagcv {ours_acc:.4f}, hand-written {theirs_acc:.4f}")


if __name__ == "__main__":
    main()
