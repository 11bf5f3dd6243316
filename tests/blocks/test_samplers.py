"""The diffusion samplers: parity with diffusers' schedulers (tables, forward noising, one DDPM or DDIM step, the
timestep sequences, RePaint's jump schedule), guidance, seeded sampling, sampling a point mass, and inpainting.

Tolerances against diffusers: the β and ᾱ tables agree to 1e-6 relative (1e-12 absolute for the cosine tail,
where ᾱ ≈ 2e-9); ``add_noise`` to 1e-6 at t ≥ 500 and 1e-5 absolute down to t = 0; a step agrees to 5e-6 (relative
and absolute, on values of order 1; 2e-6 seen, from the schedule's float32 ᾱ in ``split``) both in float64 (every
timestep, diffusers' tables upcast) and in float32 as diffusers ships (timesteps ≥ 100). Below t = 100 in float32,
diffusers' β = 1 - ᾱ_t/ᾱ_prev of two float32 ᾱ close to 1 keeps about three digits, and its DDPM step lands up
to 3e-4 from its own float64 result (x_0-prediction, every timestep visited); ours takes the step's β from a
float64 table and stays within 1.2e-6 of that result.
"""

from __future__ import annotations

import doctest
import itertools
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor

import blocks.samplers
from blocks.diffusion import CosineSchedule, LinearSchedule, NoiseSchedule, ScaledLinearSchedule
from blocks.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    Sampler,
    guided_output,
    register_sampler,
    repaint,
    repaint_path,
    sample,
)

PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # ours: diffusers' prediction_type
STEP_TOL = 5e-6


