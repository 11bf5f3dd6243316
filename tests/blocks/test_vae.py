"""The VAE blocks: shapes, the closed-form KL and its warm-up, the reparameterised gradient, the likelihoods
against torch's own, and the importance-weighted bound against exact values and the ELBO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

from blocks.vae import (
    BernoulliNLL,
    GaussianEncoder,
    GaussianKL,
    GaussianNLL,
    MLPDecoder,
    Reparameterize,
    importance_weighted_nll,
)


def diagonal_gaussian(batch: int = 5, latent: int = 4, *, grad: bool = False) -> tuple[Independent, Tensor, Tensor]:
    torch.manual_seed(0)
    mean = torch.randn(batch, latent).requires_grad_(grad)
    std = (torch.rand(batch, latent) * 2 + 0.1).requires_grad_(grad)
    return Independent(Normal(mean, std), 1), mean, std


def standard_normal(batch: int, latent: int) -> Independent:
    return Independent(Normal(torch.zeros(batch, latent), torch.ones(batch, latent)), 1)


# ---------------------------------------------------------------------------------------------------------------
# Shapes


def test_encoder_gives_a_diagonal_gaussian_per_image() -> None:
    posterior = GaussianEncoder(in_features=2 * 5 * 3, hidden=(8, 6), latent_dim=7)(torch.randn(4, 2, 5, 3))
    assert posterior.batch_shape == (4,) and posterior.event_shape == (7,)
    assert posterior.mean.shape == posterior.stddev.shape == (4, 7)
    assert (posterior.stddev > 0).all()


def test_untrained_encoder_starts_at_the_prior_scale() -> None:
    encoder = GaussianEncoder(in_features=16, hidden=())
    torch.nn.init.zeros_(encoder.layers[-1].weight)
    torch.nn.init.zeros_(encoder.layers[-1].bias)
    posterior = encoder(torch.randn(3, 1, 4, 4))
    torch.testing.assert_close(posterior.stddev, torch.ones(3, 20))


def test_decoder_reshapes_to_the_declared_image() -> None:
    assert MLPDecoder(in_features=3, hidden=(), out_channels=2, height=5, width=7)(torch.randn(4, 3)).shape == (
        4, 2, 5, 7
    )  # fmt: skip


def test_vae_pipeline_reconstructs_the_input_shape() -> None:
    encoder, sample, decoder = GaussianEncoder(in_features=784), Reparameterize(), MLPDecoder(in_features=20)
    image = torch.rand(3, 1, 28, 28)
    z = sample(encoder(image))
    assert z.shape == (3, 20) and decoder(z).shape == image.shape


# ---------------------------------------------------------------------------------------------------------------
# The KL term


def test_kl_matches_torch_kl_divergence() -> None:
    posterior, _, _ = diagonal_gaussian(batch=6, latent=5)
    want = kl_divergence(posterior, standard_normal(6, 5)).mean()
    torch.testing.assert_close(GaussianKL()(posterior), want, rtol=0, atol=1e-5)


def test_kl_warmup_ramps_over_training_calls_only() -> None:
    posterior, _, _ = diagonal_gaussian()
    full = GaussianKL()(posterior)
    kl = GaussianKL(warmup_steps=4)
    got = []
    for _ in range(6):
        got.append(kl.train()(posterior) / full)
        assert kl.eval()(posterior) == full  # eval: the full KL, and the counter stands still
    torch.testing.assert_close(torch.stack(got), torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))
    assert kl.step.item() == 6


def test_kl_warmup_counter_survives_a_state_dict_round_trip() -> None:
    posterior, _, _ = diagonal_gaussian()
    full = GaussianKL()(posterior)
    kl = GaussianKL(warmup_steps=10)
    for _ in range(3):
        kl(posterior)
    assert "step" in kl.state_dict()
    resumed = GaussianKL(warmup_steps=10)
    resumed.load_state_dict(kl.state_dict())
    torch.testing.assert_close(resumed(posterior), 0.4 * full)
    torch.testing.assert_close(kl(posterior), 0.4 * full)


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def test_reparameterized_sample_carries_gradients_to_mean_and_std() -> None:
    posterior, mean, std = diagonal_gaussian(grad=True)
    z = Reparameterize().train()(posterior)
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones_like(mean))
    torch.testing.assert_close(std.grad, ((z - mean) / std).detach())  # dz/dσ = ε
    assert std.grad.abs().sum() > 0


def test_eval_mode_returns_the_mean_unless_asked_to_sample() -> None:
    posterior, mean, _ = diagonal_gaussian()
    assert torch.equal(Reparameterize().eval()(posterior), mean)
    assert not torch.equal(Reparameterize(eval_sample=True).eval()(posterior), mean)


# ---------------------------------------------------------------------------------------------------------------
# Likelihoods


@pytest.mark.parametrize("shape", [(3, 1, 4, 5), (3,)])
def test_bernoulli_nll_is_summed_bce_per_image(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(shape), torch.rand(shape)
    want = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 3
    torch.testing.assert_close(BernoulliNLL()(logits, target), want)
    binary = (target > 0.5).float()
    want = F.binary_cross_entropy_with_logits(logits, binary, reduction="sum") / 3
    torch.testing.assert_close(BernoulliNLL(binarize=True)(logits, target), want)


@pytest.mark.parametrize("shape", [(4, 2, 3), (4,)])
def test_gaussian_nll_is_the_full_normal_log_density(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    mean, target = torch.randn(shape), torch.randn(shape)
    want = -Normal(mean, 0.7).log_prob(target).sum() / 4
    torch.testing.assert_close(GaussianNLL(sigma=0.7)(mean, target), want)


# ---------------------------------------------------------------------------------------------------------------
# The importance-weighted bound


class ReplayPosterior:
    """A posterior whose draws come, in order, from a fixed bank of samples (to check chunking exactly)."""

    def __init__(self, posterior: Independent, bank: Tensor) -> None:
        self.posterior, self.bank, self.used = posterior, bank, 0

    def rsample(self, shape: tuple[int]) -> Tensor:
        draws = self.bank[self.used : self.used + shape[0]]
        self.used += shape[0]
        return draws

    def log_prob(self, z: Tensor) -> Tensor:
        return self.posterior.log_prob(z)


def tiny_model(seed: int = 0) -> tuple[GaussianEncoder, MLPDecoder, Tensor]:
    torch.manual_seed(seed)
    encoder = GaussianEncoder(in_features=16, hidden=(8,), latent_dim=3)
    decoder = MLPDecoder(in_features=3, hidden=(8,), height=4, width=4)
    return encoder, decoder, (torch.rand(6, 1, 4, 4) > 0.5).float()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize(("k", "chunk"), [(1, 10), (7, 3)])
def test_iwae_is_the_exact_nll_when_the_posterior_is_the_prior_and_z_unused(
    likelihood: str, k: int, chunk: int
) -> None:
    torch.manual_seed(0)
    x, out = torch.rand(4, 1, 3, 3), torch.randn(1, 1, 3, 3)
    decode = lambda z: out.expand(z.shape[0], 1, 3, 3)  # noqa: E731
    nll = importance_weighted_nll(standard_normal(4, 2), decode, x, k=k, likelihood=likelihood, sigma=0.5,
                                  chunk=chunk)  # fmt: skip
    if likelihood == "bernoulli":
        exact = F.binary_cross_entropy_with_logits(out.expand_as(x), x, reduction="none").sum((1, 2, 3))
    else:
        exact = -Normal(out.expand_as(x), 0.5).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(nll, exact)


def test_iwae_with_one_sample_is_the_single_sample_negative_elbo() -> None:
    encoder, decoder, x = tiny_model()
    posterior = encoder(x)
    torch.manual_seed(1)
    nll = importance_weighted_nll(posterior, decoder, x, k=1)
    torch.manual_seed(1)
    z = posterior.rsample()
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(1)
    log_px = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(nll, -(log_px + log_prior - posterior.log_prob(z)))


def test_iwae_chunks_combine_into_one_logsumexp() -> None:
    encoder, decoder, x = tiny_model()
    posterior = encoder(x)
    bank = posterior.rsample((10,)).detach()  # 10 × B × Z
    log_px = -F.binary_cross_entropy_with_logits(decoder(bank.flatten(0, 1)).view(10, *x.shape),
                                                 x.expand(10, *x.shape), reduction="none").sum((2, 3, 4))  # fmt: skip
    log_w = log_px + Normal(0.0, 1.0).log_prob(bank).sum(-1) - posterior.log_prob(bank)
    want = math.log(10) - log_w.logsumexp(0)
    for chunk in (1, 3, 10, 50):
        replay = ReplayPosterior(posterior, bank)
        torch.testing.assert_close(importance_weighted_nll(replay, decoder, x, k=10, chunk=chunk), want)
        assert replay.used == 10


def test_iwae_bound_tightens_with_more_samples() -> None:
    encoder, decoder, x = tiny_model()
    with torch.no_grad():
        # Sharper layers make log p(x|z) vary with z, so the posterior is a poor proposal and the gap is wide.
        encoder.layers[-1].weight.mul_(3)
        decoder.layers[-1].weight.mul_(3)
        posterior = encoder(x)
        one_sample = []
        for seed in range(50):
            torch.manual_seed(seed)
            one_sample.append(importance_weighted_nll(posterior, decoder, x, k=1))
        torch.manual_seed(100)
        hundred = importance_weighted_nll(posterior, decoder, x, k=100, chunk=30)
    negative_elbo = torch.stack(one_sample).mean()  # over seeds and images
    # Measured: a gap of about 1.1 nats, the standard error of the 50-seed mean about 0.1.
    assert hundred.mean() < negative_elbo - 0.5, (hundred.mean(), negative_elbo)


def test_iwae_rejects_an_unknown_likelihood() -> None:
    with pytest.raises(ValueError, match="likelihood must be"):
        importance_weighted_nll(standard_normal(1, 2), lambda z: z, torch.zeros(1, 2), likelihood="laplace")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Learning


def test_negative_elbo_falls_on_a_tiny_dataset() -> None:
    encoder, decoder, x = tiny_model()
    sample, reconstruction, kl = Reparameterize(), BernoulliNLL(), GaussianKL(warmup_steps=20)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)

    def negative_elbo() -> Tensor:
        posterior = encoder(x)
        return reconstruction(decoder(sample(posterior)), x) + kl(posterior)

    with torch.no_grad():
        kl.eval(), sample.eval()
        before = negative_elbo()
        kl.train(), sample.train()
    for _ in range(200):
        optimizer.zero_grad()
        negative_elbo().backward()
        optimizer.step()
    with torch.no_grad():
        kl.eval(), sample.eval()
        after = negative_elbo()
    assert after < 0.7 * before, (before, after)


def test_the_iwae_block_is_the_bound_over_the_samples_it_is_given() -> None:
    """importance_samples → a decoder → importance_weighted_nll: -(logsumexp_i log w_i - log k) per image, by hand."""
    from blocks.vae import ImportanceSamples, ImportanceWeightedNLL

    torch.manual_seed(0)
    posterior = Independent(Normal(torch.randn(3, 2), torch.rand(3, 2) + 0.5), 1)
    decoder = torch.nn.Linear(2, 4)
    x = (torch.rand(3, 4) > 0.5).float()
    z = ImportanceSamples(k=5)(posterior)  # 15 × 2, sample-major
    got = ImportanceWeightedNLL(k=5)(posterior, z, decoder(z), x)
    zz = z.view(5, 3, 2)
    log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
        decoder(zz), x.expand(5, 3, 4), reduction="none"
    ).sum(-1)
    log_pz = Independent(Normal(torch.zeros(2), torch.ones(2)), 1).log_prob(zz)
    want = -(torch.logsumexp(log_px + log_pz - posterior.log_prob(zz), 0) - math.log(5)).mean()
    torch.testing.assert_close(got, want)
