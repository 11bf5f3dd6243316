"""The CartPole env block against its declared contract, and the PPO-style policy and critic."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

import blocks  # noqa: F401
from blocks.rl import CartPole, MLPCritic, MLPPolicy
from dagcv.registry import registry
from dagcv.types import evaluate_dims, parse_port_type


def declared_dims(block: str, port: str, **sizes: int) -> list[int]:
    contract = registry().get(block)
    assert contract is not None
    output = contract.output(port)
    assert output is not None
    return [d.value for d in evaluate_dims(parse_port_type(output.type).dims or (), sizes)]


def test_cartpole_spaces_match_the_contract() -> None:
    observation_space, action_space = CartPole().spaces()
    assert isinstance(observation_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete)
    assert [1, *observation_space.shape] == declared_dims("cartpole", "observation", B=1)
    assert [int(action_space.n)] == declared_dims("cartpole", "action_space")


def test_cartpole_vector_env_steps_and_truncates() -> None:
    envs = CartPole(max_episode_steps=5).make_vector(3, seed=0)
    obs, _ = envs.reset()
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    truncated_any = False
    for _ in range(6):
        obs, reward, terminated, truncated, _ = envs.step(np.zeros(3, dtype=np.int64))
        assert obs.shape == (3, 4) and reward.shape == (3,)
        truncated_any |= bool(truncated.any() or terminated.any())
    envs.close()
    assert truncated_any


def test_cartpole_seed_makes_runs_reproducible() -> None:
    first, second = CartPole().make_vector(2, seed=7), CartPole().make_vector(2, seed=7)
    np.testing.assert_array_equal(first.reset()[0], second.reset()[0])
    np.testing.assert_array_equal(first.action_space.sample(), second.action_space.sample())


def test_policy_gives_a_categorical_over_actions() -> None:
    torch.manual_seed(0)
    policy = MLPPolicy(in_features=4, num_actions=2)
    dist = policy(torch.randn(5, 4))
    assert isinstance(dist, Categorical)
    assert dist.batch_shape == (5,) and dist.event_shape == () and dist.logits.shape == (5, 2)
    actions = dist.sample()
    log_prob = dist.log_prob(actions)
    assert actions.shape == (5,) and log_prob.shape == (5,)
    assert torch.allclose(log_prob.exp(), dist.probs.gather(1, actions[:, None]).squeeze(1))
    # A last layer with gain 0.01 starts the policy close to uniform.
    assert torch.allclose(dist.probs, torch.full((5, 2), 0.5), atol=0.02)


def test_critic_gives_one_value_per_sample() -> None:
    assert MLPCritic(in_features=4, hidden=(8,))(torch.randn(7, 4)).shape == (7,)


@pytest.mark.parametrize("kind", ["policy", "critic"])
def test_orthogonal_init(kind: str) -> None:
    if kind == "policy":
        module, last_gain = MLPPolicy(in_features=4, num_actions=3), 0.01
    else:
        module, last_gain = MLPCritic(in_features=4), 1.0
    layers = module.layers
    for i, layer in enumerate(layers):
        gain = last_gain if i == len(layers) - 1 else math.sqrt(2)
        w = layer.weight.detach()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_policy_acts_in_the_env() -> None:
    envs = CartPole().make_vector(2, seed=0)
    obs, _ = envs.reset()
    actions = MLPPolicy(in_features=4, num_actions=2)(torch.as_tensor(obs)).sample()
    obs, *_ = envs.step(actions.numpy())
    envs.close()
    assert obs.shape == (2, 4)
