"""The generative specs trained in full on the shipped MNIST split, then scored offline, side by side in one run.

    python tools/bench_generative.py [--runs runs/bench_generative] [--reuse] [--samples 2000] [--seed 0]
                                     [--only dcgan_mnist vae_mnist ...] [--json out.json]

Each spec (``dcgan_mnist``, ``wgan_gp_mnist``, ``cgan_mnist``, ``vae_mnist``, ``vqvae_prior_mnist``) trains with
its own budget on digits [0, 8000) of the seed-0 permutation of MNIST's 10,000 test digits (its wall time is
reported); ``--reuse`` scores runs already in ``--runs``. Then, with a fixed number of samples and a fixed seed
(both printed, since Fréchet distances depend on them):

- **FLD**: the Fréchet distance between ``--samples`` samples and the 2,000 held-out digits [8000, 10000), in the
  feature space of the MNIST classifier of :mod:`dagcv.train.sample_quality` (trained by
  ``tools/train_fld_net.py`` if ``runs/fld_net.pt`` is missing), with precision and recall (k = 3); next to the
  FLD of 2,000 real training digits (the floor) and of uniform noise (the ceiling). Goal: the best GAN below the
  VAE.
- ``vae_mnist``: the importance-weighted NLL (k = 100) of the held-out digits (goal ≤ 95 nats), as the run
  logged it.
- ``vqvae_prior_mnist``: the reconstruction MSE of the held-out digits through stage 1 (64 codes; goal ≤ 0.005).
- ``cgan_mnist``: the classifier's accuracy on samples of each requested class, ``--samples`` cycling 0-9
  (goal ≥ 90%).

Needs ``../shared/datasets/mnist-t10k``. About 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.compiler import compile_spec  # noqa: E402
from dagcv.spec import load_spec  # noqa: E402
from dagcv.train.checkpoint import load_checkpoint  # noqa: E402
from dagcv.train.config import SplitConfig  # noqa: E402
from dagcv.train.data import build_dataset  # noqa: E402
from dagcv.train.runner import Options, train_spec  # noqa: E402
from dagcv.train.sample_quality import load_feature_net, sample_quality  # noqa: E402
from dagcv.train.sampling import draw  # noqa: E402

SPECS = ["dcgan_mnist", "wgan_gp_mnist", "cgan_mnist", "vae_mnist", "vqvae_prior_mnist"]
FLD_NET = ROOT / "runs" / "fld_net.pt"
SPLIT = {"dataset": {"type": "mnist_idx", "root": "../shared/datasets/mnist-t10k"}, "batch_size": 500}


def digits(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] and labels of the seed-0 permutation's [start, end), as every shipped MNIST spec splits."""
    spec = load_spec(ROOT / "specs" / "vae_mnist.yaml")
    from dagcv.compiler import analyze

    split = SplitConfig.model_validate({**SPLIT, "subset": {"seed": 0, "range": [start, end]}})
    dataset = build_dataset(analyze(spec), split)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def train(name: str, runs: Path, reuse: bool) -> tuple[Path, float | None]:
    run = runs / name
    if reuse and (run / "checkpoints" / "last.pt").is_file():
        return run, None
    start = time.perf_counter()
    train_spec(load_spec(ROOT / "specs" / f"{name}.yaml"), Options(run_dir=run, quiet=True))
    return run, time.perf_counter() - start


def trained(run: Path):
    compiled = compile_spec(load_spec(run / "spec.resolved.yaml"))
    compiled.module.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    return compiled


@torch.no_grad()
def reconstruction_mse(run: Path, images: torch.Tensor) -> float:
    model = trained(run).module.eval()
    program = model.program(["reconstruction"], "eval")
    out = torch.cat([program(image=batch)["reconstruction"] for batch in images.split(500)])
    return torch.nn.functional.mse_loss(out, images).item()


def logged(run: Path, key: str) -> float | None:
    values = [r[key] for line in (run / "metrics.jsonl").read_text().splitlines() if key in (r := json.loads(line))]
    return values[-1] if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_generative")
    parser.add_argument("--reuse", action="store_true", help="score runs already in --runs instead of training")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=SPECS, choices=SPECS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not FLD_NET.is_file():
        subprocess.run([sys.executable, str(ROOT / "tools" / "train_fld_net.py"), "--out", str(FLD_NET)], check=True)
    net = load_feature_net(FLD_NET)
    held_out, _ = digits(8000, 10000)
    train_digits, _ = digits(0, 2000)
    n, seed = args.samples, args.seed
    rows: dict[str, dict] = {
        "real (training digits)": sample_quality(train_digits, held_out, net, seed=seed, num_samples=min(n, 2000)),
        "uniform noise": sample_quality(
            torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)), held_out, net, seed=seed,
            num_samples=min(n, 2000),
        ),
    }  # fmt: skip
    for name in args.only:
        run, seconds = train(name, args.runs, args.reuse)
        compiled = trained(run)
        start = time.perf_counter()
        samples = draw(compiled, n, seed=seed).clamp(0, 1)  # an MSE decoder's output may overshoot [0, 1] a little
        sampling = time.perf_counter() - start
        labels = torch.arange(n) % 10 if name == "cgan_mnist" else None  # draw() cycles the classes in this order
        row = sample_quality(samples, held_out, net, labels=labels, seed=seed, num_samples=n)
        row.update(train_s=seconds, sample_s=sampling)
        if name == "vae_mnist":
            row["iwae_nll"] = logged(run, "val/iwae_nll")
        if name == "vqvae_prior_mnist":
            row["recon_mse"] = reconstruction_mse(run, held_out)
        rows[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if not k.startswith("class_accuracy_")}), flush=True)
    report(rows, n, seed)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def report(rows: dict[str, dict], n: int, seed: int) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: object, spec: str) -> str:
        return "" if value is None else format(value, spec)

    table = Table(title=f"generative specs on MNIST: {n} samples, seed {seed}, vs 2,000 held-out digits")
    for column in ("model", "train s", "FLD", "precision", "recall", "class acc", "IWAE NLL", "recon MSE"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, row in rows.items():
        table.add_row(
            name, fmt(row.get("train_s"), ".0f"), fmt(row["fld"], ".2f"), fmt(row["precision"], ".3f"),
            fmt(row["recall"], ".3f"), fmt(row.get("class_accuracy"), ".3f"), fmt(row.get("iwae_nll"), ".2f"),
            fmt(row.get("recon_mse"), ".5f"),
        )  # fmt: skip
    Console(width=150).print(table)
    gans = [rows[g]["fld"] for g in ("dcgan_mnist", "wgan_gp_mnist") if g in rows]
    if gans and "vae_mnist" in rows:
        print(f"best GAN FLD {min(gans):.2f} vs VAE {rows['vae_mnist']['fld']:.2f}: "
              f"{'met' if min(gans) < rows['vae_mnist']['fld'] else 'missed'}")  # fmt: skip


if __name__ == "__main__":
    main()
