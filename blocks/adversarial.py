"""Adversarial training: noise sources, the objectives of critic and generator, and WGAN-GP's gradient penalty.

A GAN is an ordinary graph here: ``noise -> generator -> critic -> loss``, with the critic called twice through
shared weights (``critic_fake: {shares: critic, in: generator}``). The ``gan`` loop
(:mod:`dagcv.train.loops.gan`) feeds the noise, passes the critic step the fake batch detached, and steps each
player's optimizer on the losses its group owns; the objectives below are blocks, so an ablation swaps
``objective: hinge`` for ``objective: wasserstein`` in the spec.

Objectives (``real`` and ``fake`` are the critic's raw scores, one per image or per patch):

=================  ===============================================  =========================================
objective          critic minimises                                 generator minimises
=================  ===============================================  =========================================
minimax            ``softplus(-real) + softplus(fake)`` (BCE)        ``-softplus(fake)`` = ``log(1 - D(G(z)))``
non_saturating     the same                                         ``softplus(-fake)`` = ``-log D(G(z))``
hinge              ``relu(1 - real) + relu(1 + fake)``               ``-fake``
least_squares      ``((real - 1)² + fake²) / 2``                     ``(fake - 1)² / 2``
wasserstein        ``fake - real``                                  ``-fake``
=================  ===============================================  =========================================

each averaged over the batch (and patches). The Wasserstein critic needs a Lipschitz constraint: weight clipping
(``clip_weights`` on the critic group of the loop; Arjovsky et al. 2017) or the gradient penalty below
(Gulrajani et al. 2017), weighted λ = 10 in ``train.critic.losses``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Size, register_block

Objective = Literal["minimax", "non_saturating", "hinge", "least_squares", "wasserstein"]
CRITIC_SIDE = {"minimax": "bce", "non_saturating": "bce", "hinge": "hinge", "least_squares": "least_squares",
               "wasserstein": "wasserstein"}  # fmt: skip
"""Objectives whose critic losses are the same: a generator objective pairs with a critic objective of its side."""


class NoiseSource:
    """A seeded source of latent vectors, drawn by the loop (or ``dagcv sample``) with the batch size it needs.

    Not a module: its draws are ``forward`` arguments (``<node>_out``), like an env's observations, so a program
    that needs noise says so in its signature. Its generator's state goes into checkpoints (``state_dict``).
    """

    def __init__(self, *, dim: Size = 100, seed: int = 0) -> None:
        self.dim, self.seed = dim, seed
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """``n`` latent vectors (``n × dim``), from this source's generator unless another is given."""
        return self._draw(n, generator or self.generator).to(device)

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, seed={self.seed})"


@register_block("gaussian_noise", family="noise", outputs={"out": "Noise[B, dim]"}, module=False)
class GaussianNoise(NoiseSource):
    """Standard normal latent vectors ``z ~ N(0, I)`` of size ``dim``, seeded (DCGAN, WGAN-GP, a VAE's prior).

    Args:
        dim: size of each vector.
        seed: seed of its own generator, so the noise does not depend on anything else the run draws.

    Example:
        >>> GaussianNoise(dim=8).draw(4).shape
        torch.Size([4, 8])
    """

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.dim, generator=generator)


@register_block("uniform_noise", family="noise", outputs={"out": "Noise[B, dim]"}, module=False)
class UniformNoise(NoiseSource):
    """Latent vectors uniform in ``[-1, 1]^dim``, seeded (the original GAN's noise).

    Args:
        dim: size of each vector.
        seed: seed of its own generator.

    Example:
        >>> bool(UniformNoise(dim=3).draw(1000).abs().max() <= 1)
        True
    """

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, self.dim, generator=generator) * 2 - 1


