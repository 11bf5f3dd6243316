"""Reinforcement learning: Gymnasium environments, the policies and critics that act in them, and the
policy-gradient objectives the on-policy loops minimise.

An environment block is not part of the model (``module=False``): the training loop makes the vector env and
feeds its observations in. Its ``action_space`` output is *static* (a kind with ``static=True``): the compiler
reads it at build time to size the policy and never passes it at run time, so a policy's ``forward`` takes
only the observations. ``gym_env`` takes any registered Gymnasium id; its ports come from the env's spaces at
check time (:mod:`dagcv.envs`).

The objectives are blocks, so an ablation swaps ``ppo_clip_objective`` for ``vanilla_pg_objective`` with a
one-word edit. They read what the rollout stored (actions, their old log-probabilities, advantages, returns)
through the spec's inputs, which the loop feeds.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from annotated_types import Gt, Le
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from blocks.layers import linear_stack, require_inferred, run_stack
from dagcv.envs import make_env, make_vector_env
from dagcv.registry import Size, register_block

# PPO's clip ranges: positive, and at most 10 (past 1 the lower bound of the ratio no longer binds; 1e308 overflowed
# the float32 clamp, found by the fuzzer).
ClipRange = Annotated[float, Gt(0), Le(10)]


@register_block(
    "gym_env",
    family="env",
    outputs={"observation": "Observation[B, *O]", "action_space": "ActionSpace"},
    module=False,
    refine="dagcv.envs:env_ports",
)
class GymEnv:
    """Any registered Gymnasium environment, ``num_envs`` copies in lockstep (observations ``B×...``).

    Its ports come from the env's own spaces when the spec is checked: ``observation: Observation[B, 4]`` and
    ``action_space: DiscreteSpace[2]`` for ``CartPole-v1``, ``BoxSpace[1]`` for ``Pendulum-v1``'s continuous
    torque. Vector envs autoreset in the same step (the true last observation of an episode is in
    ``info["final_obs"]``) and record episode statistics.

    Args:
        id: a registered Gymnasium id (``CartPole-v1``, ``Pendulum-v1``, ...).
        num_envs: copies stepped together.
        vectorization: ``sync`` (one process) or ``async`` (a process per env).
        wrappers: wrappers in order, each ``{type: name, ...arguments}``: ``normalize_observation``,
            ``normalize_reward``, ``clip_action``, ``frame_stack`` (``stack_size``), ``flatten_observation``.
        kwargs: keyword arguments of ``gymnasium.make`` for this env (``{g: 9.81}``).
        max_episode_steps: truncate episodes after this many steps (default: the env's own limit).

    Example:
        >>> envs = GymEnv(id="CartPole-v1", num_envs=2).make_vector(seed=0)
        >>> envs.reset()[0].shape
        (2, 4)
    """

    def __init__(
        self,
        *,
        id: str,
        num_envs: Size = 1,
        vectorization: Literal["sync", "async"] = "sync",
        wrappers: list[dict[str, Any]] | None = None,
        kwargs: dict[str, Any] | None = None,
        max_episode_steps: Size | None = None,
    ) -> None:
        self.env_id, self.num_envs, self.vectorization = id, num_envs, vectorization
        self.wrappers, self.kwargs, self.max_episode_steps = wrappers or [], kwargs or {}, max_episode_steps

    def make(self, render_mode: str | None = None) -> Any:
        """One environment with the per-env wrappers (for evaluation and videos)."""
        return make_env(self.env_id, self.kwargs, self.wrappers, self.max_episode_steps, render_mode)

    def make_vector(self, num_envs: int | None = None, *, seed: int | None = None) -> Any:
        """``num_envs`` (default: the block's) copies; with ``seed``, env ``i`` is seeded with ``seed + i``."""
        return make_vector_env(self.env_id, self.kwargs, self.wrappers, self.max_episode_steps,
                               num_envs or self.num_envs, self.vectorization, seed)  # fmt: skip

    def spaces(self) -> tuple[Any, Any]:
        """The observation and action space of one environment."""
        env = self.make()
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.env_id!r}, num_envs={self.num_envs})"


@register_block(
    "cartpole",
    family="env",
    outputs={"observation": "Observation[B, 4]", "action_space": "DiscreteSpace[2]"},
    module=False,
)
class CartPole(GymEnv):
    """Gymnasium's ``CartPole-v1``: 4 observation floats, 2 discrete actions; ``gym_env`` with its id fixed.

    Args:
        num_envs: copies stepped together.
        max_episode_steps: steps after which an episode is truncated.

    Example:
        >>> CartPole().make_vector(2, seed=0).reset()[0].shape
        (2, 4)
    """

    env_id = "CartPole-v1"

    def __init__(self, *, num_envs: Size = 1, max_episode_steps: Size = 500) -> None:
        super().__init__(id="CartPole-v1", num_envs=num_envs, max_episode_steps=max_episode_steps)


