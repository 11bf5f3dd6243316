"""Variational autoencoder (Kingma & Welling, 2014): a Gaussian encoder, the reparameterised sample, an MLP
decoder, the ELBO's two terms as losses, and the importance-weighted NLL bound (Burda et al., 2016) to evaluate.

The spec wires ``x → gaussian_encoder → reparameterize → mlp_decoder`` and minimises
``bernoulli_nll(decoder, x) + β · gaussian_kl(posterior)``, the negative ELBO in nats per image; ``β`` is the
KL loss's weight in the training config. The prior is the standard normal ``N(0, I)`` throughout. Sized for
1×28×28 MNIST by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from blocks.layers import linear_stack, require_inferred, run_stack
from dagcv.registry import Count, PositiveFloat, Size, register_block

# softplus(s + log(e - 1)) is 1 at s = 0: an untrained encoder starts with the prior's scale.
_SOFTPLUS_SHIFT = math.log(math.e - 1)
_LOG_2PI = math.log(2 * math.pi)


def _sum_per_sample(values: Tensor) -> Tensor:
    """The sum over all but the first dim; a ``B``-shaped input (no dims after the batch) comes back as it is."""
    # Not `sum(dim=tuple(range(1, ndim)))`: an empty dim tuple sums over every dim.
    return values.flatten(1).sum(1) if values.dim() > 1 else values


def bernoulli_log_likelihood(logits: Tensor, target: Tensor) -> Tensor:
    """``log p(target | logits)`` under independent Bernoullis, summed over all but the first dim.

    Example:
        >>> bernoulli_log_likelihood(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2))  # 4 · log(1/2)
        tensor([-2.7726, -2.7726])
    """
    return -_sum_per_sample(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def gaussian_log_likelihood(mean: Tensor, target: Tensor, sigma: float) -> Tensor:
    """``log N(target; mean, sigma² I)`` with its normalising constant, summed over all but the first dim.

    Example:
        >>> gaussian_log_likelihood(torch.zeros(1, 3), torch.zeros(1, 3), sigma=1.0)  # -3/2 · log(2π)
        tensor([-2.7568])
    """
    per_element = 0.5 * ((target - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * _LOG_2PI
    return -_sum_per_sample(per_element)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)``, summed over the last dim (the prior of every block here).

    Example:
        >>> standard_normal_log_prob(torch.zeros(2))  # -log(2π)
        tensor(-1.8379)
    """
    return -0.5 * (z**2 + _LOG_2PI).sum(-1)


@register_block(
    "gaussian_encoder",
    family="encoder",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={"posterior": "Distribution[B, latent_dim]"},
    infer={"in_features": "C*H*W"},
    param_count="(in_features + sum(hidden)) * max(flat([hidden, 2 * latent_dim]))",
)
class GaussianEncoder(nn.Module):
    """A ReLU MLP over the flattened image to a diagonal Gaussian posterior ``q(z | x)``.

    The last layer gives ``2·latent_dim`` numbers per image, a mean ``μ`` and a pre-scale ``s``; the
    posterior is ``Independent(Normal(μ, σ), 1)``, so ``log_prob`` sums over the latent dims.
    ``σ = softplus(s + log(e - 1))`` rather than ``exp(s / 2)`` (``s`` read as a log-variance): for ``s ≪ 0``
    softplus behaves like ``exp`` (``log σ ≈ s``, so small scales stay reachable) but it grows only linearly
    for large ``s``, so one large pre-activation early in training cannot overflow ``σ`` or blow up the
    gradients of the KL's ``σ²`` term. The shift makes ``σ = 1``, the prior's, at ``s = 0``.

    Args:
        in_features: pixels per image, ``C·H·W`` (inferred).
        hidden: widths of the hidden layers, in order; empty for a single Linear.
        latent_dim: size of the latent vector ``z``.

    Example:
        >>> posterior = GaussianEncoder(in_features=784)(torch.zeros(3, 1, 28, 28))
        >>> posterior.mean.shape, posterior.log_prob(torch.zeros(3, 20)).shape
        (torch.Size([3, 20]), torch.Size([3]))
    """

    def __init__(
        self, *, in_features: Size | None = None, hidden: tuple[Size, ...] = (400,), latent_dim: Size = 20
    ) -> None:
        super().__init__()
        in_features = require_inferred(in_features, "in_features", "gaussian_encoder")
        self.layers = linear_stack([in_features, *hidden, 2 * latent_dim])

    def forward(self, x: Tensor) -> Independent:
        mean, pre_scale = run_stack(self.layers, x.flatten(1), F.relu).chunk(2, dim=1)
        std = F.softplus(pre_scale + _SOFTPLUS_SHIFT)
        # No argument validation, as in the RL policies: it costs time on every call and checks nothing we build.
        return Independent(Normal(mean, std, validate_args=False), 1, validate_args=False)


