"""The GAN blocks: shapes at two sizes, the generators' tanh range, gradients, conditioning on labels and images,
per-sample scores (what WGAN-GP's penalty needs), and DCGAN's initialisation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from blocks.gan import (
    ConditionalDCGANGenerator,
    DCGANDiscriminator,
    DCGANGenerator,
    PatchGANDiscriminator,
    ProjectionDiscriminator,
    UNetGenerator,
)
from dagcv import rules
from dagcv.registry import iter_live

B = 3


def z(dim: int) -> Tensor:
    return torch.randn(B, dim)


def image(channels: int = 1, height: int = 28, width: int = 28) -> Tensor:
    return torch.randn(B, channels, height, width)


def labels() -> Tensor:
    return torch.tensor([0, 4, 9])


# (block, its inputs, the output shape): the defaults on 28×28 MNIST, then another size (32×32 RGB, or odd sides).
SHAPES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[Tensor, ...]], tuple[int, ...]]] = {
    "dcgan_generator": (DCGANGenerator, lambda: (z(100),), (B, 1, 28, 28)),
    "dcgan_generator-32": (
        lambda: DCGANGenerator(latent_dim=16, base=8, channels=8, out_channels=3),
        lambda: (z(16),),
        (B, 3, 32, 32),
    ),
    "conditional_dcgan_generator": (ConditionalDCGANGenerator, lambda: (z(100), labels()), (B, 1, 28, 28)),
    "conditional_dcgan_generator-32": (
        lambda: ConditionalDCGANGenerator(latent_dim=16, base=8, channels=8, out_channels=3, embed_dim=4),
        lambda: (z(16), labels()),
        (B, 3, 32, 32),
    ),
    "dcgan_discriminator": (DCGANDiscriminator, lambda: (image(),), (B,)),
    "dcgan_discriminator-32": (
        lambda: DCGANDiscriminator(in_channels=3, height=32, width=32, channels=8),
        lambda: (image(3, 32, 32),),
        (B,),
    ),
    "dcgan_discriminator-30x5": (
        lambda: DCGANDiscriminator(height=30, width=5, channels=8),
        lambda: (image(1, 30, 5),),
        (B,),
    ),
    "projection_discriminator": (ProjectionDiscriminator, lambda: (image(), labels()), (B,)),
    "projection_discriminator-32": (
        lambda: ProjectionDiscriminator(in_channels=3, height=32, width=32, channels=8),
        lambda: (image(3, 32, 32), labels()),
        (B,),
    ),
    "unet_generator": (UNetGenerator, lambda: (image(),), (B, 1, 28, 28)),
    "unet_generator-32": (
        lambda: UNetGenerator(in_channels=3, out_channels=2, channels=8),
        lambda: (image(3, 32, 32),),
        (B, 2, 32, 32),
    ),
    "patchgan_discriminator": (PatchGANDiscriminator, lambda: (image(),), (B, 1, 7, 7)),
    "patchgan_discriminator-32-conditional": (
        lambda: PatchGANDiscriminator(in_channels=3, condition_channels=1, channels=8, norm="instance"),
        lambda: (image(3, 32, 32), image(1, 32, 32)),
        (B, 1, 8, 8),
    ),
}

# One small configuration per block.
SMALL: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[Tensor, ...]]]] = {
    "dcgan_generator": (lambda: DCGANGenerator(latent_dim=8, channels=8), lambda: (z(8),)),
    "conditional_dcgan_generator": (
        lambda: ConditionalDCGANGenerator(latent_dim=8, channels=8),
        lambda: (z(8), labels()),
    ),
    "dcgan_discriminator": (lambda: DCGANDiscriminator(channels=8), lambda: (image(),)),
    "projection_discriminator": (lambda: ProjectionDiscriminator(channels=8), lambda: (image(), labels())),
    "unet_generator": (lambda: UNetGenerator(channels=8), lambda: (image(),)),
    "patchgan_discriminator": (
        lambda: PatchGANDiscriminator(condition_channels=2, channels=8),
        lambda: (image(), image(2)),
    ),
}

GENERATORS = ["dcgan_generator", "conditional_dcgan_generator", "unet_generator"]


@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_output_shape(case: str, train: bool) -> None:
    make, inputs, shape = SHAPES[case]
    torch.manual_seed(0)
    with torch.no_grad():
        assert tuple(make().train(train)(*inputs()).shape) == shape


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_end_in_tanh(name: str) -> None:
    """Even driven far into saturation the images stay in [-1, 1], and reach both ends."""
    make, inputs = SMALL[name]
    torch.manual_seed(0)
    generator = make()
    last = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1e3)
        out = generator(*inputs())
    assert out.abs().max() <= 1
    assert out.max() > 0.99 and out.min() < -0.99


@pytest.mark.parametrize("name", list(SMALL))
def test_gradients_reach_every_parameter_and_input(name: str) -> None:
    make, inputs = SMALL[name]
    torch.manual_seed(0)
    block, args = make(), inputs()
    for x in args:
        x.requires_grad_(x.is_floating_point())
    out = block(*args)
    (out * torch.randn_like(out)).sum().backward()
    for pname, param in block.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"no gradient for {pname}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {pname}"
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in args if x.is_floating_point())


def test_conditional_generator_draws_a_different_image_per_label() -> None:
    torch.manual_seed(0)
    generator = ConditionalDCGANGenerator(latent_dim=8, channels=8).eval()
    same_z = torch.randn(1, 8).expand(10, 8)
    with torch.no_grad():
        images = generator(same_z, torch.arange(10)).flatten(1)
        again = generator(same_z, torch.arange(10)).flatten(1)
    assert torch.equal(images, again)
    distances = torch.cdist(images, images) + torch.eye(10) * 1e9
    # Every pair of labels differs, by a good part of an image's size (small at DCGAN's initialisation).
    assert distances.min() > 0.25 * images.norm(dim=1).mean()


def test_projection_score_is_linear_plus_inner_product_with_the_class_embedding() -> None:
    torch.manual_seed(0)
    d = ProjectionDiscriminator(channels=8).eval()
    x = image()
    y, other = labels(), torch.tensor([1, 2, 3])
    with torch.no_grad():
        phi = d.trunk(x)
        score, score_other = d(x, y), d(x, other)
        by_hand = d.classify(phi).squeeze(1) + (d.embed(y) * phi).sum(1)
        difference = ((d.embed(y) - d.embed(other)) * phi).sum(1)
    torch.testing.assert_close(score, by_hand)
    torch.testing.assert_close(score - score_other, difference)
    assert (score - score_other).abs().min() > 1e-4  # the label changes every score


def test_patchgan_with_and_without_condition() -> None:
    torch.manual_seed(0)
    x, condition = image(3, 32, 32), image(1, 32, 32)
    plain = PatchGANDiscriminator(in_channels=3, channels=8).eval()
    conditional = PatchGANDiscriminator(in_channels=3, condition_channels=1, channels=8).eval()
    with torch.no_grad():
        assert plain(x).shape == conditional(x, condition).shape == (B, 1, 8, 8)
        assert not torch.allclose(conditional(x, condition), conditional(x, condition.flip(0)))
    assert conditional.conv1.in_channels == 4
    with pytest.raises(ValueError, match="built with condition_channels"):
        conditional(x)
    with pytest.raises(ValueError, match="built without condition_channels"):
        plain(x, condition)


def score_of_first_sample(make: Callable[[], nn.Module], x: Tensor) -> tuple[Tensor, Tensor]:
    """The first sample's score(s), and their gradient with respect to the whole batch."""
    torch.manual_seed(0)
    d = make().train()
    x = x.clone().requires_grad_(True)
    first = d(x)[0]
    (grad,) = torch.autograd.grad(first.sum(), x)
    return first.detach(), grad


