"""Samplers of denoising diffusion: the reverse process that turns Gaussian noise into samples of a trained
denoiser, walking the timesteps of the :class:`~blocks.diffusion.NoiseSchedule` it was trained against.

- ``ddpm``: ancestral sampling (Ho et al., 2020): each step draws x_{t-1} from the Gaussian posterior
  q(x_{t-1} | x_t, x̂_0) with its own variance β̃_t ("fixed small");
- ``ddim``: the implicit sampler of Song et al. (2021): x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1-ᾱ_{t-1}-σ²) ε̂ + σ z, with
  σ set by ``eta`` (0: deterministic; 1: the DDPM posterior's spread).

With fewer ``steps`` than the schedule has timesteps, both walk the "leading" spacing ``(n-1)·r, …, r, 0`` with
``r = T // n`` (:func:`leading_timesteps`), and a DDPM step then spans ``r`` timesteps with the respaced
β = 1 - ᾱ_t / ᾱ_prev. The step after timestep 0 lands on the clean sample, written ``-1`` (ᾱ = 1).

On top of a sampler: :func:`guided_output` (classifier-free guidance), :func:`sample` (the whole loop, seeded by
one generator) and :func:`repaint` (inpainting with RePaint's resampling jumps). A denoiser is any callable
``denoise(x, t, labels)`` taking the int64 timesteps ``t`` of shape (B,) and returning what the schedule's
``prediction`` says (ε, x_0 or v); labels are ``None`` for an unconditional model and ``-1`` for "no condition".

These are plain PyTorch objects: nothing here needs dagcv beyond the schedule.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from blocks.diffusion import NoiseSchedule

Denoise = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Callback = Callable[[int, int], None]

# The label a conditional denoiser reads as "no condition" (what ConditionDropout trains it on).
NULL_LABEL = -1

SAMPLERS: dict[str, type[Sampler]] = {}
S = TypeVar("S", bound="type[Sampler]")


def register_sampler(name: str) -> Callable[[S], S]:
    """Class decorator: make a :class:`Sampler` available as ``SAMPLERS[name]``.

    Example:
        >>> sorted(SAMPLERS)
        ['ddim', 'ddpm']
    """

    def register(cls: S) -> S:
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered ({SAMPLERS[name].__qualname__})")
        SAMPLERS[name] = cls
        cls.name = name
        return cls

    return register


def leading_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` timesteps of a ``total``-step schedule, descending, with "leading" spacing: multiples of
    ``total // steps`` from 0 (Table 2 of Lin et al., 2024, as diffusers' ``timestep_spacing="leading"``).

    Example:
        >>> leading_timesteps(1000, 4), leading_timesteps(10, 3)
        ([750, 500, 250, 0], [6, 3, 0])
    """
    ratio = total // steps
    return list(range((steps - 1) * ratio, -1, -ratio))


def standard_normal(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """N(0, I) noise on ``device``, drawn on the generator's own device: a CPU generator then gives the same
    numbers whatever device the samples live on (diffusers' ``randn_tensor`` draws the same way, so a seed means
    the same noise in both)."""
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)


