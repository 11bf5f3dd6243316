"""Train the feature net of FLD (dagcv.train.sample_quality) on the MNIST split the shipped specs train on.

    python tools/train_fld_net.py [--root ../shared/datasets/mnist-t10k] [--out runs/fld_net.pt] [--epochs 15]
                                  [--seed 0]

The split is read from specs/vqvae_mnist.yaml's data section and built by the training loop's own code
(``build_dataset``): indices [0, 8000) of the seed-0 permutation of the 10,000 MNIST test digits to train on,
[8000, 10000) held out. Generative specs train on the same 8,000 digits, so the held-out 2,000 are real digits
neither model has seen. Adam with a cosine learning rate and small random affine jitter (rotation, scale,
shift), one thread. Prints the held-out accuracy, the time taken, and sanity figures: the FLD (and
precision/recall) of the held-out digits against 2,000 training digits (small: same distribution) and of
uniform noise against the held-out digits (huge). Writes the checkpoint atomically, with the split, the
accuracy and the sanity figures in its metadata.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.compiler import analyze  # noqa: E402
from dagcv.spec import load_spec  # noqa: E402
from dagcv.train.config import SplitConfig  # noqa: E402
from dagcv.train.data import build_dataset  # noqa: E402
from dagcv.train.sample_quality import (  # noqa: E402
    DigitFeatureNet,
    class_accuracy,
    embed,
    frechet_distance_of_features,
    precision_recall,
    save_feature_net,
)

SPEC = ROOT / "specs" / "vqvae_mnist.yaml"
SANITY_SIZE = 2000


def load_split(root: str, name: str) -> tuple[Tensor, Tensor, dict]:
    """All images and labels of one split of the spec's data section, with the split's config as plain data."""
    spec = load_spec(SPEC, [f"data.{name}.dataset.root={root}"])
    split = SplitConfig.model_validate(spec.data[name])  # type: ignore[index]
    dataset = build_dataset(analyze(spec), split)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    plain = {
        "dataset": split.dataset,
        "subset": split.subset.model_dump(mode="json", exclude_none=True) if split.subset else None,
    }
    return torch.stack(images), torch.tensor(labels), plain


def jitter(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image rotated by up to ±10°, scaled by 0.9–1.1 and shifted by up to ±2 pixels (bilinear)."""
    n = len(images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # grid units: 14 pixels per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def train(net: DigitFeatureNet, images: Tensor, labels: Tensor, *, epochs: int, seed: int, batch_size: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = F.cross_entropy(net(jitter(images[batch], generator)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} ({time.perf_counter() - start:.1f} s)")


def sanity_figures(net: DigitFeatureNet, train_images: Tensor, val_images: Tensor, seed: int) -> dict[str, float]:
    """FLD, precision and recall of held-out digits vs training digits, and of uniform noise vs held-out digits."""
    noise = torch.rand(SANITY_SIZE, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    val, _ = embed(val_images[:SANITY_SIZE], net)
    trained, _ = embed(train_images[:SANITY_SIZE], net)
    noisy, _ = embed(noise, net)
    out = {}
    for name, fake in (("val_vs_train", trained), ("noise_vs_val", noisy)):
        precision, recall = precision_recall(val, fake)
        out.update({f"fld_{name}": frechet_distance_of_features(val, fake)})
        out.update({f"precision_{name}": precision, f"recall_{name}": recall})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/datasets/mnist-t10k", help="folder of the MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path("runs/fld_net.pt"), help="checkpoint to write")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="initial weights, batch order and jitter")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(args.seed)

    train_images, train_labels, train_split = load_split(args.root, "train")
    val_images, val_labels, val_split = load_split(args.root, "val")
    print(f"{len(train_images)} training digits, {len(val_images)} held out ({SPEC.relative_to(ROOT)} data section)")
    net = DigitFeatureNet()
    start = time.perf_counter()
    train(net, train_images, train_labels, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    net.eval()
    accuracy = class_accuracy(net, val_images, val_labels)
    print(f"held-out accuracy {accuracy:.4f} after {args.epochs} epochs, {seconds:.0f} s of training")
    sanity = sanity_figures(net, train_images, val_images, args.seed)
    for name in ("val_vs_train", "noise_vs_val"):
        print(f"{name} ({SANITY_SIZE} vs {SANITY_SIZE}): FLD {sanity[f'fld_{name}']:.3f}, "
              f"precision {sanity[f'precision_{name}']:.3f}, recall {sanity[f'recall_{name}']:.3f}")  # fmt: skip
    meta = {
        "spec": str(SPEC.relative_to(ROOT)),
        "train_split": train_split,
        "val_split": val_split,
        "val_accuracy": accuracy,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "train_seconds": round(seconds, 1),
        "torch": str(torch.__version__),
        "sanity": sanity,
    }
    save_feature_net(net, args.out, meta=meta)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
