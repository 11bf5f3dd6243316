"""Advantage actor-critic (A2C): PPO's loop with one gradient step per short rollout.

A2C collects ``rollout_steps`` (5 by default, as Stable-Baselines3) steps of every env, estimates advantages
(GAE with λ = 1 by default: n-step returns), and takes a single gradient step on the whole rollout. The loop is
:class:`~dagcv.train.loops.ppo.PPOLoop` with one epoch of one minibatch (its config allows nothing else); the
spec's objective is usually ``vanilla_pg_objective`` (the clip objective would be a no-op at ratio 1).
"""

from __future__ import annotations

from dagcv.train.loops.ppo import PPOLoop


class A2CLoop(PPOLoop):
    """PPOLoop under an A2C config: one pass of one minibatch per rollout."""