@pytest.fixture
def diffusers() -> ModuleType:
    return pytest.importorskip("diffusers")


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def in_float64(scheduler: Any) -> Any:
    """A diffusers scheduler whose arithmetic runs in float64: its tables upcast from its own β (its float32
    cumprod would otherwise decide the comparison near t = 0)."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas, 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)  # DDIM's set_alpha_to_one
    return scheduler


def step_inputs(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """A denoiser output, a sample x_t and the noise of a stochastic step, fixed."""
    g = seeded(0)
    return tuple(torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))


def assert_step_close(ours: Tensor, theirs: Tensor, t: int) -> None:
    torch.testing.assert_close(ours, theirs, rtol=STEP_TOL, atol=STEP_TOL, msg=lambda m: f"t={t}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# Parity with diffusers: tables, forward noising, timesteps


@pytest.mark.parametrize(
    "ours, name, kwargs",
    [
        (LinearSchedule, "linear", {"beta_start": 1e-4, "beta_end": 0.02}),
        (ScaledLinearSchedule, "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        (CosineSchedule, "squaredcos_cap_v2", {}),
    ],
)
def test_schedule_tables_match_diffusers(diffusers: ModuleType, ours: type, name: str, kwargs: dict) -> None:
    schedule = ours(steps=1000, **kwargs)
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kwargs)
    torch.testing.assert_close(schedule.betas, reference.betas, rtol=1e-6, atol=0)
    # diffusers cumulates in float32, we in float64; at the cosine tail (β clipped to 0.999, ᾱ ≈ 2e-9) float32 β
    # itself leaves ~1e-5 relative, hence the absolute floor.
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod, rtol=1e-6, atol=1e-12)


def test_add_noise_matches_diffusers(diffusers: ModuleType) -> None:
    x0, noise, _ = step_inputs(torch.float32)
    t = torch.tensor([999, 500, 100, 10, 1, 0])
    x0, noise = x0[:1].expand(len(t), -1, -1, -1), noise[:1].expand(len(t), -1, -1, -1)
    ours = LinearSchedule().add_noise(x0, noise, t)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000).add_noise(x0, noise, t)
    torch.testing.assert_close(ours[:2], theirs[:2], rtol=1e-6, atol=1e-6)
    # Near t = 0, 1 - ᾱ ~ 1e-4 is the difference of two numbers close to 1: one float32 ulp of ᾱ (6e-8) moves
    # √(1-ᾱ) by ~3e-6, and diffusers' float32 cumprod lands a few ulps from ours (cumulated in float64).
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 50])
def test_ddim_timesteps_match_diffusers(diffusers: ModuleType, steps: int) -> None:
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000)
    reference.set_timesteps(steps)
    assert DDIMSampler(LinearSchedule(), steps=steps).timesteps() == reference.timesteps.tolist()


def test_ddpm_timesteps_match_diffusers(diffusers: ModuleType) -> None:
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000)
    assert DDPMSampler(LinearSchedule()).timesteps() == reference.timesteps.tolist() == list(range(999, -1, -1))
    reference.set_timesteps(50)
    sampler = DDPMSampler(LinearSchedule(), steps=50)
    assert sampler.timesteps() == reference.timesteps.tolist()
    assert [sampler.previous(t) for t in sampler.timesteps()] == [
        int(reference.previous_timestep(t)) for t in reference.timesteps
    ]


@pytest.mark.parametrize("steps, jump_length, jump_n_sample", [(50, 10, 10), (20, 3, 3), (10, 4, 1), (8, 10, 5)])
def test_repaint_path_matches_diffusers(
    diffusers: ModuleType, steps: int, jump_length: int, jump_n_sample: int
) -> None:
    """diffusers lists the timestep each move starts from (the denoiser's timestep going down, the step above the
    sample's going up); our path lists where each move lands, which is the previous timestep of that."""
    reference = diffusers.RePaintScheduler(num_train_timesteps=1000)
    reference.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    sampler = DDPMSampler(LinearSchedule(), steps=steps)
    path = repaint_path(sampler, jump_length=jump_length, jump_n_sample=jump_n_sample)
    assert path[0] == reference.timesteps[0]
    assert path[1:] == [sampler.previous(int(t)) for t in reference.timesteps]


# ---------------------------------------------------------------------------------------------------------------
# Parity with diffusers: one step


def ddpm_pair(diffusers: ModuleType, prediction: str, clip: bool, steps: int | None) -> tuple[DDPMSampler, Any]:
    ours = DDPMSampler(LinearSchedule(prediction=prediction), steps=steps, clip_x0=1.0 if clip else None)
    reference = diffusers.DDPMScheduler(prediction_type=PREDICTIONS[prediction], clip_sample=clip)
    if steps is not None:
        reference.set_timesteps(steps)
    return ours, reference


DDPM_CASES = list(itertools.product(PREDICTIONS, [True, False], [None, 50]))


@pytest.mark.parametrize("prediction, clip, steps", DDPM_CASES)
def test_ddpm_step_matches_diffusers_in_float64(
    diffusers: ModuleType, prediction: str, clip: bool, steps: int | None
) -> None:
    """Every kind of timestep, down to the last (no noise) and the ones next to it, where float32 would blur."""
    ours, reference = ddpm_pair(diffusers, prediction, clip, steps)
    in_float64(reference)
    output, x, _ = step_inputs(torch.float64)
    timesteps = ours.timesteps()
    for t in [timesteps[0], 500, 100, *timesteps[-3:]]:
        theirs = reference.step(output, t, x, generator=seeded()).prev_sample
        assert_step_close(ours.step(output, t, x, generator=seeded()), theirs, t)


@pytest.mark.parametrize("prediction, clip, steps", DDPM_CASES)
def test_ddpm_step_matches_diffusers_in_float32(
    diffusers: ModuleType, prediction: str, clip: bool, steps: int | None
) -> None:
    """diffusers as shipped, the same seed on both sides: the noise is drawn the same way."""
    ours, reference = ddpm_pair(diffusers, prediction, clip, steps)
    output, x, _ = step_inputs(torch.float32)
    for t in [ours.timesteps()[0], 500, 100]:
        theirs = reference.step(output, t, x, generator=seeded()).prev_sample
        assert_step_close(ours.step(output, t, x, generator=seeded()), theirs, t)


DDIM_CASES = list(itertools.product(PREDICTIONS, [True, False], [0.0, 1.0]))


@pytest.mark.parametrize("prediction, clip, eta", DDIM_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ddim_step_matches_diffusers(
    diffusers: ModuleType, prediction: str, clip: bool, eta: float, dtype: torch.dtype
) -> None:
    ours = DDIMSampler(LinearSchedule(prediction=prediction), steps=50, eta=eta, clip_x0=1.0 if clip else None)
    reference = diffusers.DDIMScheduler(prediction_type=PREDICTIONS[prediction], clip_sample=clip)
    reference.set_timesteps(50)
    timesteps = [980, 500, 100]  # float32: see the module docstring
    if dtype == torch.float64:
        in_float64(reference)
        timesteps += [40, 20, 0]
    output, x, noise = step_inputs(dtype)
    for t in timesteps:
        theirs = reference.step(output, t, x, eta=eta, variance_noise=noise, use_clipped_model_output=clip)
        theirs = theirs.prev_sample
        assert_step_close(ours.step(output, t, x, noise=noise), theirs, t)


# ---------------------------------------------------------------------------------------------------------------
# Conversions and guidance


def test_v_target_round_trips_through_split() -> None:
    schedule = LinearSchedule(prediction="v")
    x0, noise, _ = step_inputs(torch.float32)
    t = torch.tensor([0, 999])
    x0_hat, eps_hat = schedule.split(schedule.target(x0, noise, t), schedule.add_noise(x0, noise, t), t)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-5)


class CountingDenoiser:
    """A toy conditional denoiser that records its calls: the output depends on x, t and the labels."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def __call__(self, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        self.calls.append((x, t, labels))
        scale = torch.ones(len(x)) if labels is None else (labels.float() + 2)
        return x * scale.view(-1, 1, 1, 1) + t.float().view(-1, 1, 1, 1) / 1000


def test_guidance_zero_is_the_conditional_output_alone() -> None:
    denoise, x, labels = CountingDenoiser(), torch.randn(3, 2, 4, 4), torch.tensor([0, 1, 2])
    out = guided_output(denoise, x, 10, labels, guidance=0.0)
    assert len(denoise.calls) == 1 and torch.equal(denoise.calls[0][2], labels)
    assert torch.equal(out, CountingDenoiser()(x, torch.full((3,), 10), labels))


def test_guidance_is_one_batched_call_extrapolating_from_the_null_label() -> None:
    denoise, x, labels = CountingDenoiser(), torch.randn(3, 2, 4, 4), torch.tensor([0, 1, 2])
    out = guided_output(denoise, x, 10, labels, guidance=3.0)
    assert len(denoise.calls) == 1
    batched_x, batched_t, batched_labels = denoise.calls[0]
    assert batched_x.shape[0] == 6 and batched_t.dtype == torch.int64 and batched_t.tolist() == [10] * 6
    assert batched_labels.tolist() == [0, 1, 2, -1, -1, -1]
    t = torch.full((3,), 10)
    cond, uncond = CountingDenoiser()(x, t, labels), CountingDenoiser()(x, t, torch.full((3,), -1))
    torch.testing.assert_close(out, 4 * cond - 3 * uncond, rtol=1e-6, atol=1e-6)


def test_guidance_without_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="needs labels"):
        guided_output(CountingDenoiser(), torch.randn(1, 1, 2, 2), 0, None, guidance=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def point_mass_denoiser(schedule: NoiseSchedule, x0: Tensor):
    """The ideal denoiser of data that is always ``x0``: at (x_t, t) it predicts the target implied by x0."""

    def denoise(x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        a = schedule.alpha_bar(t).view(-1, *([1] * (x.dim() - 1)))
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return schedule.target(x0.expand_as(x), eps, t)

    return denoise


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("make", [lambda s: DDIMSampler(s, steps=10), lambda s: DDPMSampler(s)], ids=["ddim", "ddpm"])
def test_sampling_a_point_mass_gives_it(prediction: str, make) -> None:
    schedule = LinearSchedule(prediction=prediction)
    x0 = torch.linspace(-0.9, 0.9, 2 * 3 * 4).view(2, 3, 4)
    out = sample(make(schedule), point_mass_denoiser(schedule, x0), (2, 3, 4), generator=seeded())
    torch.testing.assert_close(out, x0.expand_as(out), rtol=0, atol=1e-4)


def test_deterministic_ddim_starts_from_the_seeded_noise_and_repeats() -> None:
    sampler, denoise = DDIMSampler(LinearSchedule(), steps=10, eta=0.0), CountingDenoiser()
    first = sample(sampler, denoise, (2, 1, 4, 4), generator=seeded(3))
    assert torch.equal(denoise.calls[0][0], torch.randn(2, 1, 4, 4, generator=seeded(3)))
    assert [t.tolist() for _, t, _ in denoise.calls] == [[t, t] for t in sampler.timesteps()]
    assert torch.equal(sample(sampler, CountingDenoiser(), (2, 1, 4, 4), generator=seeded(3)), first)


def test_ddpm_samples_are_fixed_by_the_seed() -> None:
    sampler = DDPMSampler(LinearSchedule(steps=50))
    draws = [sample(sampler, CountingDenoiser(), (2, 1, 4, 4), generator=seeded(s)) for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.allclose(draws[0], draws[2])


def test_sample_reports_each_step_and_passes_labels_and_guidance() -> None:
    seen, denoise = [], CountingDenoiser()
    sampler = DDIMSampler(LinearSchedule(), steps=4)
    sample(
        sampler,
        denoise,
        (2, 1, 2, 2),
        generator=seeded(),
        labels=torch.tensor([0, 1]),
        guidance=2.0,
        callback=lambda i, total: seen.append((i, total)),
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(labels.tolist() == [0, 1, -1, -1] for _, _, labels in denoise.calls)
    with pytest.raises(ValueError, match="3 labels for a batch of 2"):
        sample(sampler, denoise, (2, 1, 2, 2), generator=seeded(), labels=torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------------------------
# RePaint


def inpainting_case(batch: int = 2) -> tuple[Tensor, Tensor]:
    """An image in [-1, 1] and a mask that keeps its left half."""
    image = torch.rand(batch, 3, 6, 6, generator=seeded(5)) * 2 - 1
    mask = torch.zeros(batch, 1, 6, 6)
    mask[..., :3] = 1
    return image, mask


def test_repaint_keeps_the_known_pixels_exactly_and_generates_the_rest() -> None:
    """A denoiser of the constant 0.5 image: the unknown half becomes 0.5, the known half stays the image."""
    schedule = LinearSchedule(steps=100)
    image, mask = inpainting_case()
    target = torch.full_like(image, 0.5)
    denoise = point_mass_denoiser(schedule, target)
    out = repaint(
        DDPMSampler(schedule, steps=20), denoise, image, mask, generator=seeded(), jump_length=5, jump_n_sample=3
    )
    assert torch.equal(out[..., :3], image[..., :3])
    torch.testing.assert_close(out[..., 3:], target[..., 3:], rtol=0, atol=1e-4)
    assert not torch.allclose(out[..., 3:], image[..., 3:], atol=0.1)


def test_repaint_walks_its_jump_schedule_and_broadcasts_one_image_over_the_batch() -> None:
    sampler, denoise, seen = DDPMSampler(LinearSchedule(steps=30)), CountingDenoiser(), []
    image, mask = inpainting_case(batch=1)
    masks = torch.cat([mask, 1 - mask, torch.ones_like(mask)])
    out = repaint(
        sampler,
        denoise,
        image,
        masks,
        generator=seeded(),
        jump_length=10,
        jump_n_sample=2,
        labels=torch.tensor([0, 1, 2]),
        callback=lambda i, total: seen.append((i, total)),
    )
    path = repaint_path(sampler, jump_length=10, jump_n_sample=2)
    down = [before for before, after in itertools.pairwise(path) if after < before]
    assert len(down) == 30 + 2 * 10  # two jumps of 10 (from levels 0 and 10), each walked down again
    assert [t[0].item() for _, t, _ in denoise.calls] == down and seen[-1] == (len(down), len(down))
    assert out.shape == (3, 3, 6, 6)
    known = masks.bool().expand_as(out)
    assert torch.equal(out[known], image.expand_as(out)[known])


def test_repaint_refuses_other_samplers_and_mismatched_shapes() -> None:
    schedule, denoise = LinearSchedule(steps=10), CountingDenoiser()
    image, mask = inpainting_case()
    with pytest.raises(ValueError, match="repaint needs a DDPMSampler, not DDIMSampler"):
        repaint(DDIMSampler(schedule, steps=5), denoise, image, mask, generator=seeded())
    with pytest.raises(ValueError, match=r"the mask is 5×6 but the image is 6×6"):
        repaint(DDPMSampler(schedule), denoise, image, mask[..., :5, :], generator=seeded())
    with pytest.raises(ValueError, match="must be B or 1"):
        repaint(DDPMSampler(schedule), denoise, image, torch.cat([mask, mask[:1]]), generator=seeded())
    with pytest.raises(ValueError, match="1 or the image's 3"):
        repaint(DDPMSampler(schedule), denoise, image, mask.expand(-1, 2, -1, -1), generator=seeded())
    assert not denoise.calls


# ---------------------------------------------------------------------------------------------------------------
# The registry and bad input


def test_registry_holds_both_samplers_under_one_constructor_signature() -> None:
    registered = dict(SAMPLERS)
    assert registered == {"ddpm": DDPMSampler, "ddim": DDIMSampler}
    for name, cls in SAMPLERS.items():
        sampler = cls(LinearSchedule(steps=100), steps=10, eta=0.5, clip_x0=None)
        assert cls.name == name and sampler.timesteps()[0] == 90 and sampler.previous(0) == -1
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("ddim")(DDIMSampler)


@pytest.mark.parametrize("steps", [2000, 0])
def test_steps_outside_the_schedule_are_refused(steps: int) -> None:
    with pytest.raises(ValueError, match=rf"DDIMSampler: steps={steps}, but the schedule has 1000 timesteps"):
        DDIMSampler(LinearSchedule(steps=1000), steps=steps)


def test_bad_eta_clip_and_timestep_are_refused() -> None:
    schedule = LinearSchedule(steps=100)
    with pytest.raises(ValueError, match=r"eta=1.5 is outside \[0, 1\]"):
        DDIMSampler(schedule, steps=10, eta=1.5)
    with pytest.raises(ValueError, match="clip_x0=0 must be positive"):
        DDPMSampler(schedule, clip_x0=0)
    sampler = DDIMSampler(schedule, steps=10)
    with pytest.raises(ValueError, match="timestep 15 is not one of the 10"):
        sampler.previous(15)
    with pytest.raises(ValueError, match="not both"):
        sampler.step(torch.zeros(1, 1), 0, torch.zeros(1, 1), noise=torch.zeros(1, 1), generator=seeded())


def test_sampler_is_abstract() -> None:
    with pytest.raises(TypeError):
        Sampler(LinearSchedule(steps=10), steps=None, eta=0.0)  # type: ignore[abstract]


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.samplers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
