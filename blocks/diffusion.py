"""Denoising diffusion: noise schedules (the forward process as a block), the diffusion loss, condition dropout for
classifier-free guidance, and the latent scale of latent diffusion.

A schedule block is the forward process q(x_t | x_0) of a β schedule over ``steps`` timesteps: in a training pass
it draws one timestep per sample uniformly, draws Gaussian noise ε, and gives ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε``
together with the regression target of the chosen ``prediction``:

- ``eps``: the noise ε (Ho et al., 2020);
- ``x0``: the clean sample x_0;
- ``v``: ``√ᾱ_t ε - √(1-ᾱ_t) x_0`` (Salimans & Ho, 2022).

and a per-sample loss ``weight``: 1, or the min-SNR-γ weight of Hang et al. (2023) expressed in the target's space
(``min(SNR, γ) / SNR`` for ε, ``min(SNR, γ)`` for x_0, ``min(SNR, γ) / (SNR + 1)`` for v), so that
:class:`DiffusionLoss` is one weighted MSE whatever the target. The schedule also knows how to turn a denoiser's
output back into (x̂_0, ε̂) at any timestep (:meth:`NoiseSchedule.split`), which is what the samplers
(:mod:`blocks.samplers`) need: a schedule is the one place the ᾱ table lives.

Tables are computed in float64 and kept in float32 buffers that are not part of the state_dict: they follow from
the parameters alone.

>>> schedule = LinearSchedule(steps=1000)
>>> round(schedule.alphas_cumprod[-1].item(), 5)
4e-05
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from dagcv.registry import Fraction, PositiveFloat, Size, register_block

Prediction = Literal["eps", "x0", "v"]

# The most timesteps a schedule may have (the tables and a DDPM sampler's loop grow with it).
MAX_STEPS = 10_000

_SCHEDULE_PORTS = {
    "inputs": {"x0": "Tensor[B, *F]"},
    "outputs": {
        "x_t": "Tensor[B, *F]",
        "t": "Timesteps[B]",
        "noise": "Noise[B, *F]",
        "target": "Tensor[B, *F]",
        "weight": "Tensor[B]",
        "alpha_bar": "Tensor[B]",
        "snr": "Tensor[B]",
    },
}
_STEPS_RULE = {f"steps >= 2 and steps <= {MAX_STEPS}": f"a schedule has 2 to {MAX_STEPS} timesteps"}


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``values`` of shape (B,) viewed to broadcast over a batch shaped like ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule(nn.Module):
    """A β schedule and the forward process it defines; subclasses give the β table (see the module docstring).

    Args:
        betas: β_1 … β_T.
        prediction: what a denoiser trained against this schedule predicts: ``eps``, ``x0`` or ``v``.
        min_snr_gamma: γ of min-SNR-γ loss weighting; None weighs every timestep 1.
    """

    def __init__(self, *, betas: Tensor, prediction: Prediction = "eps", min_snr_gamma: float | None = None) -> None:
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be eps, x0 or v, not {prediction!r}")
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        betas = betas.double()
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float(), persistent=False)

    @property
    def steps(self) -> int:
        return self.betas.shape[0]

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t for integer timesteps; ``t = -1`` stands for the clean sample (ᾱ = 1)."""
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), device=t.device))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        a = _per_sample(self.alpha_bar(t), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser regresses onto at ``t``: ε, x_0 or v."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a = _per_sample(self.alpha_bar(t), x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def split(self, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from a denoiser's ``output`` at ``x_t``, whatever it predicts."""
        a = _per_sample(self.alpha_bar(t), x_t)
        if self.prediction == "eps":
            return (x_t - (1 - a).sqrt() * output) / a.sqrt(), output
        if self.prediction == "x0":
            return output, (x_t - a.sqrt() * output) / (1 - a).sqrt()
        return a.sqrt() * x_t - (1 - a).sqrt() * output, a.sqrt() * output + (1 - a).sqrt() * x_t

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t)."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample weight of the MSE on the target: 1, or min-SNR-γ in the target's space."""
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, device=t.device)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[self.prediction]

    def forward(self, x0: Tensor) -> dict[str, Tensor]:
        t = torch.randint(0, self.steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        return {
            "x_t": self.add_noise(x0, noise, t),
            "t": t,
            "noise": noise,
            "target": self.target(x0, noise, t),
            "weight": self.loss_weight(t),
            "alpha_bar": self.alpha_bar(t),
            "snr": self.snr(t),
        }

    def extra_repr(self) -> str:
        gamma = f", min_snr_gamma={self.min_snr_gamma}" if self.min_snr_gamma is not None else ""
        return f"steps={self.steps}, prediction={self.prediction}{gamma}"


@register_block(
    "linear_schedule",
    family="schedule",
    **_SCHEDULE_PORTS,
    requires={**_STEPS_RULE, "beta_start < beta_end and beta_end < 1": "0 < beta_start < beta_end < 1"},
)
class LinearSchedule(NoiseSchedule):
    """The forward process of DDPM's linear β schedule (Ho et al., 2020): β evenly spaced from ``beta_start`` to
    ``beta_end``.

    Args:
        steps: number of diffusion timesteps T.
        beta_start: β_1.
        beta_end: β_T.
        prediction: the denoiser's target: ``eps``, ``x0`` or ``v``.
        min_snr_gamma: γ of min-SNR-γ loss weighting (5 in the paper); None: uniform.

    Example:
        >>> out = LinearSchedule(steps=10)(torch.zeros(4, 1, 8, 8))
        >>> out["x_t"].shape, out["t"].shape
        (torch.Size([4, 1, 8, 8]), torch.Size([4]))
    """

    def __init__(
        self,
        *,
        steps: Size = 1000,
        beta_start: PositiveFloat = 1e-4,
        beta_end: PositiveFloat = 0.02,
        prediction: Prediction = "eps",
        min_snr_gamma: PositiveFloat | None = None,
    ) -> None:
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        super().__init__(betas=betas, prediction=prediction, min_snr_gamma=min_snr_gamma)


@register_block(
    "scaled_linear_schedule",
    family="schedule",
    **_SCHEDULE_PORTS,
    requires={**_STEPS_RULE, "beta_start < beta_end and beta_end < 1": "0 < beta_start < beta_end < 1"},
)
class ScaledLinearSchedule(NoiseSchedule):
    """The forward process of Stable Diffusion's scaled-linear schedule: √β evenly spaced, then squared.

    Args:
        steps: number of diffusion timesteps T.
        beta_start: β_1.
        beta_end: β_T.
        prediction: the denoiser's target: ``eps``, ``x0`` or ``v``.
        min_snr_gamma: γ of min-SNR-γ loss weighting; None: uniform.

    Example:
        >>> round(ScaledLinearSchedule(steps=1000).betas[-1].item(), 4)
        0.012
    """

    def __init__(
        self,
        *,
        steps: Size = 1000,
        beta_start: PositiveFloat = 0.00085,
        beta_end: PositiveFloat = 0.012,
        prediction: Prediction = "eps",
        min_snr_gamma: PositiveFloat | None = None,
    ) -> None:
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), steps, dtype=torch.float64) ** 2
        super().__init__(betas=betas, prediction=prediction, min_snr_gamma=min_snr_gamma)


