"""Reinforcement learning: Gymnasium environments, and the policy and critic networks that act in them.

An environment block is not part of the model (``module=False``): the training loop makes the vector env and
feeds its observations in. Its ``action_space`` output is *static* (a kind with ``static=True``): the compiler
reads it at build time to size the policy and never passes it at run time, so a policy's ``forward`` takes
only the observations.
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from blocks.layers import linear_stack, require_inferred, run_stack
from dagcv.registry import Size, register_block


@register_block(
    "cartpole",
    family="env",
    outputs={"observation": "Observation[B, 4]", "action_space": "ActionSpace[2]"},
    module=False,
)
class CartPole:
    """Gymnasium's ``CartPole-v1``: 4 observation floats, 2 discrete actions, reward 1 per step balanced.

    Args:
        max_episode_steps: steps after which an episode is truncated.

    Example:
        >>> envs = CartPole().make_vector(2, seed=0)
        >>> envs.reset()[0].shape
        (2, 4)
    """

    env_id = "CartPole-v1"

    def __init__(self, *, max_episode_steps: Size = 500) -> None:
        self.max_episode_steps = max_episode_steps

    def make(self) -> gym.Env:
        """One environment, truncated after ``max_episode_steps``."""
        return gym.make(self.env_id, max_episode_steps=self.max_episode_steps)

    def make_vector(self, num_envs: int, *, seed: int | None = None) -> gym.vector.SyncVectorEnv:
        """``num_envs`` copies stepped in lockstep in this process.

        With a ``seed``, env ``i`` is seeded with ``seed + i`` and the action space with ``seed``, so every
        ``reset()`` and ``action_space.sample()`` that follows is reproducible.
        """
        envs = gym.vector.SyncVectorEnv([self.make] * num_envs)
        if seed is not None:
            envs.reset(seed=seed)
            envs.action_space.seed(seed)
        return envs

    def spaces(self) -> tuple[gym.spaces.Space, gym.spaces.Space]:
        """The observation and action space of one environment."""
        env = self.make()
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def __repr__(self) -> str:
        return f"CartPole(max_episode_steps={self.max_episode_steps})"


def _orthogonal_init(layers: nn.ModuleList, last_std: float) -> None:
    # CleanRL's PPO detail: orthogonal weights with gain sqrt(2) in the hidden layers, a small gain on the last
    # layer (0.01 for the policy, so the first actions are near uniform; 1 for the critic), zero biases.
    for i, layer in enumerate(layers):
        nn.init.orthogonal_(layer.weight, last_std if i == len(layers) - 1 else math.sqrt(2))
        nn.init.zeros_(layer.bias)


@register_block(
    "mlp_policy",
    family="policy",
    inputs={"obs": "Observation[B, D]", "action_space": "ActionSpace[A]"},
    outputs={"distribution": "Distribution[B, A]"},
    infer={"in_features": "D", "num_actions": "A"},
)
class MLPPolicy(nn.Module):
    """A tanh MLP from observations to a categorical distribution over discrete actions.

    ``action_space`` is a static port: it only sizes ``num_actions`` at build time and is not an argument of
    ``forward``, which takes the observations alone. The output's dims are the shape of its logits (batch,
    actions); its ``batch_shape`` is ``(B,)``.

    Args:
        in_features: observation size (inferred from ``D``).
        num_actions: number of discrete actions (inferred from the action space's ``A``).
        hidden: widths of the hidden layers, in order.

    Example:
        >>> MLPPolicy(in_features=4, num_actions=2)(torch.zeros(3, 4)).probs
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000],
                [0.5000, 0.5000]], grad_fn=<SoftmaxBackward0>)
    """

    def __init__(
        self, *, in_features: Size | None = None, num_actions: Size | None = None, hidden: tuple[Size, ...] = (64, 64)
    ) -> None:
        super().__init__()
        in_features = require_inferred(in_features, "in_features", "mlp_policy")
        num_actions = require_inferred(num_actions, "num_actions", "mlp_policy")
        self.layers = linear_stack([in_features, *hidden, num_actions])
        _orthogonal_init(self.layers, last_std=0.01)

    def forward(self, obs: Tensor) -> Categorical:
        return Categorical(logits=run_stack(self.layers, obs, torch.tanh))


@register_block(
    "mlp_critic",
    family="critic",
    inputs={"obs": "Observation[B, D]"},
    outputs={"value": "Value[B]"},
    infer={"in_features": "D"},
)
class MLPCritic(nn.Module):
    """A tanh MLP from observations to one state-value estimate per sample.

    Args:
        in_features: observation size (inferred from ``D``).
        hidden: widths of the hidden layers, in order.

    Example:
        >>> MLPCritic(in_features=4)(torch.zeros(3, 4)).shape
        torch.Size([3])
    """

    def __init__(self, *, in_features: Size | None = None, hidden: tuple[Size, ...] = (64, 64)) -> None:
        super().__init__()
        self.layers = linear_stack([require_inferred(in_features, "in_features", "mlp_critic"), *hidden, 1])
        _orthogonal_init(self.layers, last_std=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return run_stack(self.layers, obs, torch.tanh).squeeze(-1)
