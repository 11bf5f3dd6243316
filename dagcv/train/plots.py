"""PNG curves of a run, drawn from its metrics.jsonl: training losses per step, evaluation metrics per epoch."""

from __future__ import annotations

from pathlib import Path

from dagcv.files import read_jsonl


def write_plots(run_dir: Path, title: str) -> list[Path]:
    """``plots/loss.png`` (training losses by step) and ``plots/metrics.png`` (evaluation metrics by epoch); for RL
    runs (``rollout`` records) ``plots/return.png`` (episodic return by environment step) and the losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        return []
    steps = [r for r in records if r["kind"] in ("step", "rollout")]
    epochs = [r for r in records if r["kind"] == "epoch"]
    rollouts = [r for r in records if r["kind"] == "rollout"]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    plots = [
        ("loss", steps, "step", "train/"),
        ("metrics", epochs, "epoch", ""),
        ("return", rollouts, "step", "episodic_r"),
    ]
    for name, rows, x, prefix in plots:
        keys = sorted(
            {
                k
                for r in rows
                for k, v in r.items()
                if k.startswith(prefix)
                and isinstance(v, int | float)
                and k not in ("step", "epoch", "lr", "samples_per_s")
                and not k.startswith("train/" if not prefix else "~")
            }
        )
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            points = [(r[x], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points, strict=True), label=key, marker="o" if x == "epoch" else None)
        ax.set_xlabel(x)
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        target = out_dir / f"{name}.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    return written