@register_block(
    "cosine_schedule",
    family="schedule",
    **_SCHEDULE_PORTS,
    requires={**_STEPS_RULE, "max_beta < 1": "max_beta must stay below 1 (β = 1 destroys the signal)"},
)
class CosineSchedule(NoiseSchedule):
    """The forward process of the cosine schedule (Nichol & Dhariwal, 2021): ᾱ(t) = cos²(π/2 · (t/T + s)/(1 + s)),
    β_t = 1 - ᾱ(t/T) / ᾱ((t-1)/T), clipped at ``max_beta`` near t = T.

    Args:
        steps: number of diffusion timesteps T.
        offset: s, which keeps β small near t = 0.
        max_beta: the largest β.
        prediction: the denoiser's target: ``eps``, ``x0`` or ``v``.
        min_snr_gamma: γ of min-SNR-γ loss weighting; None: uniform.

    Example:
        >>> round(CosineSchedule(steps=1000).betas[-1].item(), 3)
        0.999
    """

    def __init__(
        self,
        *,
        steps: Size = 1000,
        offset: PositiveFloat = 0.008,
        max_beta: PositiveFloat = 0.999,
        prediction: Prediction = "eps",
        min_snr_gamma: PositiveFloat | None = None,
    ) -> None:
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        super().__init__(betas=betas, prediction=prediction, min_snr_gamma=min_snr_gamma)


