"""Adversarial objectives, WGAN-GP's penalty and the noise sources, against their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blocks.adversarial import (
    CriticLoss,
    GaussianNoise,
    GeneratorLoss,
    GradientPenalty,
    RandomInterpolate,
    UniformNoise,
)

OBJECTIVES = ["minimax", "non_saturating", "hinge", "least_squares", "wasserstein"]


def scores() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, generator=g) * 2, torch.randn(16, generator=g) * 2


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_critic_losses_follow_their_papers(objective: str) -> None:
    real, fake = scores()
    got = CriticLoss(objective=objective)(real, fake)
    bce = F.binary_cross_entropy_with_logits
    want = {
        "minimax": bce(real, torch.ones(16)) + bce(fake, torch.zeros(16)),
        "non_saturating": bce(real, torch.ones(16)) + bce(fake, torch.zeros(16)),
        "hinge": torch.clamp(1 - real, min=0).mean() + torch.clamp(1 + fake, min=0).mean(),
        "least_squares": 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean(),
        "wasserstein": fake.mean() - real.mean(),
    }[objective]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_generator_losses_follow_their_papers(objective: str) -> None:
    _, fake = scores()
    d = torch.sigmoid(fake)
    want = {
        "minimax": torch.log(1 - d).mean(),
        "non_saturating": -torch.log(d).mean(),
        "hinge": -fake.mean(),
        "least_squares": 0.5 * ((fake - 1) ** 2).mean(),
        "wasserstein": -fake.mean(),
    }[objective]
    torch.testing.assert_close(GeneratorLoss(objective=objective)(fake), want)


def test_non_saturating_loss_keeps_its_gradient_where_minimax_vanishes() -> None:
    """Early in training the critic wins (D(G(z)) ≈ 0): log(1 - D) is flat there, -log D is not."""
    grads = {}
    for objective in ("minimax", "non_saturating"):
        fake = torch.full((4,), -8.0, requires_grad=True)
        GeneratorLoss(objective=objective)(fake).backward()
        grads[objective] = fake.grad.abs().mean().item()
    assert grads["minimax"] < 1e-3 < 0.2 < grads["non_saturating"]


def test_gradient_penalty_of_a_linear_critic_is_the_squared_norm_gap() -> None:
    """For D(x) = w·x + b the gradient is w everywhere, so the penalty is (‖w‖ - 1)² on any interpolate."""
    critic = torch.nn.Linear(3, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[2.0, -1.0, 2.0]]))  # ‖w‖ = 3
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    mixed = RandomInterpolate()(real, fake)
    penalty = GradientPenalty()(critic(mixed).squeeze(1), mixed)
    torch.testing.assert_close(penalty, torch.tensor(4.0))
    penalty.backward()  # the penalty trains the critic: a gradient reaches its weights
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_interpolates_lie_between_their_ends_per_sample() -> None:
    real, fake = torch.zeros(64, 2, 3), torch.ones(64, 2, 3)
    mixed = RandomInterpolate()(real, fake)
    eps = mixed[:, 0, 0]
    assert torch.equal(mixed, eps[:, None, None].expand_as(mixed))  # one ε per sample
    assert eps.min() >= 0 and eps.max() <= 1 and eps.std() > 0.1


@pytest.mark.parametrize("source", [GaussianNoise, UniformNoise])
def test_noise_sources_are_seeded_and_resume_exactly(source: type) -> None:
    a, b = source(dim=5, seed=3), source(dim=5, seed=3)
    assert torch.equal(a.draw(4), b.draw(4))
    state = a.state_dict()
    first = a.draw(2)
    a.load_state_dict(state)
    assert torch.equal(a.draw(2), first)
    assert not torch.equal(source(dim=5, seed=4).draw(4), source(dim=5, seed=3).draw(4))