PER_SAMPLE = {
    "dcgan-layer": lambda: DCGANDiscriminator(channels=8, norm="layer"),
    "dcgan-none": lambda: DCGANDiscriminator(channels=8, norm="none"),
    "patchgan-instance": lambda: PatchGANDiscriminator(channels=8, norm="instance"),
    "patchgan-layer": lambda: PatchGANDiscriminator(channels=8, norm="layer"),
}


@pytest.mark.parametrize("name", list(PER_SAMPLE))
def test_per_sample_norms_keep_scores_independent_of_the_batch(name: str) -> None:
    """What WGAN-GP's penalty assumes: ∇ₓ D(x)ᵢ lives on sample i alone, and other samples leave it unchanged."""
    x = image()
    changed = x.clone()
    changed[1:] = torch.randn_like(changed[1:])
    first, grad = score_of_first_sample(PER_SAMPLE[name], x)
    first_changed, _ = score_of_first_sample(PER_SAMPLE[name], changed)
    torch.testing.assert_close(first, first_changed, rtol=0, atol=1e-6)
    assert grad[1:].abs().max() == 0 and grad[0].abs().max() > 0


def test_batch_norm_mixes_the_batch_in_train_mode() -> None:
    """Why WGAN-GP needs ``norm="layer"``: under BatchNorm one sample's score moves with another sample, so the
    gradient of a score reaches the rest of the batch and the penalty is no longer per sample."""
    make = lambda: DCGANDiscriminator(channels=8, norm="batch")  # noqa: E731
    x = image()
    changed = x.clone()
    changed[1] = torch.randn_like(changed[1])
    first, grad = score_of_first_sample(make, x)
    first_changed, _ = score_of_first_sample(make, changed)
    assert (first - first_changed).abs() > 1e-4
    assert grad[1:].abs().max() > 0