class Sampler(ABC):
    """A reverse process over a schedule: the descending ``timesteps()`` it visits and the ``step`` from x_t to
    x at the ``previous(t)`` timestep. Subclasses give the mean and spread of that step (:meth:`moments`).

    Args:
        schedule: the schedule the denoiser was trained against (its ᾱ table and its ``prediction``).
        steps: how many timesteps to visit, 1 to ``schedule.steps``; None: every one.
        eta: the scale of the noise each step adds, 0 to 1 (0: deterministic).
        clip_x0: clamp x̂_0 to ``[-clip_x0, clip_x0]`` before the update (1 for images in [-1, 1]); None for
            latents, which have no fixed range.
    """

    name: ClassVar[str]

    def __init__(self, schedule: NoiseSchedule, *, steps: int | None, eta: float, clip_x0: float | None = 1.0) -> None:
        total = schedule.steps
        steps = total if steps is None else steps
        kind = type(self).__name__
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= total:
            raise ValueError(
                f"{kind}: steps={steps!r}, but the schedule has {total} timesteps: "
                f"give an integer from 1 to {total} (None visits all {total})"
            )
        if not 0 <= eta <= 1:
            raise ValueError(f"{kind}: eta={eta} is outside [0, 1] (0: no noise per step, 1: the full posterior)")
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"{kind}: clip_x0={clip_x0} must be positive, or None to leave x̂_0 unclipped")
        self.schedule, self.steps, self.eta, self.clip_x0 = schedule, steps, eta, clip_x0
        self._timesteps = leading_timesteps(total, steps)
        self._previous = dict(zip(self._timesteps, [*self._timesteps[1:], -1], strict=True))
        # The step coefficients are Python floats (no device tensor to index or wait for) from a float64 ᾱ
        # cumulated from β: a step's β = 1 - ᾱ_t/ᾱ_prev then keeps its digits where it is ~1e-4, which the
        # float32 ᾱ table (6e-8 apart near 1) would cut to about three.
        self._alpha_bars: list[float] = torch.cumprod(1 - schedule.betas.double().cpu(), 0).tolist()

    def timesteps(self) -> list[int]:
        """The timesteps a sampling run visits, descending; the last is 0."""
        return list(self._timesteps)

    def previous(self, t: int) -> int:
        """The timestep a step from ``t`` lands on: the next one visited, or ``-1`` (the clean sample) after 0."""
        try:
            return self._previous[t]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__}: timestep {t} is not one of the {self.steps} this sampler visits "
                f"(from {self._timesteps[0]} down to 0: see timesteps())"
            ) from None

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t of the schedule; 1 for ``t = -1``, the clean sample."""
        return 1.0 if t < 0 else self._alpha_bars[t]

    def step(
        self,
        output: Tensor,
        t: int,
        x: Tensor,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x at ``previous(t)`` from the denoiser's ``output`` at ``x`` = x_t.

        Args:
            output: the denoiser's prediction at (``x``, ``t``): ε, x_0 or v, as ``schedule.prediction`` says.
            t: the current timestep, one of :meth:`timesteps`.
            x: the current sample x_t, shaped (B, ...).
            noise: the standard normal noise of a stochastic step; drawn from ``generator`` when not given.
            generator: where the step's noise comes from (the global RNG when None).
        """
        if noise is not None and generator is not None:
            raise ValueError("step: give the noise or a generator to draw it from, not both")
        previous = self.previous(t)
        x0, eps = self.schedule.split(output, x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            # ε̂ re-derived from the clipped x̂_0, so that DDIM's two terms describe one x_0. With the denoiser's
            # own ε̂ a guided step, whose x̂_0 often leaves the data range, is pushed back out of it: on cfg_mnist
            # at w = 1 the samples' class accuracy fell from 79% (w = 0) to 40%. DDPM's mean does not read ε̂.
            a_t = self.alpha_bar(t)
            eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        mean, std = self.moments(x0, eps, x, self.alpha_bar(t), self.alpha_bar(previous))
        if std == 0:  # deterministic, or the last step: draw nothing, so a seed's later draws stay put
            return mean
        if noise is None:
            noise = standard_normal(x.shape, generator, device=x.device, dtype=x.dtype)
        return mean + std * noise

    @abstractmethod
    def moments(self, x0: Tensor, eps: Tensor, x: Tensor, a_t: float, a_prev: float) -> tuple[Tensor, float]:
        """The mean and the standard deviation of x_prev given x̂_0 (already clipped), ε̂ and x = x_t, where
        ``a_t`` and ``a_prev`` are ᾱ at the current and the previous timestep (``a_prev`` = 1 at the last step)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, eta={self.eta}, clip_x0={self.clip_x0})"


@register_sampler("ddpm")
class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al., 2020): x_prev ~ q(x_prev | x_t, x̂_0), whose mean is
    (√ᾱ_prev β / (1-ᾱ_t)) x̂_0 + (√α (1-ᾱ_prev) / (1-ᾱ_t)) x_t and whose variance is β̃ = (1-ᾱ_prev)/(1-ᾱ_t) β,
    with α = ᾱ_t / ᾱ_prev and β = 1 - α (β_t itself when every timestep is visited; the respaced β when not).

    Args:
        schedule: the schedule the denoiser was trained against.
        steps: how many timesteps to visit ("leading" spacing); None: every one, T-1 … 0.
        eta: scales the posterior's standard deviation; 1 samples it, 0 takes its mean.
        clip_x0: clamp x̂_0 to ``[-clip_x0, clip_x0]``; None for latents.

    Example:
        >>> from blocks.diffusion import LinearSchedule
        >>> sampler = DDPMSampler(LinearSchedule(steps=1000), steps=4)
        >>> sampler.timesteps(), sampler.previous(250), sampler.previous(0)
        ([750, 500, 250, 0], 0, -1)
    """

    def __init__(
        self, schedule: NoiseSchedule, *, steps: int | None = None, eta: float = 1.0, clip_x0: float | None = 1.0
    ) -> None:
        super().__init__(schedule, steps=steps, eta=eta, clip_x0=clip_x0)

    def moments(self, x0: Tensor, eps: Tensor, x: Tensor, a_t: float, a_prev: float) -> tuple[Tensor, float]:
        alpha = a_t / a_prev
        beta = 1 - alpha
        mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * x
        variance = (1 - a_prev) / (1 - a_t) * beta  # 0 at the last step, where a_prev = 1
        return mean, self.eta * math.sqrt(variance)

    def renoise(
        self,
        x: Tensor,
        t_from: int,
        t_to: int,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Carry ``x`` from timestep ``t_from`` up to the later ``t_to`` by the forward process:
        √(ᾱ_to/ᾱ_from) x + √(1 - ᾱ_to/ᾱ_from) z, which is √(1-β) x + √β z for one step of β (the respaced β
        between visited timesteps). ``t_from = -1`` is the clean sample.

        Example:
            >>> from blocks.diffusion import LinearSchedule
            >>> sampler = DDPMSampler(LinearSchedule(steps=10))
            >>> sampler.renoise(torch.ones(3), -1, 0, noise=torch.zeros(3)).allclose(torch.full((3,), 0.99995))
            True
        """
        if t_to <= t_from:
            raise ValueError(f"renoise goes up in time: from {t_from} to {t_to} is not")
        if noise is not None and generator is not None:
            raise ValueError("renoise: give the noise or a generator to draw it from, not both")
        alpha = self.alpha_bar(t_to) / self.alpha_bar(t_from)
        if noise is None:
            noise = standard_normal(x.shape, generator, device=x.device, dtype=x.dtype)
        return math.sqrt(alpha) * x + math.sqrt(1 - alpha) * noise


@register_sampler("ddim")
class DDIMSampler(Sampler):
    """The DDIM sampler (Song et al., 2021): x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z with
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev), and ᾱ_prev = 1 after the last timestep. When x̂_0 is clipped, ε̂
    is re-derived from the clipped x̂_0 (diffusers' ``use_clipped_model_output=True``; see :meth:`Sampler.step`).

    Args:
        schedule: the schedule the denoiser was trained against.
        steps: how many timesteps to visit ("leading" spacing); None: every one.
        eta: η; 0 makes sampling deterministic given x_T, 1 gives the DDPM posterior's spread.
        clip_x0: clamp x̂_0 to ``[-clip_x0, clip_x0]``; None for latents.

    Example:
        >>> from blocks.diffusion import LinearSchedule
        >>> DDIMSampler(LinearSchedule(steps=1000), steps=5).timesteps()
        [800, 600, 400, 200, 0]
    """

    def __init__(
        self, schedule: NoiseSchedule, *, steps: int | None = 50, eta: float = 0.0, clip_x0: float | None = 1.0
    ) -> None:
        super().__init__(schedule, steps=steps, eta=eta, clip_x0=clip_x0)

    def moments(self, x0: Tensor, eps: Tensor, x: Tensor, a_t: float, a_prev: float) -> tuple[Tensor, float]:
        sigma = self.eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        # Mathematically ≥ 0 for η ≤ 1; the clamp keeps float rounding at η = 1 from making it negative.
        direction = math.sqrt(max(1 - a_prev - sigma**2, 0.0))
        return math.sqrt(a_prev) * x0 + direction * eps, sigma


# ---------------------------------------------------------------------------------------------------------------
# Sampling loops


def guided_output(denoise: Denoise, x: Tensor, t: int, labels: Tensor | None, guidance: float) -> Tensor:
    """The denoiser's output at (``x``, ``t``) under classifier-free guidance (Ho & Salimans, 2022):
    ``(1 + w) · cond - w · uncond``, where the unconditional output is the one for labels ``-1``. ``w = 0`` is the
    conditional output itself, computed alone; otherwise both come from one batched call of size 2B.

    Args:
        denoise: ``denoise(x, t, labels)``, ``t`` an int64 tensor (B,).
        x: the current sample (B, ...).
        t: the current timestep.
        labels: the conditions (B,); None for an unconditional denoiser (which cannot be guided).
        guidance: w.

    Example:
        >>> denoise = lambda x, t, labels: x * (labels >= 0).view(-1, 1)  # conditional: x; unconditional: 0
        >>> guided_output(denoise, torch.ones(2, 3), 10, torch.tensor([1, 2]), guidance=3.0)
        tensor([[4., 4., 4.],
                [4., 4., 4.]])
    """
    t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
    if guidance == 0:
        return denoise(x, t_batch, labels)
    if labels is None:
        raise ValueError(f"guidance={guidance} needs labels: classifier-free guidance contrasts them with -1")
    null = torch.full_like(labels, NULL_LABEL)
    both = denoise(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, null]))
    cond, uncond = both.chunk(2)
    return (1 + guidance) * cond - guidance * uncond


def _check_labels(labels: Tensor | None, batch: int, where: str) -> None:
    if labels is not None and labels.shape[0] != batch:
        raise ValueError(f"{where}: {labels.shape[0]} labels for a batch of {batch}; give one label per sample")


@torch.no_grad()
def sample(
    sampler: Sampler,
    denoise: Denoise,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    callback: Callback | None = None,
) -> Tensor:
    """Draw samples: x_T ~ N(0, I) from ``generator``, then one :meth:`Sampler.step` per timestep, whose noise
    comes from ``generator`` too, so a seed fixes the samples. Runs without autograd, on the schedule's device.

    Args:
        sampler: the reverse process.
        denoise: ``denoise(x, t, labels)`` (see :func:`guided_output`).
        shape: of the samples, (B, ...).
        generator: the one source of randomness.
        labels: the conditions (B,), or None.
        guidance: classifier-free guidance weight w; 0: none.
        callback: ``callback(i, total)`` after the i-th of ``total`` steps (a progress bar).

    Example:
        >>> from blocks.diffusion import LinearSchedule
        >>> no_noise = lambda x, t, labels: torch.zeros_like(x)  # an ε-denoiser that sees no noise anywhere
        >>> sampler = DDIMSampler(LinearSchedule(steps=100), steps=10)
        >>> sample(sampler, no_noise, (2, 3), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3])
    """
    _check_labels(labels, shape[0], "sample")
    x = standard_normal(shape, generator, device=sampler.schedule.betas.device, dtype=torch.float32)
    timesteps = sampler.timesteps()
    for i, t in enumerate(timesteps, 1):
        x = sampler.step(guided_output(denoise, x, t, labels, guidance), t, x, generator=generator)
        if callback is not None:
            callback(i, len(timesteps))
    return x


def repaint_path(sampler: Sampler, *, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The timesteps a RePaint walk visits (Lugmayr et al., 2022, Fig. 10), from the first of
    ``sampler.timesteps()`` to ``-1`` (the clean sample). A move down is a denoising step; a move up is a
    re-noising step. Every ``jump_length`` steps from the bottom (and not within ``jump_length`` of the top), the walk
    goes back up ``jump_length`` steps and down again, ``jump_n_sample - 1`` times.

    Example:
        >>> from blocks.diffusion import LinearSchedule
        >>> repaint_path(DDPMSampler(LinearSchedule(steps=6)), jump_length=2, jump_n_sample=2)
        [5, 4, 3, 2, 1, 2, 3, 2, 1, 0, -1, 0, 1, 0, -1]
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"repaint: jump_length={jump_length} and jump_n_sample={jump_n_sample} must be at least 1")
    # Level 0 is the clean sample and level k the sample at the k-th timestep from the bottom: jumps count levels.
    timestep_of = [-1, *reversed(sampler.timesteps())]
    top = len(timestep_of) - 1
    jump_levels = set(range(0, top - jump_length, jump_length))
    levels = [top]
    for level in range(top - 1, -1, -1):
        levels.append(level)
        if level in jump_levels:
            up_and_down = [*range(level + 1, level + jump_length + 1), *range(level + jump_length - 1, level - 1, -1)]
            levels.extend(up_and_down * (jump_n_sample - 1))
    return [timestep_of[level] for level in levels]


def _inpainting_batch(image: Tensor, mask: Tensor, labels: Tensor | None) -> int:
    """The batch size of an inpainting run; refuses shapes that do not fit together."""
    if image.dim() != 4 or mask.dim() != 4:
        raise ValueError(
            f"repaint: image {tuple(image.shape)} and mask {tuple(mask.shape)} must both be 4-d: "
            "(B or 1, C, H, W) and (B or 1, 1 or C, H, W)"
        )
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"repaint: the mask is {mask.shape[-2]}×{mask.shape[-1]} but the image is "
            f"{image.shape[-2]}×{image.shape[-1]}: give a mask of the image's size"
        )
    if mask.shape[1] not in (1, image.shape[1]):
        raise ValueError(f"repaint: the mask has {mask.shape[1]} channels; give 1 or the image's {image.shape[1]}")
    sizes = {image.shape[0], mask.shape[0]} | ({labels.shape[0]} if labels is not None else set())
    batch = max(sizes)
    if not sizes <= {1, batch}:
        raise ValueError(f"repaint: the batch sizes of image, mask and labels ({sorted(sizes)}) must be B or 1")
    return batch


@torch.no_grad()
def repaint(
    sampler: Sampler,
    denoise: Denoise,
    image: Tensor,
    mask: Tensor,
    *,
    generator: torch.Generator,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    callback: Callback | None = None,
) -> Tensor:
    """Inpaint with RePaint (Lugmayr et al., 2022): sample the unknown pixels with a :class:`DDPMSampler` while
    the known ones follow the forward-noised ``image``, walking :func:`repaint_path` so that the resampling jumps
    let the generated region harmonize with the known one.

    At each denoising step to timestep s, the known region becomes the image noised to s (the image itself at
    the end, so the known pixels come back exactly) and the unknown region the sampler's step; a move up
    re-noises the whole sample (:meth:`DDPMSampler.renoise`). Runs without autograd, on the schedule's device.

    Args:
        sampler: a :class:`DDPMSampler` (RePaint relies on stochastic ancestral steps).
        denoise: ``denoise(x, t, labels)`` (see :func:`guided_output`).
        image: the clean image in the x_0 space, (B, C, H, W) or (1, C, H, W).
        mask: 1 on the known pixels, 0 on those to generate (values above 0.5 count as known), shaped
            (B or 1, 1 or C, H, W).
        generator: the one source of randomness.
        jump_length: steps between jumps, and the height of each jump.
        jump_n_sample: how many times each stretch is walked down (1: no jumps).
        labels: the conditions (B,), or None.
        guidance: classifier-free guidance weight w; 0: none.
        callback: ``callback(i, total)`` after the i-th of ``total`` denoising steps.

    Example:
        >>> from blocks.diffusion import LinearSchedule
        >>> image, mask = torch.full((1, 1, 1, 4), 0.5), torch.tensor([[[[1.0, 1, 0, 0]]]])
        >>> no_noise = lambda x, t, labels: torch.zeros_like(x)
        >>> out = repaint(DDPMSampler(LinearSchedule(steps=20)), no_noise, image, mask,
        ...               generator=torch.Generator().manual_seed(0), jump_length=5, jump_n_sample=2)
        >>> out[..., :2].unique().tolist()
        [0.5]
    """
    if not isinstance(sampler, DDPMSampler):
        raise ValueError(
            f"repaint needs a DDPMSampler, not {type(sampler).__name__}: its resampling relies on stochastic "
            "ancestral steps (build one with DDPMSampler(schedule, steps=...))"
        )
    if not image.is_floating_point():
        raise ValueError(f"repaint: the image must be floating point in the x_0 space, not {image.dtype}")
    batch = _inpainting_batch(image, mask, labels)
    device = sampler.schedule.betas.device
    image = image.to(device)
    known = (mask > 0.5).to(device)
    x = standard_normal((batch, *image.shape[1:]), generator, device=device, dtype=image.dtype)
    path = repaint_path(sampler, jump_length=jump_length, jump_n_sample=jump_n_sample)
    total, done = sum(after < before for before, after in itertools.pairwise(path)), 0
    for before, after in itertools.pairwise(path):
        if after > before:
            x = sampler.renoise(x, before, after, generator=generator)
            continue
        unknown = sampler.step(guided_output(denoise, x, before, labels, guidance), before, x, generator=generator)
        x = torch.where(known, _noised_image(sampler, image, after, unknown, generator), unknown)
        done += 1
        if callback is not None:
            callback(done, total)
    return x


def _noised_image(sampler: Sampler, image: Tensor, t: int, like: Tensor, generator: torch.Generator) -> Tensor:
    """``image`` forward-noised to ``t`` with fresh noise per sample (shaped like ``like``); the image itself at
    ``t = -1``, untouched, so the known pixels of the result are exact."""
    if t < 0:
        return image
    noise = standard_normal(like.shape, generator, device=like.device, dtype=like.dtype)
    t_batch = torch.full((like.shape[0],), t, dtype=torch.int64, device=like.device)
    return sampler.schedule.add_noise(image.expand_as(like), noise, t_batch)
