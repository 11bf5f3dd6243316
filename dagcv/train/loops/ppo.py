"""Proximal policy optimisation over a spec's graph, as readable as CleanRL's ``ppo.py``.

The spec holds the model: an env block, a policy (a ``Distribution`` output), usually a critic (a ``Value``
output), and objective blocks (``ppo_clip_objective``, ``value_loss``, ``entropy_bonus``) whose Loss outputs
this loop weights and sums. The loop asks the compiled model for two programs: ``act`` (observation →
distribution, value; no losses) to collect rollouts, and ``update`` (a minibatch of the rollout → losses,
distribution, value) to learn from them. One iteration:

1. anneal the learning rate (and tell blocks such as the clip objective how much of the run is left);
2. collect ``rollout_steps`` steps of every env, storing observations, actions, their log-probabilities and the
   critic's values when taken, rewards (truncated episodes bootstrapped with ``γ·V(final_obs)``) and episode ends;
3. GAE(λ) advantages and returns from the stored values (:func:`dagcv.train.rl.compute_gae`);
4. ``update_epochs`` passes over the rollout in ``minibatches`` shuffled minibatches: normalise the minibatch's
   advantages, run ``update``, backpropagate the weighted loss, clip the gradient norm, step; stop the epochs
   early once the approximate KL passes ``target_kl``;
5. log what CleanRL logs (episodic return and length, SPS, each loss, entropy, approximate KL, clip fraction,
   explained variance, learning rate) and checkpoint every ``checkpoint_every`` iterations.

Its clock is environment steps; its state is the optimizer, the counters, the episode statistics, the current
observations and, when they pickle (CartPole's do), the envs themselves.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch

from dagcv.compiler import Compiled
from dagcv.graph import source_argument
from dagcv.lower import program_arguments
from dagcv.train.context import RunContext, RunResult, check_finite
from dagcv.train.optim import make_optimizer
from dagcv.train.rl import (
    EpisodeStats,
    Rollout,
    compute_gae,
    env_state,
    explained_variance,
    kl_and_clip_fraction,
    restore_envs,
)
from dagcv.train.rl_config import OnPolicyConfig


class PPOLoop:
    """Train a compiled policy-gradient spec on its env (see the module docstring)."""

    clock = "env steps"

    def __init__(self, ctx: RunContext, compiled: Compiled, cfg: OnPolicyConfig) -> None:
        self.ctx, self.compiled, self.cfg = ctx, compiled, cfg
        sg = compiled.built.sg
        self.device = ctx.device
        self.model = compiled.module.to(self.device)
        self.env_block = compiled.built.objects[cfg.env]
        self.num_envs = self.env_block.num_envs
        self.envs = self.env_block.make_vector()
        self.obs_arg = source_argument(cfg.env, "observation")
        kinds = {name: t.kind for name, (n, p) in sg.outputs.items() if (t := sg.out_type(n, p)) is not None}
        programs = cfg.programs(kinds)
        self.act = self.model.program(*programs["act"])
        self.update_program = self.model.program(*programs["update"])
        self.update_args = program_arguments(self.update_program)
        self.monitor = self.model.program(*programs["monitor"]) if "monitor" in programs else None
        self.monitor_args = program_arguments(self.monitor) if self.monitor is not None else []
        losses = [name for name, kind in kinds.items() if kind == "Loss"]
        weights = cfg.losses or dict.fromkeys(losses, 1.0)
        self.weights = {name: w for name, w in weights.items() if w != 0.0}  # the rest only goes to the log
        blocks = cfg.optimizer.blocks
        modules = [getattr(self.model, b) for b in blocks] if blocks else [self.model]
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg.optimizer, self.params)
        self.annealed = [m for m in self.model.modules() if hasattr(m, "set_progress")]
        self.clip_objective = next((m for m in self.model.modules() if hasattr(m, "clip_range")), None)
        self.batch = cfg.rollout_steps * self.num_envs
        self.minibatch = max(1, self.batch // cfg.minibatches)
        self.iterations = max(1, cfg.env_steps // self.batch)
        # Where the run stands.
        self.iteration, self.step = 0, 0
        self.episodes = EpisodeStats()
        obs, _ = self.envs.reset(seed=cfg.seed)
        self.envs.action_space.seed(cfg.seed)
        self.next_obs = self._tensor(obs)

    def _tensor(self, array: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    # -- state ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "step": self.step,
            "episodes": self.episodes.state_dict(),
            "next_obs": self.next_obs.cpu(),
            "envs": env_state(self.envs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.step = state["iteration"], state["step"]
        self.episodes.load_state_dict(state["episodes"])
        envs = restore_envs(state["envs"])
        if envs is not None:
            self.envs.close()
            self.envs, self.next_obs = envs, state["next_obs"].to(self.device)
        else:  # an env that does not pickle starts new episodes (reset with a seed of its own for this point)
            print("dagcv: warning: the environments could not be saved; they start new episodes", file=sys.stderr)
            obs, _ = self.envs.reset(seed=self.cfg.seed + self.iteration)
            self.next_obs = self._tensor(obs)

    def save(self, name: str = "last.pt") -> None:
        self.ctx.save(self.model, self.state_dict(), name)

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.cfg
        stopped = False
        with self.ctx.progress(self.iterations * self.batch, self.step, unit="env step") as progress:
            while self.iteration < self.iterations and not stopped:
                start = time.perf_counter()
                # 1. Anneal: the learning rate (and the clip range of blocks that anneal) go linearly to 0.
                left = 1.0 - self.iteration / self.iterations
                if cfg.anneal_lr:
                    self.optimizer.param_groups[0]["lr"] = left * cfg.optimizer.lr
                for module in self.annealed:
                    module.set_progress(left)
                # 2.-4. Collect, estimate advantages, learn.
                self.model.eval()
                rollout = self.collect()
                advantages, returns = self.advantages(rollout)
                self.model.train()
                stats = self.learn(rollout, advantages, returns)
                self.iteration += 1
                # 5. Log and checkpoint.
                stats["sps"] = self.batch / max(time.perf_counter() - start, 1e-9)
                stopped = self.log(stats, progress)
                if self.iteration % cfg.checkpoint_every == 0 or stopped or self.iteration == self.iterations:
                    self.save()
        self.envs.close()
        return RunResult(self.ctx.run_dir, self.ctx.history, stopped, self.ctx.main)

    @torch.no_grad()
    def collect(self) -> Rollout:
        """``rollout_steps`` steps of every env with the current policy."""
        cfg, steps, n = self.cfg, self.cfg.rollout_steps, self.num_envs
        obs = torch.zeros((steps, n, *self.next_obs.shape[1:]), device=self.device)
        actions: list[torch.Tensor] = []
        log_probs, values, rewards, dones, terminated = (torch.zeros((steps, n), device=self.device) for _ in range(5))
        for t in range(steps):
            obs[t] = self.next_obs
            out = self.act(**{self.obs_arg: self.next_obs})
            dist = out[cfg.policy]
            action = dist.sample()
            actions.append(action)
            log_probs[t] = dist.log_prob(action)
            if cfg.value is not None:
                values[t] = out[cfg.value]
            next_obs, reward, term, trunc, info = self.envs.step(action.cpu().numpy())
            self.step += n
            reward = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
            # A truncated episode did not end in the MDP: its last reward gets γ·V(true last observation).
            bootstrap = np.flatnonzero(trunc & ~term)
            if cfg.value is not None and len(bootstrap):
                final = self._tensor(np.stack([info["final_obs"][i] for i in bootstrap]))
                reward[bootstrap] += cfg.gamma * self.act(**{self.obs_arg: final})[cfg.value]
            rewards[t] = reward
            dones[t] = torch.as_tensor(term | trunc, dtype=torch.float32, device=self.device)
            terminated[t] = torch.as_tensor(term, dtype=torch.float32, device=self.device)
            self.episodes.add(info)
            self.next_obs = self._tensor(next_obs)
        valid = torch.ones((steps, n), dtype=torch.bool, device=self.device)
        return Rollout(obs, torch.stack(actions), log_probs, values, rewards, dones, terminated, valid)

    @torch.no_grad()
    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE(λ) over the rollout, bootstrapped from ``V`` of the observation after its last step."""
        cfg = self.cfg
        last = self.act(**{self.obs_arg: self.next_obs})[cfg.value] if cfg.value else torch.zeros(self.num_envs)
        return compute_gae(rollout.rewards, rollout.values, rollout.dones, last, gamma=cfg.gamma, lam=cfg.gae_lambda)

    def learn(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """Epochs of shuffled minibatches through the ``update`` program."""
        cfg = self.cfg
        flat = {
            self.obs_arg: rollout.obs.reshape(self.batch, *rollout.obs.shape[2:]),
            "action": rollout.actions.reshape(self.batch, *rollout.actions.shape[2:]),
            "old_log_prob": rollout.log_probs.reshape(-1),
            "advantage": advantages.reshape(-1),
            "returns": returns.reshape(-1),
            "old_value": rollout.values.reshape(-1),
        }
        sums: dict[str, float] = {}
        count, kls, clipfracs = 0, [], []
        rows = rollout.valid.reshape(-1).nonzero().squeeze(1)  # REINFORCE leaves out unfinished episodes
        for _ in range(cfg.update_epochs):
            order = rows[torch.randperm(len(rows), device=self.device)]
            for first in range(0, len(rows), self.minibatch):
                index = order[first : first + self.minibatch]
                batch = {name: flat[name][index] for name in self.update_args}
                if cfg.normalize_advantage and "advantage" in batch and len(index) > 1:
                    adv = batch["advantage"]
                    batch["advantage"] = (adv - adv.mean()) / (adv.std() + 1e-8)
                out = self.update_program(**batch)
                losses = {name: out[name] for name in self.weights}
                values = check_finite(losses, self.iteration + 1)
                total = sum(w * losses[name] for name, w in self.weights.items())
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()  # type: ignore[union-attr]
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    log_ratio = out[cfg.policy].log_prob(flat["action"][index]) - flat["old_log_prob"][index]
                    clip = self.clip_objective.clip_range if self.clip_objective is not None else 0.2
                    kl, clipfrac = kl_and_clip_fraction(log_ratio, clip)
                    kls.append(kl)
                    clipfracs.append(clipfrac)
                    for name, value in values.items():
                        sums[name] = sums.get(name, 0.0) + value
                    count += 1
            if cfg.target_kl is not None and kls and kls[-1] > cfg.target_kl:
                break
        stats = {f"train/{name}": value / max(count, 1) for name, value in sums.items()}
        if self.monitor is not None:  # losses weighted 0, on the last minibatch: logged, never differentiated
            with torch.no_grad():
                out = self.monitor(**{name: value for name, value in batch.items() if name in self.monitor_args})
            stats.update({f"train/{name}": float(value) for name, value in out.items()})
        stats.update(
            {"approx_kl": kls[-1] if kls else 0.0, "clipfrac": float(np.mean(clipfracs)) if clipfracs else 0.0}
        )
        if cfg.value is not None:
            stats["explained_variance"] = explained_variance(rollout.values.reshape(-1), returns.reshape(-1))
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        return stats

    def log(self, stats: dict[str, float], progress: Any) -> bool:
        """The iteration's record (every ``log_every`` iterations); True once the return target is met."""
        cfg = self.cfg
        record = {"kind": "rollout", "step": self.step, "iteration": self.iteration, **self.episodes.pop_recent(),
                  **stats}  # fmt: skip
        if self.episodes.mean_return is not None:  # what stop_at_return compares: the last `window` episodes
            record["return_last20"] = self.episodes.mean_return
        if self.iteration % cfg.log_every == 0 or self.iteration == self.iterations:
            self.ctx.log(record)
            progress.update(self.step, record)
        mean = self.episodes.mean_return
        full = len(self.episodes.returns) == self.episodes.returns.maxlen
        return cfg.stop_at_return is not None and full and mean is not None and mean >= cfg.stop_at_return