@register_block(
    "critic_loss",
    family="loss",
    inputs={"real": "Tensor[B, *S]", "fake": "Tensor[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class CriticLoss(nn.Module):
    """The critic's (discriminator's) side of an adversarial objective, from its scores of real and fake inputs.

    See the table in the module docstring; ``minimax`` and ``non_saturating`` share the binary cross-entropy.

    Args:
        objective: minimax, non_saturating, hinge, least_squares or wasserstein; the generator's loss block
            must use the same one (``dagcv check`` says so when they differ).

    Example:
        >>> scores = torch.tensor([2.0, 2.0]), torch.tensor([-2.0, -2.0])
        >>> round(CriticLoss(objective="hinge")(*scores).item(), 3)
        0.0
        >>> round(CriticLoss(objective="wasserstein")(*scores).item(), 3)
        -4.0
    """

    def __init__(self, *, objective: Objective = "non_saturating") -> None:
        super().__init__()
        self.objective = objective

    def forward(self, real: Tensor, fake: Tensor) -> Tensor:
        side = CRITIC_SIDE[self.objective]
        if side == "bce":
            return F.softplus(-real).mean() + F.softplus(fake).mean()
        if side == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        if side == "least_squares":
            return ((real - 1).pow(2).mean() + fake.pow(2).mean()) / 2
        return fake.mean() - real.mean()

    def extra_repr(self) -> str:
        return f"objective={self.objective}"


@register_block(
    "generator_loss",
    family="loss",
    inputs={"fake": "Tensor[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class GeneratorLoss(nn.Module):
    """The generator's side of an adversarial objective, from the critic's scores of its fakes.

    ``minimax`` is the original ``log(1 - D(G(z)))``, whose gradient vanishes while the critic wins easily;
    ``non_saturating`` maximises ``log D(G(z))`` instead (Goodfellow et al. 2014, §3).

    Args:
        objective: as the critic's loss block.

    Example:
        >>> round(GeneratorLoss(objective="non_saturating")(torch.zeros(3)).item(), 4)  # log 2
        0.6931
    """

    def __init__(self, *, objective: Objective = "non_saturating") -> None:
        super().__init__()
        self.objective = objective

    def forward(self, fake: Tensor) -> Tensor:
        if self.objective == "minimax":
            return -F.softplus(fake).mean()
        if self.objective == "non_saturating":
            return F.softplus(-fake).mean()
        if self.objective == "least_squares":
            return (fake - 1).pow(2).mean() / 2
        return -fake.mean()  # hinge and wasserstein

    def extra_repr(self) -> str:
        return f"objective={self.objective}"


@register_block(
    "random_interpolate",
    family="layer",
    inputs={"real": "Tensor[B, *S]", "fake": "Tensor[B, *S]"},
    outputs={"out": "Tensor[B, *S]"},
    default_mode="train",
)
class RandomInterpolate(nn.Module):
    """Points on straight lines between real and fake samples, ``ε·real + (1 - ε)·fake`` with ``ε ~ U[0, 1]``
    per sample: where WGAN-GP evaluates the critic's gradient. The result requires grad, so the penalty can
    differentiate the critic's score with respect to it even when both inputs are constants.

    Example:
        >>> out = RandomInterpolate()(torch.zeros(2, 3), torch.ones(2, 3))
        >>> out.shape, out.requires_grad, bool(((out >= 0) & (out <= 1)).all())
        (torch.Size([2, 3]), True, True)
    """

    def forward(self, real: Tensor, fake: Tensor) -> Tensor:
        eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
        mixed = eps * real + (1 - eps) * fake
        return mixed if mixed.requires_grad or not torch.is_grad_enabled() else mixed.requires_grad_(True)


@register_block(
    "random_interpolate_image",
    family="layer",
    inputs={"real": "Image[B, C, H, W]", "fake": "Image[B, C, H, W]"},
    outputs={"out": "Image[B, C, H, W]"},
    default_mode="train",
)
class RandomImageInterpolate(RandomInterpolate):
    """``random_interpolate`` for image batches: the interpolates are images, so an image critic can score them.

    Example:
        >>> RandomImageInterpolate()(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """


@register_block(
    "gradient_penalty",
    family="loss",
    inputs={"scores": "Tensor[B, *T]", "inputs": "Tensor[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class GradientPenalty(nn.Module):
    """WGAN-GP's penalty ``mean((‖∇ₓ D(x)‖₂ - target)²)`` over the critic's inputs ``x`` (Gulrajani et al. 2017).

    ``scores`` must be computed from ``inputs`` (a critic sharing the trained one, called on
    ``random_interpolate``'s output); the gradient is taken with ``create_graph=True`` so the penalty itself
    trains the critic. Weight it λ = 10 in the critic group's losses.

    Args:
        target: the gradient norm the penalty pulls towards (1 for a 1-Lipschitz critic).

    Example:
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> round(GradientPenalty()(x @ torch.tensor([3.0, 0.0, 4.0]), x).item(), 4)  # ‖w‖ = 5: (5 - 1)²
        16.0
    """

    def __init__(self, *, target: float = 1.0) -> None:
        super().__init__()
        self.target = target

    def forward(self, scores: Tensor, inputs: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # evaluation without autograd: nothing to penalise
            return scores.new_zeros(())
        (grad,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
        return (grad.flatten(1).norm(2, dim=1) - self.target).pow(2).mean()

    def extra_repr(self) -> str:
        return f"target={self.target}"
