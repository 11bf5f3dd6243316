"""Gymnasium wrappers of dagcv's own, where Gymnasium's do not pickle (a checkpoint saves the envs).

Imported only when an env is built (``dagcv/envs.py`` names them by ``module:qualname``), so ``dagcv check``
stays free of them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box


class ClipAction(gym.ActionWrapper):
    """Clip continuous actions to the env's bounds, as ``gymnasium.wrappers.ClipAction`` does (the policy sees an
    unbounded ``Box`` of the same shape), without the lambda that keeps Gymnasium's from pickling.

    >>> import pickle
    >>> env = ClipAction(gym.make("Pendulum-v1"))
    >>> env.action(np.array([5.0], dtype=np.float32)), env.action_space.high
    (array([2.], dtype=float32), array([inf], dtype=float32))
    >>> _ = pickle.dumps(env)
    """

    def __init__(self, env: gym.Env) -> None:
        if not isinstance(env.action_space, Box):
            raise TypeError(f"clip_action needs a Box action space, got {type(env.action_space).__name__}")
        super().__init__(env)
        self.low, self.high = env.action_space.low, env.action_space.high
        self.action_space = Box(-np.inf, np.inf, shape=env.action_space.shape, dtype=env.action_space.dtype)

    def action(self, action: Any) -> Any:
        return np.clip(action, self.low, self.high)