def _orthogonal_init(layers: nn.ModuleList, last_std: float) -> None:
    # CleanRL's PPO detail: orthogonal weights with gain sqrt(2) in the hidden layers, a small gain on the last
    # layer (0.01 for the policy, so the first actions are near uniform; 1 for the critic), zero biases.
    for i, layer in enumerate(layers):
        nn.init.orthogonal_(layer.weight, last_std if i == len(layers) - 1 else math.sqrt(2))
        nn.init.zeros_(layer.bias)


@register_block(
    "mlp_policy",
    family="policy",
    inputs={"obs": "Tensor[B, D]", "action_space": "DiscreteSpace[A]"},
    outputs={"distribution": "Distribution[B, A]"},
    infer={"in_features": "D", "num_actions": "A"},
)
class MLPPolicy(nn.Module):
    """A tanh MLP from observations (or a shared trunk's features) to a categorical distribution over actions.

    ``action_space`` is a static port: it only sizes ``num_actions`` at build time and is not an argument of
    ``forward``, which takes the observations alone. It must be a ``Discrete`` space: a continuous env is a
    check error here (``gaussian_mlp_policy`` acts in those). The output's dims are the shape of its logits.

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
        # No argument validation: it checks every sampled action again and costs a fifth of a PPO update.
        return Categorical(logits=run_stack(self.layers, obs, torch.tanh), validate_args=False)


@register_block(
    "gaussian_mlp_policy",
    family="policy",
    inputs={"obs": "Tensor[B, D]", "action_space": "BoxSpace[A]"},
    outputs={"distribution": "Distribution[B, A]"},
    infer={"in_features": "D", "action_dim": "A"},
)
class GaussianMLPPolicy(nn.Module):
    """A tanh MLP to the mean of a diagonal Gaussian over continuous actions, with a state-independent log-std.

    The distribution is ``Independent(Normal(mean, exp(log_std)), 1)``: ``log_prob`` sums over the action's
    dims, as PPO's ratio needs. The log-std is one learned parameter per action dim (CleanRL's
    ``ppo_continuous_action``), initialised to ``log_std_init``.

    Args:
        in_features: observation size (inferred from ``D``).
        action_dim: size of the action (inferred from the action space's ``A``).
        hidden: widths of the hidden layers, in order.
        log_std_init: the initial log standard deviation.

    Example:
        >>> dist = GaussianMLPPolicy(in_features=3, action_dim=1)(torch.zeros(5, 3))
        >>> tuple(dist.mean.shape), tuple(dist.log_prob(torch.zeros(5, 1)).shape)
        ((5, 1), (5,))
    """

    def __init__(
        self,
        *,
        in_features: Size | None = None,
        action_dim: Size | None = None,
        hidden: tuple[Size, ...] = (64, 64),
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        in_features = require_inferred(in_features, "in_features", "gaussian_mlp_policy")
        action_dim = require_inferred(action_dim, "action_dim", "gaussian_mlp_policy")
        self.layers = linear_stack([in_features, *hidden, action_dim])
        _orthogonal_init(self.layers, last_std=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, obs: Tensor) -> Independent:
        mean = run_stack(self.layers, obs, torch.tanh)
        std = self.log_std.exp().expand_as(mean)
        return Independent(Normal(mean, std, validate_args=False), 1, validate_args=False)  # as mlp_policy


@register_block(
    "mlp_critic",
    family="critic",
    inputs={"obs": "Tensor[B, D]"},
    outputs={"value": "Value[B]"},
    infer={"in_features": "D"},
)
class MLPCritic(nn.Module):
    """A tanh MLP from observations (or a shared trunk's features) to one state-value estimate per sample.

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


# ---------------------------------------------------------------------------------------------------------------
# Objectives: each a Loss the loop weights (PPO's vf_coef and ent_coef are the weights of value_loss and
# entropy_bonus in `train.losses`).

_PG_INPUTS = {
    "distribution": "Distribution",
    "action": "Action[B, *A]",
    "old_log_prob": "Value[B]",
    "advantage": "Value[B]",
}


@register_block("ppo_clip_objective", family="loss", inputs=_PG_INPUTS, outputs={"loss": "Loss[]"},
                default_mode="train")  # fmt: skip
class PPOClipObjective(nn.Module):
    """PPO's clipped surrogate: ``mean(max(-A·r, -A·clip(r, 1-ε, 1+ε)))`` with ``r = π(a)/π_old(a)``.

    ``r`` is computed from log-probabilities (``exp(log π(a) - log π_old(a))``). With ``anneal`` the clip range
    ε shrinks linearly to 0 over the run (RL-Zoo's CartPole setting): the loop reports the fraction of the run
    left through :meth:`set_progress`.

    Args:
        clip_coef: the clip range ε.
        anneal: shrink ε linearly to 0 over the run.

    Example:
        >>> objective = PPOClipObjective(clip_coef=0.2)
        >>> dist = Categorical(logits=torch.tensor([[0.0, 2.0]]))
        >>> old = dist.log_prob(torch.tensor([1])) - 1.0  # the action became e ≈ 2.7 times likelier: clipped
        >>> round(objective(dist, torch.tensor([1]), old, torch.tensor([1.0])).item(), 3)
        -1.2
    """

    def __init__(self, *, clip_coef: ClipRange = 0.2, anneal: bool = False) -> None:
        super().__init__()
        self.clip_coef, self.anneal = clip_coef, anneal
        self.progress_left = 1.0

    def set_progress(self, remaining: float) -> None:
        """The fraction of the run left, from 1 to 0 (the loop calls it before each update)."""
        self.progress_left = float(remaining)

    @property
    def clip_range(self) -> float:
        return self.clip_coef * self.progress_left if self.anneal else self.clip_coef

    def forward(self, distribution: Distribution, action: Tensor, old_log_prob: Tensor, advantage: Tensor) -> Tensor:
        ratio = (distribution.log_prob(action) - old_log_prob).exp()
        eps = self.clip_range
        unclipped = -advantage * ratio
        clipped = -advantage * ratio.clamp(1 - eps, 1 + eps)
        return torch.max(unclipped, clipped).mean()

    def extra_repr(self) -> str:
        return f"clip_coef={self.clip_coef}, anneal={self.anneal}"


@register_block("vanilla_pg_objective", family="loss", inputs=_PG_INPUTS, outputs={"loss": "Loss[]"},
                default_mode="train")  # fmt: skip
class VanillaPGObjective(nn.Module):
    """The plain policy-gradient objective ``-mean(log π(a) · A)`` (A2C, REINFORCE); ``old_log_prob`` is unused.

    Example:
        >>> dist = Categorical(logits=torch.zeros(2, 2))
        >>> round(VanillaPGObjective()(dist, torch.tensor([0, 1]), torch.zeros(2), torch.ones(2)).item(), 4)
        0.6931
    """

    def forward(
        self, distribution: Distribution, action: Tensor, old_log_prob: Tensor | None, advantage: Tensor
    ) -> Tensor:
        return -(distribution.log_prob(action) * advantage).mean()


@register_block(
    "value_loss",
    family="loss",
    inputs={"value": "Value[B]", "returns": "Value[B]", "old_value": "Value[B]?"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class ValueLoss(nn.Module):
    """The critic's squared error ``mean((V - R)²)``, optionally clipped around the rollout's values.

    With ``clip_coef`` (off by default, as in Stable-Baselines3) the loss is
    ``mean(max((V - R)², (V_old + clip(V - V_old, -c, c) - R)²))`` (CleanRL's ``clip_vloss``). PPO weights it
    by ``vf_coef`` through ``train.losses``.

    Args:
        clip_coef: the clip range of the value update, or null for none.

    Example:
        >>> round(ValueLoss()(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item(), 3)
        2.5
    """

    def __init__(self, *, clip_coef: ClipRange | None = None) -> None:
        super().__init__()
        self.clip_coef = clip_coef

    def forward(self, value: Tensor, returns: Tensor, old_value: Tensor | None = None) -> Tensor:
        squared = (value - returns) ** 2
        if self.clip_coef is None or old_value is None:
            return squared.mean()
        clipped = old_value + (value - old_value).clamp(-self.clip_coef, self.clip_coef)
        return torch.max(squared, (clipped - returns) ** 2).mean()

    def extra_repr(self) -> str:
        return f"clip_coef={self.clip_coef}"


@register_block("entropy_bonus", family="loss", inputs={"distribution": "Distribution"}, outputs={"loss": "Loss[]"},
                default_mode="train")  # fmt: skip
class EntropyBonus(nn.Module):
    """Minus the policy's mean entropy: minimising it (weighted by PPO's ``ent_coef``) keeps the policy exploring.

    Example:
        >>> round(EntropyBonus()(Categorical(logits=torch.zeros(3, 2))).item(), 4)  # -log 2
        -0.6931
    """

    def forward(self, distribution: Distribution) -> Tensor:
        return -distribution.entropy().mean()