@register_block(
    "reparameterize",
    family="layer",
    inputs={"posterior": "Distribution[B, Z]"},
    outputs={"z": "Embedding[B, Z]"},
)
class Reparameterize(nn.Module):
    """A differentiable sample ``z = μ + σ·ε`` (``ε ~ N(0, I)``) of the posterior in training; its mean in eval.

    In training mode the sample is ``rsample()``, so gradients reach ``μ`` and ``σ`` (the reparameterisation
    trick). In eval mode it returns the posterior's mean, so reconstructions are deterministic;
    ``eval_sample`` draws in eval mode too (to look at the spread of reconstructions). No parameters.

    Args:
        eval_sample: draw a sample in eval mode as well, instead of returning the mean.

    Example:
        >>> posterior = Independent(Normal(torch.ones(2, 3), torch.ones(2, 3)), 1)
        >>> Reparameterize().eval()(posterior)
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    def __init__(self, *, eval_sample: bool = False) -> None:
        super().__init__()
        self.eval_sample = eval_sample

    def forward(self, posterior: Distribution) -> Tensor:
        if self.training or self.eval_sample:
            return posterior.rsample()
        return posterior.mean

    def extra_repr(self) -> str:
        return f"eval_sample={self.eval_sample}"


@register_block(
    "mlp_decoder",
    family="decoder",
    inputs={"z": "Embedding[B, Z]"},
    outputs={"out": "Image[B, out_channels, height, width]"},
    infer={"in_features": "Z"},
    param_count="(in_features + sum(hidden)) * max(flat([hidden, out_channels * height * width]))",
)
class MLPDecoder(nn.Module):
    """A ReLU MLP from a latent vector to an image of logits (or means), reshaped to ``out_channels×height×width``.

    The output has no final activation: pair it with ``bernoulli_nll`` (logits) or ``gaussian_nll`` (means);
    ``sigmoid`` of it gives the Bernoulli decoder's pixel probabilities.

    Args:
        in_features: size of the latent vector (inferred from ``Z``).
        hidden: widths of the hidden layers, in order; empty for a single Linear.
        out_channels: channels of the output image.
        height: rows of the output image.
        width: columns of the output image.

    Example:
        >>> MLPDecoder(in_features=20)(torch.zeros(2, 20)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        *,
        in_features: Size | None = None,
        hidden: tuple[Size, ...] = (400,),
        out_channels: Size = 1,
        height: Size = 28,
        width: Size = 28,
    ) -> None:
        super().__init__()
        in_features = require_inferred(in_features, "in_features", "mlp_decoder")
        self.image_shape = (out_channels, height, width)
        self.layers = linear_stack([in_features, *hidden, out_channels * height * width])

    def forward(self, z: Tensor) -> Tensor:
        return run_stack(self.layers, z, F.relu).view(z.shape[0], *self.image_shape)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}"