# ---------------------------------------------------------------------------------------------------------------
# The objective and the conditioning


@register_block(
    "diffusion_loss",
    family="loss",
    inputs={"prediction": "Tensor[B, *F]", "target": "Tensor[B, *F]", "weight": "Tensor[B]?"},
    outputs={"out": "Loss[]"},
    default_mode="train",
)
class DiffusionLoss(nn.Module):
    """The denoising objective: the mean over samples of ``weight`` × the per-sample MSE between the denoiser's
    ``prediction`` and the schedule's ``target`` (weight 1 when not wired).

    Example:
        >>> DiffusionLoss()(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 0.0]))
        tensor(0.5000)
    """

    def forward(self, prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        per_sample = (prediction - target).pow(2).unsqueeze(-1).flatten(1).mean(1)  # also for Tensor[B]: F = []
        if weight is not None:
            per_sample = per_sample * weight
        return per_sample.mean()


@register_block(
    "condition_dropout",
    family="layer",
    inputs={"labels": "Labels[B]"},
    outputs={"out": "Labels[B]"},
    requires={"p < 1": "a condition dropped always leaves nothing to guide with"},
)
class ConditionDropout(nn.Module):
    """Classifier-free guidance training (Ho & Salimans, 2022): in training, replace each label by ``-1`` ("no
    condition") with probability ``p``; in evaluation, pass labels through. Conditional denoisers read ``-1`` as
    their learned null condition, which guided samplers feed for the unconditional prediction.

    Args:
        p: probability of dropping a sample's label.

    Example:
        >>> ConditionDropout(p=0.5).eval()(torch.tensor([3, 4]))
        tensor([3, 4])
    """

    def __init__(self, *, p: Fraction = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, labels: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.p
        return torch.where(drop, torch.full_like(labels, -1), labels)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@register_block(
    "latent_scale",
    family="layer",
    inputs={"x": "Embedding[B, D]?", "scaled": "Tensor[B, D]?"},
    outputs={"out": "Embedding[B, D]"},
)
class LatentScale(nn.Module):
    """Scale latent vectors to unit variance for diffusion (Rombach et al., 2022): ``x · s`` with ``s = 1 / std``
    measured on the first training batch it sees, then kept (a buffer, saved in checkpoints). Given ``scaled``
    instead of ``x`` it undoes the scaling (a sharer on the decoding path: ``{shares: scale, in: {scaled: ...}}``).
    Its ports are vectors (a VAE's latents, ``B D``); latent feature maps would need a block of their own kind.

    Example:
        >>> scale = LatentScale()
        >>> out = scale(x=torch.randn(256, 20) * 4)
        >>> round(out.std().item(), 1), round(scale(scaled=out).std().item(), 0)
        (1.0, 4.0)
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor | None = None, scaled: Tensor | None = None) -> Tensor:
        if (x is None) == (scaled is None):
            raise ValueError("latent_scale: give exactly one of x (to scale) or scaled (to unscale)")
        if scaled is not None:
            return scaled / self.scale
        assert x is not None
        if self.training and not bool(self.fitted):
            with torch.no_grad():
                self.scale.fill_(1 / x.float().std().clamp(min=1e-8).item())
                self.fitted.fill_(True)
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.4g}" + ("" if bool(self.fitted) else " (not fitted yet)")
