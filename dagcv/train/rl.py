"""What the on-policy loops share: rollouts from vector envs, GAE, episode statistics, env state in checkpoints.

The details that fail silently when missed, each where it happens:

- Gymnasium 1.x vector envs autoreset in ``NEXT_STEP`` mode by default (the step after an episode's end returns
  the reset observation and ignores the action). dagcv builds them in ``SAME_STEP`` mode (:mod:`dagcv.envs`):
  every stored step is a real one, and the true last observation of an ended episode is ``info["final_obs"]``.
- ``terminated`` and ``truncated`` are kept apart. A truncated episode (a time limit: every successful CartPole
  episode ends this way) did not end in the MDP, so its last reward is bootstrapped with ``γ·V(final_obs)``, as
  Stable-Baselines3 does; a terminated one is not.
- Log-probabilities and values are stored when the actions are taken, not recomputed later.

>>> adv, ret = compute_gae(torch.ones(3, 1), torch.zeros(3, 1), torch.tensor([[0.0], [1.0], [0.0]]),
...                        torch.zeros(1), gamma=0.5, lam=1.0)
>>> adv[:, 0].tolist()
[1.5, 1.0, 1.0]
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor, *, gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """GAE(λ) advantages and returns of a rollout (``T×N`` tensors).

    ``dones[t]`` says that an episode ended after the action of step ``t`` (terminated, or truncated with its
    bootstrap already in ``rewards[t]``), so step ``t+1`` starts a new one; ``last_value`` is ``V`` of the
    observation after the last step. Returns are ``advantages + values`` (the critic's target).
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        last = delta + gamma * lam * alive * last
        advantages[t] = last
    return advantages, advantages + values


def monte_carlo_returns(
    rewards: torch.Tensor, dones: torch.Tensor, *, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted returns ``G_t = r_t + γ·G_{t+1}`` within each episode of a ``T×N`` rollout, and which steps have
    one: the steps of an episode still running when the rollout ends have no complete return (False)."""
    steps = rewards.shape[0]
    returns = torch.zeros_like(rewards)
    complete = torch.zeros_like(rewards, dtype=torch.bool)
    running = torch.zeros_like(rewards[0])
    ended = torch.zeros_like(rewards[0], dtype=torch.bool)
    for t in reversed(range(steps)):
        done = dones[t].bool()
        running = rewards[t] + gamma * running * (~done)
        ended = ended | done
        returns[t], complete[t] = running, ended
    return returns, complete


def kl_and_clip_fraction(log_ratio: torch.Tensor, clip: float) -> tuple[float, float]:
    """PPO's diagnostics: the approximate KL ``mean((r - 1) - log r)`` (http://joschu.net/blog/kl-approx.html,
    as CleanRL logs it) and the fraction of ratios outside ``[1 - clip, 1 + clip]``."""
    ratio = log_ratio.exp()
    return float(((ratio - 1) - log_ratio).mean()), float(((ratio - 1).abs() > clip).float().mean())


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)``: 1 for a perfect critic, 0 for a constant one."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


@dataclass
class Rollout:
    """``T`` steps of ``N`` envs: observations, actions, their log-probabilities and values when taken, rewards
    (with truncation bootstraps) and episode ends."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    terminated: torch.Tensor
    valid: torch.Tensor  # steps the update learns from (REINFORCE drops episodes the rollout cut)


class EpisodeStats:
    """Returns and lengths of finished episodes (each env's ``RecordEpisodeStatistics``, read from the final info
    of the step that ended them); the last ``window`` kept."""

    def __init__(self, window: int = 20) -> None:
        self.returns: deque[float] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self.recent: list[tuple[float, int]] = []  # finished since the last log record

    def add(self, info: dict[str, Any]) -> None:
        final = info.get("final_info", {})
        if "episode" not in final:
            return
        for i in np.flatnonzero(final["_episode"]):
            ret, length = float(final["episode"]["r"][i]), int(final["episode"]["l"][i])
            self.returns.append(ret)
            self.lengths.append(length)
            self.recent.append((ret, length))

    @property
    def mean_return(self) -> float | None:
        return float(np.mean(self.returns)) if self.returns else None

    def pop_recent(self) -> dict[str, float]:
        """Mean return and length of the episodes finished since the last call (empty if none)."""
        if not self.recent:
            return {}
        rets, lens = zip(*self.recent, strict=True)
        self.recent = []
        return {"episodic_return": float(np.mean(rets)), "episodic_length": float(np.mean(lens))}

    def state_dict(self) -> dict[str, Any]:
        return {"returns": list(self.returns), "lengths": list(self.lengths), "recent": self.recent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns.extend(state["returns"])
        self.lengths.extend(state["lengths"])
        self.recent = [tuple(x) for x in state["recent"]]


# ---------------------------------------------------------------------------------------------------------------
# Envs in checkpoints


def env_state(envs: Any) -> torch.Tensor | None:
    """The vector env pickled into a byte tensor (a checkpoint holds tensors only), or None if it cannot be."""
    try:
        return torch.frombuffer(bytearray(pickle.dumps(envs)), dtype=torch.uint8)
    except Exception:
        return None


def restore_envs(state: torch.Tensor | None) -> Any:
    """The vector env of a checkpoint. Unpickling runs code from the run directory: resuming trusts it."""
    return None if state is None else pickle.loads(state.numpy().tobytes())
