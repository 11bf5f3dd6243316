"""PPO on CartPole, side by side in one run: dagcv's ``ppo`` loop on ``specs/ppo_cartpole.yaml``, Stable-Baselines3's
PPO and a hand-written single-file PPO (``tools/ppo_handwritten.py``), with RL-Zoo's CartPole settings (8 envs ×
32 steps, batch 256, 20 epochs, γ 0.98, λ 0.8, learning rate 1e-3 and clip 0.2 annealed linearly, no entropy
bonus, Adam's ε 1e-5: SB3's default), the same seeds, one thread. Then dagcv's PPO on Pendulum-v1 (continuous)
for 200,000 steps.

    python tools/bench_rl.py [--seeds 0 1 2] [--plot bench_rl_cartpole.png] [--skip-pendulum]

Per seed and implementation: env steps until the mean return of the last 20 episodes reaches 475 (goal for
dagcv: within 100,000 for every seed, no worse than SB3's median), and env steps per second of the training loop
(model construction excluded; goal: dagcv / SB3 and dagcv / hand-written at least 1.0). Pendulum: the mean return
of the last 20 episodes after 200,000 steps, for the first three seeds (goal: better than -400; random play scores
about -1,200). Needs the dev extras (Stable-Baselines3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.spec import load_spec  # noqa: E402
from dagcv.train.runner import Options, make_loop  # noqa: E402
from tools.ppo_handwritten import Settings, train  # noqa: E402

TARGET, BUDGET = 475.0, 100_000


def run_dagcv(seed: int, spec: str = "ppo_cartpole", steps: int = BUDGET, target: bool = True) -> dict:
    overrides = [f"train.seed={seed}", f"train.env_steps={steps}", "train.checkpoint_every=100000"]
    overrides += [] if target else ["train.stop_at_return=null"]
    options = Options(quiet=True, run_dir=Path(tempfile.mkdtemp()) / "run")
    loop = make_loop(load_spec(ROOT / "specs" / f"{spec}.yaml", overrides), options)
    loop.ctx.write_header("")
    start = time.perf_counter()
    result = loop.run()
    elapsed = time.perf_counter() - start
    curve = [(r["step"], r.get("return_last20")) for r in result.history]
    reached = loop.step if result.stopped_early else None
    return {"steps_to_target": reached, "env_steps": loop.step, "sps": loop.step / elapsed, "curve": curve,
            "last20": loop.episodes.mean_return}  # fmt: skip


def run_sb3(seed: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class Target(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.reached: int | None = None
            self.curve: list[tuple[int, float | None]] = []

        def _on_rollout_end(self) -> None:
            returns = [e["r"] for e in list(self.model.ep_info_buffer)[-20:]]
            mean = float(np.mean(returns)) if returns else None
            self.curve.append((self.num_timesteps, mean))
            if len(returns) == 20 and mean >= TARGET and self.reached is None:
                self.reached = self.num_timesteps

        def _on_step(self) -> bool:
            return self.reached is None

    def linear(value: float):
        return lambda progress_remaining: progress_remaining * value

    envs = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", envs, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
                learning_rate=linear(1e-3), clip_range=linear(0.2), ent_coef=0.0, seed=seed, device="cpu")  # fmt: skip
    callback = Target()
    start = time.perf_counter()
    model.learn(total_timesteps=BUDGET, callback=callback)
    elapsed = time.perf_counter() - start
    return {"steps_to_target": callback.reached, "env_steps": model.num_timesteps,
            "sps": model.num_timesteps / elapsed, "curve": callback.curve}  # fmt: skip


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"dagcv": "tab:blue", "SB3": "tab:orange", "hand-written": "tab:green"}
    for name, runs in results.items():
        for i, run in enumerate(runs):
            points = [(s, r) for s, r in run["curve"] if r is not None]
            ax.plot(*zip(*points, strict=True), color=colours[name], alpha=0.8, label=name if i == 0 else None)
    ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean return, last 20 episodes")
    ax.set_title("PPO on CartPole-v1, RL-Zoo settings, one thread")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--plot", type=Path, default=Path("bench_rl_cartpole.png"))
    parser.add_argument("--skip-pendulum", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {"dagcv": [], "SB3": [], "hand-written": []}
    for seed in args.seeds:  # interleaved, so machine load affects all three alike
        results["dagcv"].append(run_dagcv(seed))
        results["SB3"].append(run_sb3(seed))
        results["hand-written"].append(train(Settings(env_steps=BUDGET), seed))
        row = "  ".join(f"{name} {runs[-1]['steps_to_target']} steps, {runs[-1]['sps']:,.0f}/s"
                        for name, runs in results.items())  # fmt: skip
        print(f"seed {seed}: {row}", flush=True)
    print(f"\nsteps to a mean return of {TARGET:g} over the last 20 episodes (budget {BUDGET:,}), env steps/s:")
    for name, runs in results.items():
        steps = [r["steps_to_target"] for r in runs]
        reached = [s for s in steps if s is not None]
        median = statistics.median(reached) if len(reached) == len(steps) else None
        sps = statistics.median(r["sps"] for r in runs)
        print(f"  {name:13} steps {steps}  median {median}  env steps/s (median) {sps:,.0f}")
    ours = statistics.median(r["sps"] for r in results["dagcv"])
    for other in ("SB3", "hand-written"):
        ratios = [a["sps"] / b["sps"] for a, b in zip(results["dagcv"], results[other], strict=True)]
        per_seed = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  speed dagcv / {other}: {statistics.median(ratios):.2f} (per seed {per_seed})")
    print(f"  dagcv median {ours:,.0f} env steps/s")
    plot(results, args.plot)
    print(f"learning curves: {args.plot}")
    if not args.skip_pendulum:  # goal: better than -400 for every seed (random play: about -1,200)
        print("\nPendulum-v1, dagcv PPO (specs/ppo_pendulum.yaml), 200,000 env steps:")
        for seed in args.seeds[:3]:
            pendulum = run_dagcv(seed, "ppo_pendulum", 200_000, target=False)
            print(f"  seed {seed}: mean return of the last 20 episodes {pendulum['last20']:.1f} "
                  f"({pendulum['sps']:,.0f} env steps/s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
