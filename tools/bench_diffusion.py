"""The diffusion specs trained in full on the shipped MNIST split, then sampled and scored offline, side by side.

    python tools/bench_diffusion.py [--runs runs/bench_diffusion] [--reuse] [--samples 500] [--seed 0]
                                    [--only ddpm_mnist dit_mnist cfg_mnist ldm_mnist] [--json out.json]

Each spec trains with its own budget on digits [0, 8000) of the seed-0 permutation of MNIST's 10,000 test digits
(its wall time is reported; ``--reuse`` scores runs already in ``--runs``) and is sampled with its averaged (EMA)
weights. With a fixed number of samples and a fixed seed (both printed: Fréchet distances depend on them), in
the feature space of the MNIST classifier of :mod:`dagcv.train.sample_quality` (``runs/fld_net.pt``, trained by
``tools/train_fld_net.py`` when missing), against the 2,000 held-out digits [8000, 10000):

- ``ddpm_mnist`` (U-Net) and ``dit_mnist`` (DiT): FLD, precision and recall of DDPM with all 1,000 steps, DDIM
  with 50 and with 10 steps (η = 0), and, to tell the step count from the sampler's noise, DDIM-50 with η = 1 and
  DDPM respaced to 50 steps (``--samplers`` picks some); the sampling time per image per denoiser call. Goal:
  DDIM-50's FLD within 10% of DDPM-1000's, at 20× fewer steps.
- ``cfg_mnist``: the classifier's accuracy on samples of the requested classes (cycling 0-9) with guidance
  w = 0, 1 and 3 (DDIM-50; goal ≥ 95% at w = 3), and their FLD.
- ``ldm_mnist``: FLD of DDIM-50 latents decoded by the frozen VAE decoder.
- ``vae_mnist``: the FLD of the VAE's samples (trained here unless ``runs/bench_generative/vae_mnist`` holds a
  run), next to real training digits (the floor) and uniform noise (the ceiling). Goal: diffusion below the VAE.

Needs ``../shared/datasets/mnist-t10k``. About an hour on 2 cores with the defaults.
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
from dagcv.train.diffusion_config import SamplerConfig, diffusion_parts  # noqa: E402
from dagcv.train.sample_quality import load_feature_net, sample_quality  # noqa: E402
from dagcv.train.sampling import draw, run_weights  # noqa: E402
from tools.bench_generative import digits, train  # noqa: E402

SPECS = ["ddpm_mnist", "dit_mnist", "cfg_mnist", "ldm_mnist"]
FLD_NET = ROOT / "runs" / "fld_net.pt"
SAMPLERS = {
    "DDPM-1000": SamplerConfig(type="ddpm"),
    "DDIM-50": SamplerConfig(type="ddim", steps=50),
    "DDIM-10": SamplerConfig(type="ddim", steps=10),
    "DDIM-50 eta=1": SamplerConfig(type="ddim", steps=50, eta=1.0),
    "DDPM-50": SamplerConfig(type="ddpm", steps=50),
}
GUIDANCE = (0.0, 1.0, 3.0)


def averaged(run: Path):
    """The compiled spec of a run with its averaged weights (the raw ones when it kept no average)."""
    compiled = compile_spec(load_spec(run / "spec.resolved.yaml"))
    compiled.module.load_state_dict(run_weights(load_checkpoint(run / "checkpoints" / "last.pt")))
    return compiled


def timed_draw(compiled, n: int, seed: int, sampler: SamplerConfig | None, label=None) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    samples = draw(compiled, n, seed=seed, sampler=sampler, label=label)
    return samples.clamp(0, 1), time.perf_counter() - start


def score_samplers(compiled, name: str, held_out, net, n: int, seed: int, rows: dict, samplers: list[str]) -> None:
    """FLD per sampler, and seconds per image per denoiser call."""
    parts = diffusion_parts(compiled.built.sg)
    for label in samplers:
        sampler = SAMPLERS[label]
        samples, seconds = timed_draw(compiled, n, seed, sampler)
        row = sample_quality(samples, held_out, net, seed=seed, num_samples=n)
        calls = sampler.steps_for(parts.timesteps)
        row.update(sample_s=seconds, ms_per_image_step=1000 * seconds / (n * calls))
        rows[f"{name} {label}"] = row
        print(name, label, json.dumps(row), flush=True)


def score_guidance(compiled, name: str, held_out, net, n: int, seed: int, rows: dict) -> None:
    labels = torch.arange(n) % 10  # draw() cycles the classes in this order
    for w in GUIDANCE:
        sampler = SamplerConfig(type="ddim", steps=50, guidance=w)
        samples, seconds = timed_draw(compiled, n, seed, sampler)
        row = sample_quality(samples, held_out, net, labels=labels, seed=seed, num_samples=n)
        row.update(sample_s=seconds, ms_per_image_step=1000 * seconds / (n * 50 * (2 if w else 1)))
        rows[f"{name} DDIM-50 w={w:g}"] = row
        print(name, w, json.dumps({k: v for k, v in row.items() if not k.startswith("class_accuracy_")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_diffusion")
    parser.add_argument("--reuse", action="store_true", help="score runs already in --runs instead of training")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=SPECS, choices=SPECS)
    parser.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=list(SAMPLERS),
                        help="ddpm_mnist and dit_mnist: the samplers to score")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not FLD_NET.is_file():
        subprocess.run([sys.executable, str(ROOT / "tools" / "train_fld_net.py"), "--out", str(FLD_NET)], check=True)
    net = load_feature_net(FLD_NET)
    held_out, _ = digits(8000, 10000)
    n, seed = args.samples, args.seed
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    rows: dict[str, dict] = {
        "real (training digits)": sample_quality(digits(0, n)[0], held_out, net, seed=seed, num_samples=n),
        "uniform noise": sample_quality(noise, held_out, net, seed=seed, num_samples=n),
    }
    vae_run = ROOT / "runs" / "bench_generative" / "vae_mnist"
    if not (vae_run / "checkpoints" / "last.pt").is_file():
        vae_run, _ = train("vae_mnist", args.runs, args.reuse)
    vae = averaged(vae_run)
    rows["vae_mnist"] = sample_quality(timed_draw(vae, n, seed, None)[0], held_out, net, seed=seed, num_samples=n)
    for name in args.only:
        run, seconds = train(name, args.runs, args.reuse)
        rows[f"{name} (training)"] = {"train_s": seconds}
        print(name, "trained in", seconds, flush=True)
        compiled = averaged(run)
        if name == "cfg_mnist":
            score_guidance(compiled, name, held_out, net, n, seed, rows)
        elif name == "ldm_mnist":
            samples, secs = timed_draw(compiled, n, seed, SamplerConfig(type="ddim", steps=50, clip=None))
            rows[f"{name} DDIM-50"] = sample_quality(samples, held_out, net, seed=seed, num_samples=n)
            rows[f"{name} DDIM-50"].update(sample_s=secs)
        else:
            score_samplers(compiled, name, held_out, net, n, seed, rows, args.samplers)
    report(rows, n, seed)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def report(rows: dict[str, dict], n: int, seed: int) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: object, spec: str) -> str:
        return "" if value is None else format(value, spec)

    table = Table(title=f"diffusion specs on MNIST: {n} samples, seed {seed}, vs 2,000 held-out digits")
    for column in ("model / sampler", "train s", "sample s", "ms/image/step", "FLD", "precision", "recall",
                   "class acc"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model / sampler" else "right")
    for name, row in rows.items():
        table.add_row(
            name, fmt(row.get("train_s"), ".0f"), fmt(row.get("sample_s"), ".1f"),
            fmt(row.get("ms_per_image_step"), ".3f"), fmt(row.get("fld"), ".2f"), fmt(row.get("precision"), ".3f"),
            fmt(row.get("recall"), ".3f"), fmt(row.get("class_accuracy"), ".3f"),
        )  # fmt: skip
    Console(width=160).print(table)
    for name in ("ddpm_mnist", "dit_mnist"):
        if f"{name} DDPM-1000" in rows and f"{name} DDIM-50" in rows:
            ddpm, ddim = rows[f"{name} DDPM-1000"]["fld"], rows[f"{name} DDIM-50"]["fld"]
            ratio = ddim / ddpm
            print(f"{name}: DDIM-50 FLD {ddim:.2f} vs DDPM-1000 {ddpm:.2f} ({ratio:.3f}×): "
                  f"{'met' if ratio <= 1.10 else 'missed'} (goal ≤ 1.10×)")  # fmt: skip
    diffusion = {k: r["fld"] for k, r in rows.items() if k.split()[0] in SPECS and "fld" in r}
    if diffusion:
        best, vae = min(diffusion, key=diffusion.get), rows["vae_mnist"]["fld"]
        print(f"best diffusion FLD ({best}) {diffusion[best]:.2f} vs VAE {vae:.2f}: "
              f"{'met' if diffusion[best] < vae else 'missed'}")  # fmt: skip
    if "cfg_mnist DDIM-50 w=3" in rows:
        accuracy = rows["cfg_mnist DDIM-50 w=3"]["class_accuracy"]
        print(f"cfg_mnist class accuracy at w = 3: {accuracy:.3f}: {'met' if accuracy >= 0.95 else 'missed'} (≥ 0.95)")


if __name__ == "__main__":
    main()
