"""Using a trained policy: play episodes (``dagcv eval RUN``), film one (``--video``), record a dataset of
(observation, action, reward) steps for behavioural cloning (``dagcv rollout RUN -o DIR``).

The policy acts deterministically (the distribution's mode: the likeliest action, or a Gaussian's mean). An env
that normalised its observations during training is given the training statistics (frozen), read from the
run's last checkpoint, so the policy sees what it learned on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dagcv.compiler import compile_spec
from dagcv.errors import SpecError
from dagcv.files import atomic_file
from dagcv.spec import load_spec
from dagcv.train.checkpoint import load_checkpoint
from dagcv.train.rl import restore_envs

ROLLOUT_FILE = "episodes.npz"


class TrainedPolicy:
    """A run's policy and env: its spec from the run directory, its weights from ``checkpoints/last.pt``."""

    def __init__(self, run: Path) -> None:
        spec = load_spec(run / "spec.resolved.yaml")
        cfg = spec.train or {}
        if not isinstance(cfg, dict) or cfg.get("loop") not in ("ppo", "a2c", "reinforce"):
            raise SpecError.at(None, f"{run} is not the run of an RL loop (train.loop: {cfg.get('loop')!r})",
                               hint="`dagcv eval SPEC --ckpt FILE` evaluates a supervised checkpoint")  # fmt: skip
        compiled = compile_spec(spec)
        self.plan = compiled.built.sg.training  # type: ignore[attr-defined]
        self.model = compiled.module.eval()
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        self.model.load_state_dict(state["model"], strict=True)
        self.env_block = compiled.built.objects[self.plan.train.env]
        self.policy = self.plan.train.policy
        self.act = self.model.program([self.policy])
        self.obs_arg = f"{self.plan.train.env}_observation"
        self.training_envs = restore_envs(state["loop"].get("envs"))

    def make_env(self, render_mode: str | None = None) -> Any:
        env = self.env_block.make(render_mode)
        if self.training_envs is not None:
            _freeze_normalisation(self.training_envs.unwrapped.envs[0], env)
        return env

    @torch.no_grad()
    def action(self, obs: np.ndarray) -> np.ndarray:
        dist = self.act(**{self.obs_arg: torch.as_tensor(obs, dtype=torch.float32)[None]})[self.policy]
        return dist.mode[0].numpy()


def _wrappers(env: Any) -> list[Any]:
    out = []
    while env is not None:
        out.append(env)
        env = getattr(env, "env", None)
    return out


def _freeze_normalisation(source: Any, target: Any) -> None:
    """The training env's observation statistics in the evaluation env, no longer updated."""
    trained = [w for w in _wrappers(source) if hasattr(w, "obs_rms")]
    for wrapper, stats in zip([w for w in _wrappers(target) if hasattr(w, "obs_rms")], trained, strict=False):
        wrapper.obs_rms = stats.obs_rms
        wrapper.update_running_mean = False


def play(run: Path, episodes: int = 10, seed: int = 10_000, video: Path | None = None) -> dict[str, float]:
    """Play ``episodes`` deterministic episodes; the first one filmed into ``video`` (a GIF) when given."""
    import os

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # frames are drawn off-screen: no display needed
    policy = TrainedPolicy(run)
    returns, lengths, frames = [], [], []
    for i in range(episodes):
        env = policy.make_env("rgb_array" if video is not None and i == 0 else None)
        obs, _ = env.reset(seed=seed + i)
        total, steps, done = 0.0, 0, False
        while not done:
            if video is not None and i == 0:
                frames.append(_render(env))
            obs, reward, terminated, truncated, info = env.step(policy.action(obs))
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        if "episode" in info:  # the env's own return, recorded beneath normalize_reward and any other wrapper
            total, steps = float(info["episode"]["r"]), int(info["episode"]["l"])
        env.close()
        returns.append(total)
        lengths.append(steps)
    if video is not None:
        write_gif(video, frames)
    return {"episodes": episodes, "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "mean_length": float(np.mean(lengths))}  # fmt: skip


def _render(env: Any) -> np.ndarray:
    import gymnasium as gym

    try:
        return env.render()
    except gym.error.DependencyNotInstalled as exc:
        raise SpecError.at(None, f"cannot film {env.spec.id if env.spec else 'the env'}: {exc}") from None


def write_gif(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    from PIL import Image

    if path.suffix.lower() != ".gif":
        raise SpecError.at(None, f"cannot write a video as {path.suffix}: use a .gif file")
    images = [Image.fromarray(f) for f in frames]
    with atomic_file(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)


def record(run: Path, out: Path, episodes: int = 20, seed: int = 20_000) -> dict[str, Any]:
    """Play ``episodes`` with the trained policy and write their steps to ``out/episodes.npz``: observations,
    actions, rewards and episode indices (a dataset the ``rollout_dataset`` block reads)."""
    policy = TrainedPolicy(run)
    obs_list, actions, rewards, index = [], [], [], []
    for i in range(episodes):
        env = policy.make_env()
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action = policy.action(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            obs_list.append(np.asarray(obs, dtype=np.float32))
            actions.append(action)
            rewards.append(float(reward))
            index.append(i)
            obs, done = next_obs, terminated or truncated
        env.close()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / ROLLOUT_FILE) as f:
        np.savez(f, observation=np.stack(obs_list), action=np.asarray(actions), reward=np.asarray(rewards),
                 episode=np.asarray(index))  # fmt: skip
    return {"episodes": episodes, "steps": len(actions), "file": str(out / ROLLOUT_FILE)}