@register_block(
    "gaussian_kl",
    family="loss",
    inputs={"posterior": "Distribution[B, Z]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class GaussianKL(nn.Module):
    """``KL(q(z | x) ‖ N(0, I))`` of a diagonal Gaussian posterior, in closed form: summed over the latent dims,
    averaged over the batch, with an optional linear warm-up.

    Per image, ``KL = ½ Σ_j (μ_j² + σ_j² - 1 - log σ_j²)``; the posterior must be a diagonal Gaussian (it reads
    its ``mean`` and ``stddev``), as ``gaussian_encoder`` makes. The β of a β-VAE is this loss's weight in the
    training config, not a parameter here.

    Warm-up (Bowman et al., 2016; Sønderby et al., 2016): with ``warmup_steps = W > 0`` the loss of the ``n``-th
    training-mode call is multiplied by ``min(1, n / W)``, so the KL is phased in over the first ``W`` calls
    (micro-batches, under gradient accumulation). ``n`` is the buffer ``step``: it is saved in the state_dict
    and a resumed run continues the schedule exactly. Eval-mode calls neither advance it nor apply it: they
    return the full KL, so a validation negative ELBO stays one.

    Args:
        warmup_steps: training calls over which the weight grows linearly to 1; 0 for none.

    Example:
        >>> posterior = Independent(Normal(torch.ones(2, 3), torch.ones(2, 3)), 1)
        >>> GaussianKL()(posterior)  # ½ · 3 · 1²
        tensor(1.5000)
        >>> kl = GaussianKL(warmup_steps=4)
        >>> [round(kl(posterior).item(), 3) for _ in range(5)]  # 1/4, 2/4, 3/4, 1, 1
        [0.375, 0.75, 1.125, 1.5, 1.5]
    """

    step: Tensor

    def __init__(self, *, warmup_steps: Count = 0) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # persistent: resume needs it

    def forward(self, posterior: Distribution) -> Tensor:
        mean, std = posterior.mean, posterior.stddev
        kl = 0.5 * (mean**2 + std**2 - 1 - 2 * std.log()).sum(-1).mean()
        if not self.training or self.warmup_steps == 0:
            return kl
        self.step += 1
        # A tensor weight, not `.item()`: no device sync in the training loop.
        return kl * (self.step / self.warmup_steps).clamp(max=1).to(kl.dtype)

    def extra_repr(self) -> str:
        return f"warmup_steps={self.warmup_steps}"


@register_block(
    "bernoulli_nll",
    family="loss",
    inputs={"logits": "Tensor[B, *S]", "target": "Tensor[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class BernoulliNLL(nn.Module):
    """Negative log-likelihood of targets in [0, 1] under independent Bernoullis given by logits, in nats per
    image: binary cross-entropy summed over all but the batch dim, averaged over the batch.

    The targets are the pixel intensities as they come. On grey MNIST that is a cross-entropy, not the
    likelihood of a distribution over the grey images; the nats are comparable with the literature only on
    binary data. ``binarize`` thresholds every target at 0.5 (``> 0.5`` is 1): a fixed, deterministic
    binarization, the same every epoch, unlike the stochastic binarization that redraws each pixel as
    ``Bernoulli(intensity)``; NLLs reported on the two differ.

    Args:
        binarize: threshold the targets at 0.5 first.

    Example:
        >>> BernoulliNLL()(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2))  # 4 · log 2
        tensor(2.7726)
    """

    def __init__(self, *, binarize: bool = False) -> None:
        super().__init__()
        self.binarize = binarize

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.binarize:
            target = (target > 0.5).to(logits.dtype)
        return -bernoulli_log_likelihood(logits, target).mean()

    def extra_repr(self) -> str:
        return f"binarize={self.binarize}"


@register_block(
    "gaussian_nll",
    family="loss",
    inputs={"mean": "Tensor[B, *S]", "target": "Tensor[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class GaussianNLL(nn.Module):
    """Negative log-likelihood of targets under ``N(mean, sigma² I)`` with a fixed ``sigma``, in nats per image.

    Each element costs ``(t - m)² / (2σ²) + log σ + ½ log 2π`` (the full density, constant included, so the
    number is a true NLL); the loss sums over all but the batch dim and averages over the batch.

    Args:
        sigma: the fixed standard deviation of every element.

    Example:
        >>> GaussianNLL()(torch.zeros(2, 3), torch.zeros(2, 3))  # 3/2 · log(2π)
        tensor(2.7568)
    """

    def __init__(self, *, sigma: PositiveFloat = 1.0) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, mean: Tensor, target: Tensor) -> Tensor:
        return -gaussian_log_likelihood(mean, target, self.sigma).mean()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def importance_weighted_nll(
    posterior: Distribution,
    decode: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    k: int = 100,
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
    sigma: float = 1.0,
    chunk: int = 10,
) -> Tensor:
    """The importance-weighted bound on ``-log p(x)`` (IWAE, Burda et al., 2016), per image, in nats.

    With ``z_1..z_k ~ q(z | x)`` and ``w_i = p(x | z_i) p(z_i) / q(z_i | x)``, it returns
    ``-(logsumexp_i log w_i - log k)``, an upper bound on the NLL that tightens as ``k`` grows (``k = 1`` is a
    single-sample negative ELBO). The prior ``p(z)`` is ``N(0, I)``. The ``k`` samples are decoded ``chunk``
    at a time, so memory holds ``chunk·B`` decoded images. Samples are ``rsample()``s: call it under
    ``torch.no_grad()`` to evaluate, since with gradients on every chunk's graph is kept.

    Args:
        posterior: ``q(z | x)`` for the batch: batch shape ``(B,)``, event shape ``(Z,)`` (``gaussian_encoder``).
        decode: ``z`` (``N×Z``) to the decoder's output for each (``N×...``, logits or means).
        x: the images the likelihood scores, ``B×...``; binarize them first if the training loss does.
        k: importance samples per image.
        likelihood: ``bernoulli`` (``decode`` gives logits, as ``bernoulli_nll``) or ``gaussian`` (means,
            with standard deviation ``sigma``, as ``gaussian_nll``).
        sigma: the Gaussian likelihood's standard deviation.
        chunk: samples decoded at once.

    Example:
        >>> prior = Independent(Normal(torch.zeros(2, 4), torch.ones(2, 4)), 1)
        >>> decode = lambda z: torch.zeros(z.shape[0], 1, 2, 2)  # ignores z: every pixel 1/2
        >>> importance_weighted_nll(prior, decode, torch.ones(2, 1, 2, 2), k=5, chunk=2)  # 4 · log 2, exactly
        tensor([2.7726, 2.7726])
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"importance_weighted_nll: k and chunk must be at least 1, got k={k}, chunk={chunk}")
    if likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"importance_weighted_nll: likelihood must be 'bernoulli' or 'gaussian', not {likelihood!r}")
    log_weights = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        z = posterior.rsample((n,))  # n × B × Z
        log_weights.append(_log_weights(posterior, z, decode(z.flatten(0, 1)), x, likelihood, sigma))
    return math.log(k) - torch.cat(log_weights).logsumexp(0)


def _log_weights(posterior: Distribution, z: Tensor, out: Tensor, x: Tensor, likelihood: str, sigma: float) -> Tensor:
    """``log p(x | z) + log p(z) - log q(z | x)`` for ``n`` samples per image: ``z`` is ``n × B × Z`` and ``out``
    the decoder's ``(n·B) × ...`` output for ``z.flatten(0, 1)``; returns ``n × B``."""
    n, batch = z.shape[:2]
    target = x.expand(n, *x.shape).flatten(0, 1)  # sample-major, as z.flatten(0, 1)
    if likelihood == "bernoulli":
        log_px = bernoulli_log_likelihood(out, target)
    else:
        log_px = gaussian_log_likelihood(out, target, sigma)
    return log_px.view(n, batch) + standard_normal_log_prob(z) - posterior.log_prob(z)


@register_block(
    "importance_samples",
    family="layer",
    inputs={"posterior": "Distribution[B, Z]"},
    outputs={"z": "Embedding[k * B, Z]"},
    default_mode="eval",
)
class ImportanceSamples(nn.Module):
    """``k`` samples of the posterior per image, sample-major (``k·B × Z``): the ``z`` an importance-weighted
    bound decodes. A node that ``shares`` the decoder decodes them all at once, then ``importance_weighted_nll``
    scores them. An evaluation block (``mode: eval`` by default).

    Args:
        k: samples per image (IWAE's ``k``; 100 in the bench figures).

    Example:
        >>> posterior = Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1)
        >>> ImportanceSamples(k=5)(posterior).shape
        torch.Size([10, 3])
    """

    def __init__(self, *, k: Size = 100) -> None:
        super().__init__()
        self.k = k

    def forward(self, posterior: Distribution) -> Tensor:
        return posterior.sample((self.k,)).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"k={self.k}"


@register_block(
    "importance_weighted_nll",
    family="loss",
    inputs={
        "posterior": "Distribution[B, Z]",
        "z": "Embedding[K, Z]",
        "decoded": "Tensor[K, *S]",
        "target": "Tensor[B, *S]",
    },
    outputs={"nll": "Metric[]"},
    default_mode="eval",
    requires={"K == k * B": "z and decoded hold k samples per image of the batch (importance_samples' k)"},
)
class ImportanceWeightedNLL(nn.Module):
    """The importance-weighted bound on ``-log p(x)`` in nats per image, averaged over the batch (IWAE, Burda et
    al. 2016): ``-(logsumexp_i log w_i - log k)`` with ``w_i = p(x | z_i) p(z_i) / q(z_i | x)``, an upper bound on
    the NLL that tightens as ``k`` grows (``k = 1`` is a one-sample negative ELBO). ``z`` comes from
    ``importance_samples`` and ``decoded`` from the decoder sharing the trained one. An evaluation metric: log it
    with ``metrics: [{type: mean, output: <this output>}]``.

    Args:
        k: samples per image, as ``importance_samples``.
        likelihood: ``bernoulli`` (``decoded`` are logits, as ``bernoulli_nll``) or ``gaussian`` (means).
        sigma: the Gaussian likelihood's standard deviation.
        binarize: threshold the targets at 0.5, as ``bernoulli_nll(binarize=true)`` trained them.

    Example:
        >>> prior = Independent(Normal(torch.zeros(2, 4), torch.ones(2, 4)), 1)
        >>> z = ImportanceSamples(k=3)(prior)
        >>> ImportanceWeightedNLL(k=3)(prior, z, torch.zeros(6, 1, 2, 2), torch.ones(2, 1, 2, 2))  # 4 · log 2
        tensor(2.7726)
    """

    def __init__(
        self, *, k: Size = 100, likelihood: Literal["bernoulli", "gaussian"] = "bernoulli", sigma: PositiveFloat = 1.0,
        binarize: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.k, self.likelihood, self.sigma, self.binarize = k, likelihood, sigma, binarize

    def forward(self, posterior: Distribution, z: Tensor, decoded: Tensor, target: Tensor) -> Tensor:
        if self.binarize:
            target = (target > 0.5).to(target.dtype)
        z = z.view(self.k, target.shape[0], -1)
        log_w = _log_weights(posterior, z, decoded, target, self.likelihood, self.sigma)
        return (math.log(self.k) - log_w.logsumexp(0)).mean()

    def extra_repr(self) -> str:
        return f"k={self.k}, likelihood={self.likelihood}, binarize={self.binarize}"
