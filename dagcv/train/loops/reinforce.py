"""REINFORCE (Williams 1992): the policy gradient with Monte-Carlo returns of whole episodes.

The advantage of a step is its discounted return to the end of its episode, minus the critic's value when the
spec has a critic (the baseline, which the critic learns by regressing those returns). A rollout of
``rollout_steps`` (500 by default: a whole CartPole episode) per env is one update; the steps of an episode still
running when the rollout ends have no complete return and are left out of that update. Truncated episodes end
with the ``γ·V(final_obs)`` bootstrap when there is a critic, else as if terminated.
"""

from __future__ import annotations

import torch

from dagcv.train.loops.ppo import PPOLoop
from dagcv.train.rl import Rollout, monte_carlo_returns


class ReinforceLoop(PPOLoop):
    """PPOLoop with Monte-Carlo advantages over complete episodes (see the module docstring)."""

    @torch.no_grad()
    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        returns, complete = monte_carlo_returns(rollout.rewards, rollout.dones, gamma=self.cfg.gamma)
        rollout.valid &= complete
        return returns - rollout.values, returns