@pytest.mark.parametrize("name", [n for n in SHAPES if "-" not in n])
def test_dcgan_initialisation(name: str) -> None:
    """Conv and linear weights from N(0, 0.02) (std within 20% on layers of 1000 weights or more), norm scales
    from N(1, 0.02), every bias zero; at the default sizes."""
    torch.manual_seed(0)
    block = SHAPES[name][0]()
    checked = 0
    for m in block.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear) and m.weight.numel() >= 1000:
            assert abs(m.weight.std().item() - 0.02) < 0.2 * 0.02, f"{m}: std {m.weight.std().item():.4f}"
            assert abs(m.weight.mean().item()) < 0.002
            checked += 1
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.InstanceNorm2d):  # 32 to 128 scales: within 5σ of 1
            assert abs(m.weight.mean().item() - 1) < 0.01 and (m.weight - 1).abs().max() < 0.1
        if getattr(m, "bias", None) is not None:
            assert torch.count_nonzero(m.bias) == 0, f"{m}: non-zero bias"
    assert checked >= 2


def contract(name: str):
    return next(c for c, _ in iter_live() if c.name == name)


def test_discriminators_refuse_images_under_4x4_as_their_rule_says() -> None:
    (rule,) = contract("dcgan_discriminator").requires
    assert rules.holds(rule, {"height": 4, "width": 30}) is True
    assert rules.holds(rule, {"height": 3, "width": 30}) is False
    with pytest.raises(ValueError, match="at least 4×4"):
        DCGANDiscriminator(height=3, width=30)
    with pytest.raises(ValueError, match="at least 4×4"):
        ProjectionDiscriminator(height=28, width=2)


def test_patchgan_instance_norm_rule_matches_instance_norms_limit() -> None:
    """InstanceNorm in train mode refuses a 1×1 map, which a 4×4 image gives; the rule says so beforehand."""
    (rule,) = contract("patchgan_discriminator").requires
    assert rules.holds(rule, {"norm": "instance", "H": 4, "W": 4}) is False
    assert rules.holds(rule, {"norm": "instance", "H": 4, "W": 8}) is True
    assert rules.holds(rule, {"norm": "batch", "H": 4, "W": 4}) is True
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        PatchGANDiscriminator(norm="instance")(image(1, 4, 4))
    PatchGANDiscriminator(norm="instance")(image(1, 4, 8))
