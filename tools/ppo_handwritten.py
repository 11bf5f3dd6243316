"""A hand-written single-file PPO for discrete-action Gymnasium envs: the baseline ``tools/bench_rl.py`` times dagcv's
PPO loop against (same hyperparameters, same envs and seeds, one thread).

It is written the way people write PPO by hand: two tanh MLPs (actor and critic) with orthogonal initialisation,
rollouts from a vector env in SAME_STEP autoreset mode with truncated episodes bootstrapped from their final
observation, GAE(λ), epochs of shuffled minibatches with per-minibatch advantage normalisation, the clipped
surrogate, an MSE value loss, gradient-norm clipping, and learning rate and clip range annealed linearly to 0. Like
CleanRL's ``ppo.py`` (and dagcv's loop and SB3) it computes the diagnostics people log: the losses, the approximate
KL and the clip fraction of every minibatch, and the explained variance of every rollout.

    python tools/ppo_handwritten.py --seed 0 --env-steps 100000
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from dataclasses import dataclass
from itertools import pairwise

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical


@dataclass
class Settings:
    """RL-Zoo's CartPole settings."""

    env_id: str = "CartPole-v1"
    num_envs: int = 8
    rollout_steps: int = 32
    minibatches: int = 1
    update_epochs: int = 20
    gamma: float = 0.98
    gae_lambda: float = 0.8
    lr: float = 1e-3
    adam_eps: float = 1e-5  # SB3's and CleanRL's, as in specs/ppo_cartpole.yaml
    clip: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    env_steps: int = 100_000
    target_return: float | None = 475.0


def mlp(sizes: list[int], last_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        linear = nn.Linear(a, b)
        nn.init.orthogonal_(linear.weight, last_gain if i == len(sizes) - 2 else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] if i == len(sizes) - 2 else [linear, nn.Tanh()]
    return nn.Sequential(*layers)


def train(s: Settings, seed: int) -> dict:
    """Train until ``env_steps`` or until the mean of the last 20 episode returns reaches ``target_return``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(gym.make(s.env_id))] * s.num_envs,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    actor, critic = mlp([obs_dim, 64, 64, n_actions], 0.01), mlp([obs_dim, 64, 64, 1], 1.0)
    params = [*actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.Adam(params, lr=s.lr, eps=s.adam_eps)
    batch = s.num_envs * s.rollout_steps
    iterations = s.env_steps // batch
    obs = torch.as_tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    recent: deque[float] = deque(maxlen=20)
    curve, step, reached, start = [], 0, None, time.perf_counter()
    for iteration in range(iterations):
        left = 1.0 - iteration / iterations
        optimizer.param_groups[0]["lr"] = s.lr * left
        clip = s.clip * left
        # Rollout.
        b_obs = torch.zeros(s.rollout_steps, s.num_envs, obs_dim)
        b_act, b_logp, b_val, b_rew, b_done = (torch.zeros(s.rollout_steps, s.num_envs) for _ in range(5))
        with torch.no_grad():
            for t in range(s.rollout_steps):
                b_obs[t] = obs
                dist = Categorical(logits=actor(obs))
                action = dist.sample()
                b_act[t], b_logp[t], b_val[t] = action, dist.log_prob(action), critic(obs).squeeze(-1)
                next_obs, reward, term, trunc, info = envs.step(action.numpy())
                reward = torch.as_tensor(reward, dtype=torch.float32)
                for i in np.flatnonzero(trunc & ~term):  # bootstrap episodes cut by the time limit
                    final = torch.as_tensor(info["final_obs"][i], dtype=torch.float32)
                    reward[i] += s.gamma * critic(final).squeeze(-1)
                b_rew[t], b_done[t] = reward, torch.as_tensor(term | trunc, dtype=torch.float32)
                if "final_info" in info and "episode" in info["final_info"]:
                    for i in np.flatnonzero(info["final_info"]["_episode"]):
                        recent.append(float(info["final_info"]["episode"]["r"][i]))
                obs = torch.as_tensor(next_obs, dtype=torch.float32)
                step += s.num_envs
            # GAE(λ).
            adv = torch.zeros_like(b_rew)
            last, next_value = torch.zeros(s.num_envs), critic(obs).squeeze(-1)
            for t in reversed(range(s.rollout_steps)):
                nxt = next_value if t == s.rollout_steps - 1 else b_val[t + 1]
                alive = 1.0 - b_done[t]
                last = b_rew[t] + s.gamma * nxt * alive - b_val[t] + s.gamma * s.gae_lambda * alive * last
                adv[t] = last
            ret = adv + b_val
        # Learning.
        f_obs, f_act, f_logp = b_obs.reshape(batch, -1), b_act.reshape(-1).long(), b_logp.reshape(-1)
        f_adv, f_ret = adv.reshape(-1), ret.reshape(-1)
        size = batch // s.minibatches
        clipfracs = []
        for _ in range(s.update_epochs):
            order = torch.randperm(batch)
            for first in range(0, batch, size):
                i = order[first : first + size]
                a = (f_adv[i] - f_adv[i].mean()) / (f_adv[i].std() + 1e-8)
                log_ratio = Categorical(logits=actor(f_obs[i])).log_prob(f_act[i]) - f_logp[i]
                ratio = log_ratio.exp()
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
                v = ((critic(f_obs[i]).squeeze(-1) - f_ret[i]) ** 2).mean()
                optimizer.zero_grad()
                (pg + s.vf_coef * v).backward()
                nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                optimizer.step()
                with torch.no_grad():  # the diagnostics CleanRL logs
                    approx_kl = float(((ratio - 1) - log_ratio).mean())
                    clipfracs.append(float(((ratio - 1).abs() > clip).float().mean()))
                    losses = (float(pg), float(v))
        var = f_ret.var()
        explained = float("nan") if var == 0 else float(1 - (f_ret - b_val.reshape(-1)).var() / var)
        diagnostics = {"approx_kl": approx_kl, "clipfrac": float(np.mean(clipfracs)), "explained_variance": explained,
                       "pg_loss": losses[0], "v_loss": losses[1]}  # fmt: skip
        mean = float(np.mean(recent)) if recent else None
        curve.append((step, mean))
        if s.target_return is not None and len(recent) == recent.maxlen and mean >= s.target_return:
            reached = step
            break
    envs.close()
    elapsed = time.perf_counter() - start
    return {"steps_to_target": reached, "env_steps": step, "sps": step / elapsed, "curve": curve,
            "diagnostics": diagnostics}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-steps", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = train(Settings(env_steps=args.env_steps), args.seed)
    print(f"steps to 475: {result['steps_to_target']}, {result['sps']:.0f} env steps/s")


if __name__ == "__main__":
    main()
