"""Quantizers that turn a latent map into discrete codes: vector quantization (a learned or an EMA codebook),
Gumbel-softmax, FSQ. Each emits ``Codes[B, H, W] vocab K``, so an ablation swaps one for another in one edit and
a prior over the codes is checked against the vocabulary.

Every quantizer is used two ways, through one module:

* **encoding**: ``x`` (latent vectors, one per position) gives the quantized latents, their ``codes`` and the
  quantizer's losses;
* **decoding**: ``codes`` alone (drawn from a prior, say) gives the latents those codes stand for, so that a
  sampler can run codes through a node that ``shares`` the quantizer's module. The loss outputs are then 0-d
  zeros and ``codes`` is the input itself.

Exactly one of ``x`` and ``codes`` is given per call. :func:`_codebook_quantize` does both uses for any
nearest-codebook quantizer (``vector_quantizer`` and ``vector_quantizer_ema``), from the smaller pieces
:func:`_one_input`, :func:`_nearest_codes`, :func:`_lookup_codes` and :func:`_straight_through`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Count, Fraction, PositiveFloat, Size, register_block


def _one_input(x: Tensor | None, codes: Tensor | None, block: str) -> None:
    """Refuse a call that gives both ``x`` and ``codes``, or neither."""
    if (x is None) == (codes is None):
        found = "both" if x is not None else "neither"
        raise ValueError(
            f"{block}: give exactly one of 'x' (latents to encode) and 'codes' (codes to decode), found {found}"
        )


def _straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass, exactly; the gradient of ``surrogate`` in the backward pass.

    Written ``sg[value] + (surrogate - sg[surrogate])`` rather than ``surrogate + sg[value - surrogate]``: the
    difference ``surrogate - sg[surrogate]`` is exactly 0, so the forward value is bit-for-bit ``value`` (what
    decoding the codes gives back), where the other form can be off by a rounding.
    """
    return value.detach() + (surrogate - surrogate.detach())


def _nearest_codes(x: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """The index of the nearest codebook entry for every position of ``x``, and those entries.

    Args:
        x: latents ``(B, D, H, W)``.
        codebook: entries ``(K, D)``.

    Returns:
        ``codes`` ``(B, H, W)`` (int64) and ``nearest`` ``(B, D, H, W)``, which carries the gradient to
        ``codebook`` when it has one (a codebook loss), never to ``x``.
    """
    b, d, h, w = x.shape
    flat = x.detach().permute(0, 2, 3, 1).reshape(-1, d)
    # |z - e|² = |z|² - 2 z·e + |e|², one matrix product instead of a (positions × codes × dim) difference.
    distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.detach().t() + codebook.detach().pow(2).sum(1)
    codes = distances.argmin(1).view(b, h, w)
    return codes, codebook[codes].permute(0, 3, 1, 2)  # in range by construction: no check (it would sync)


def _lookup_codes(codes: Tensor, codebook: Tensor) -> Tensor:
    """The codebook entries ``(B, D, H, W)`` that ``codes`` ``(B, H, W)`` index; refuses codes out of range."""
    _check_codes(codes, codebook.shape[0])
    return codebook[codes].permute(0, 3, 1, 2)


def _codebook_quantize(
    x: Tensor | None, codes: Tensor | None, codebook: Tensor, block: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Both uses of a nearest-codebook quantizer: encode ``x`` or decode ``codes`` (exactly one given).

    Args:
        x: latents ``(B, D, H, W)`` to encode, or None.
        codes: codes ``(B, H, W)`` to decode, or None.
        codebook: entries ``(K, D)``, a parameter or a buffer.
        block: the block's name, for the error messages.

    Returns:
        ``quantized`` ``(B, D, H, W)``, ``codes`` and ``nearest``. Encoding: ``quantized`` is the nearest entries
        in value with the straight-through gradient to ``x``, and ``nearest`` the same entries with the gradient
        to ``codebook`` only (for the losses). Decoding: the entries ``codes`` index, ``codes`` itself, and
        ``nearest`` None (no losses).

    Example:
        >>> codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> quantized, codes, _ = _codebook_quantize(torch.full((1, 2, 1, 2), 0.8), None, codebook, "demo")
        >>> codes.tolist(), torch.equal(_codebook_quantize(None, codes, codebook, "demo")[0], quantized)
        ([[[1, 1]]], True)
    """
    _one_input(x, codes, block)
    if x is None:
        return _lookup_codes(codes, codebook), codes, None
    codes, nearest = _nearest_codes(x, codebook)
    return _straight_through(nearest, x), codes, nearest


def _check_codes(codes: Tensor, vocab: int) -> None:
    if codes.dim() != 3 or codes.dtype != torch.int64:
        raise ValueError(f"codes must be int64 of shape (B, H, W), found {codes.dtype} {tuple(codes.shape)}")
    # A -1 (an unknown code) would silently index the last entry.
    if codes.numel() and (codes.min() < 0 or codes.max() >= vocab):
        raise ValueError(f"codes must lie in [0, {vocab}), found [{int(codes.min())}, {int(codes.max())}]")


# ---------------------------------------------------------------------------------------------------------------
# Vector quantization with a learned codebook


@register_block(
    "vector_quantizer",
    family="quantizer",
    inputs={"x": "FeatureMap[B, D, H, W]?", "codes": "Codes[B, H, W] vocab num_codes?"},
    outputs={
        "quantized": "FeatureMap[B, D, H, W]",
        "codes": "Codes[B, H, W] vocab num_codes",
        "codebook_loss": "Loss[]",
        "commitment_loss": "Loss[]",
    },
    infer={"embedding_dim": "D"},
)
class VectorQuantizer(nn.Module):
    """Replace each latent vector by its nearest codebook entry, passing gradients straight through.

    With ``z`` the input and ``e`` the nearest entries: ``quantized`` equals ``e`` in the forward pass, while its
    gradient flows to ``z`` unchanged (the straight-through estimator). ``codebook_loss`` is the mean of
    ``(sg[z] - e)²`` and moves the codebook; ``commitment_loss`` is ``beta`` times the mean of ``(z - sg[e])²``
    and keeps the encoder close to its codes (``sg`` stops the gradient). Given ``codes`` instead of ``x`` it
    decodes them (see the module docstring).

    Args:
        embedding_dim: size of each latent vector and codebook entry (inferred from ``D``).
        num_codes: number of codebook entries.
        beta: weight of the commitment loss.

    Example:
        >>> out = VectorQuantizer(num_codes=8)(torch.zeros(2, 16, 7, 7))
        >>> out["quantized"].shape, out["codes"].shape
        (torch.Size([2, 16, 7, 7]), torch.Size([2, 7, 7]))
    """

    def __init__(self, *, embedding_dim: Size = 16, num_codes: Size = 64, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(torch.empty(num_codes, embedding_dim).uniform_(-1 / num_codes, 1 / num_codes))

    def forward(self, x: Tensor | None = None, codes: Tensor | None = None) -> dict[str, Tensor]:
        quantized, codes, nearest = _codebook_quantize(x, codes, self.codebook, "vector_quantizer")
        if nearest is None:  # decoding
            zero = quantized.new_zeros(())
            return {"quantized": quantized, "codes": codes, "codebook_loss": zero, "commitment_loss": zero}
        return {
            "quantized": quantized,
            "codes": codes,
            "codebook_loss": F.mse_loss(nearest, x.detach()),  # type: ignore[union-attr]
            "commitment_loss": self.beta * F.mse_loss(x, nearest.detach()),  # type: ignore[arg-type]
        }

    def extra_repr(self) -> str:
        return f"num_codes={self.codebook.shape[0]}, embedding_dim={self.codebook.shape[1]}, beta={self.beta}"


# ---------------------------------------------------------------------------------------------------------------
# Vector quantization with an EMA codebook


@register_block(
    "vector_quantizer_ema",
    family="quantizer",
    inputs={"x": "FeatureMap[B, D, H, W]?", "codes": "Codes[B, H, W] vocab num_codes?"},
    outputs={
        "quantized": "FeatureMap[B, D, H, W]",
        "codes": "Codes[B, H, W] vocab num_codes",
        "commitment_loss": "Loss[]",
    },
    infer={"embedding_dim": "D"},
)
class VectorQuantizerEMA(nn.Module):
    """Nearest-codebook quantization whose codebook follows exponential moving averages of its clusters.

    Like ``vector_quantizer``, each latent vector ``z`` is replaced by its nearest codebook entry ``e`` with a
    straight-through gradient, and ``commitment_loss`` is ``beta`` times the mean of ``(z - sg[e])²``. The
    codebook is no parameter: it is a buffer that each training-mode forward moves (van den Oord et al., 2017,
    appendix; Razavi et al., 2019). With ``n_k`` the number of batch vectors assigned to code ``k`` and ``s_k``
    their sum, ``N_k ← decay·N_k + (1-decay)·n_k`` and ``S_k ← decay·S_k + (1-decay)·s_k``, then
    ``e_k = S_k / Ñ_k`` with the Laplace-smoothed counts ``Ñ_k = (N_k + eps) / (N + K·eps) · N`` (``N = Σ N_k``),
    so that an unused code keeps a finite entry. The averages start as one vector per code at its initial entry.

    A code unused for ``restart_after`` training steps in a row is restarted at a random latent vector of the
    current batch (its averages reset to that one vector), so codes that lost every cluster come back into use.
    Eval-mode forwards and decoding change nothing. The statistics are per process (no all-reduce across data
    parallel workers).

    Args:
        embedding_dim: size of each latent vector and codebook entry (inferred from ``D``).
        num_codes: number of codebook entries.
        beta: weight of the commitment loss.
        decay: weight of the old averages at each update.
        eps: Laplace smoothing of the cluster sizes.
        restart_after: restart a code unused for this many training steps in a row (0: never).

    Example:
        >>> vq = VectorQuantizerEMA(embedding_dim=4, num_codes=8)
        >>> out = vq(torch.randn(2, 4, 3, 3))  # training mode: the codebook moves
        >>> out = vq.eval()(torch.randn(2, 4, 3, 3))
        >>> out["quantized"].shape, out["codes"].shape, out["commitment_loss"].shape
        (torch.Size([2, 4, 3, 3]), torch.Size([2, 3, 3]), torch.Size([]))
        >>> torch.equal(vq(codes=out["codes"])["quantized"], out["quantized"])
        True
    """

    def __init__(
        self,
        *,
        embedding_dim: Size = 16,
        num_codes: Size = 64,
        beta: float = 0.25,
        decay: Fraction = 0.99,
        eps: PositiveFloat = 1e-5,
        restart_after: Count = 0,
    ) -> None:
        super().__init__()
        self.beta, self.decay, self.eps, self.restart_after = beta, decay, eps, restart_after
        codebook = torch.randn(num_codes, embedding_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embedding_sum", codebook.clone())
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.int64))

    def forward(self, x: Tensor | None = None, codes: Tensor | None = None) -> dict[str, Tensor]:
        quantized, codes, nearest = _codebook_quantize(x, codes, self.codebook, "vector_quantizer_ema")
        if nearest is None:  # decoding
            return {"quantized": quantized, "codes": codes, "commitment_loss": self.codebook.new_zeros(())}
        loss = self.beta * F.mse_loss(x, nearest)  # the codebook is a buffer: nearest carries no gradient
        if self.training:
            self._update(x.detach(), codes)
        return {"quantized": quantized, "codes": codes, "commitment_loss": loss}

    @torch.no_grad()
    def _update(self, x: Tensor, codes: Tensor) -> None:
        """One EMA step of the cluster sizes and sums, the new entries, and the restart of long-unused codes."""
        num_codes, d = self.codebook.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, d).to(self.codebook.dtype)
        codes = codes.reshape(-1)
        counts = torch.bincount(codes, minlength=num_codes).to(self.cluster_size.dtype)
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, codes, flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embedding_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + num_codes * self.eps) * total
        self.codebook.copy_(self.embedding_sum / smoothed[:, None])
        if self.restart_after > 0:
            self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
            dead = (self.steps_unused >= self.restart_after).nonzero().squeeze(1)
            if len(dead):
                chosen = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
                self.codebook[dead] = chosen
                self.embedding_sum[dead] = chosen
                self.cluster_size[dead] = 1.0
                self.steps_unused[dead] = 0

    def extra_repr(self) -> str:
        k, d = self.codebook.shape
        return (
            f"num_codes={k}, embedding_dim={d}, beta={self.beta}, decay={self.decay}, "
            f"restart_after={self.restart_after}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Gumbel-softmax quantization (dVAE)


@register_block(
    "gumbel_quantizer",
    family="quantizer",
    inputs={"x": "FeatureMap[B, D, H, W]?", "codes": "Codes[B, H, W] vocab num_codes?"},
    outputs={
        "quantized": "FeatureMap[B, D, H, W]",
        "codes": "Codes[B, H, W] vocab num_codes",
        "kl_loss": "Loss[]",
    },
    infer={"embedding_dim": "D"},
)
class GumbelQuantizer(nn.Module):
    """A relaxed categorical choice of codebook entry per position (Jang et al., 2017; Ramesh et al., 2021).

    A 1×1 conv turns each latent vector into ``num_codes`` logits. In training mode a Gumbel-softmax sample at
    temperature ``τ`` weighs the codebook entries: ``quantized = softmax((logits + g) / τ) @ codebook`` with
    Gumbel noise ``g`` from the global torch RNG; with ``hard`` the weights are the one-hot of the sample's
    argmax in the forward pass and the soft sample's gradient in the backward pass (straight-through). In eval
    mode there is no noise: each position takes the entry of its argmax logit. ``codes`` is always the argmax of
    the logits (the most likely code, not the training sample).

    ``τ`` follows a cosine schedule over the first ``anneal_steps`` training-mode forwards,
    ``τ(t) = tau_end + (tau_start - tau_end) · (1 + cos(π·t / anneal_steps)) / 2``, then stays at ``tau_end``;
    the step counter ``t`` is a buffer, so a resumed run continues the schedule exactly. ``kl_loss`` is
    ``KL(q(code | x) ‖ uniform)`` with ``q = softmax(logits)``, averaged over positions; weigh it in the training
    config.

    Args:
        embedding_dim: width of the input latents and of the codebook entries (inferred from ``D``).
        num_codes: number of codebook entries.
        tau_start: temperature at the first training step.
        tau_end: temperature after ``anneal_steps`` steps.
        anneal_steps: training steps over which the temperature falls (0: ``tau_end`` from the start).
        hard: one-hot weights in the forward pass, soft gradients in the backward pass.

    Example:
        >>> gq = GumbelQuantizer(embedding_dim=4, num_codes=8, anneal_steps=4)
        >>> out = gq(torch.randn(2, 4, 3, 3))
        >>> out["quantized"].shape, out["codes"].shape, out["kl_loss"].shape
        (torch.Size([2, 4, 3, 3]), torch.Size([2, 3, 3]), torch.Size([]))
        >>> for _ in range(3):
        ...     _ = gq(torch.randn(2, 4, 3, 3))
        >>> int(gq.step), gq.tau  # annealed after 4 training-mode forwards
        (4, 0.0625)
    """

    def __init__(
        self,
        *,
        embedding_dim: Size = 16,
        num_codes: Size = 64,
        tau_start: PositiveFloat = 1.0,
        tau_end: PositiveFloat = 0.0625,
        anneal_steps: Count = 10_000,
        hard: bool = False,
    ) -> None:
        super().__init__()
        self.tau_start, self.tau_end, self.anneal_steps, self.hard = tau_start, tau_end, anneal_steps, hard
        self.to_logits = nn.Conv2d(embedding_dim, num_codes, kernel_size=1)
        self.codebook = nn.Parameter(torch.randn(num_codes, embedding_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def tau(self) -> float:
        """The temperature of the next training-mode forward."""
        done = 1.0 if self.anneal_steps == 0 else min(int(self.step), self.anneal_steps) / self.anneal_steps
        return self.tau_end + (self.tau_start - self.tau_end) * (1 + math.cos(math.pi * done)) / 2

    def forward(self, x: Tensor | None = None, codes: Tensor | None = None) -> dict[str, Tensor]:
        _one_input(x, codes, "gumbel_quantizer")
        if x is None:
            zero = self.codebook.new_zeros(())
            return {"quantized": _lookup_codes(codes, self.codebook), "codes": codes, "kl_loss": zero}
        logits = self.to_logits(x)
        codes = logits.argmax(1)
        if self.training:
            weights = self.relaxed_one_hot(logits, self.tau)
            self.step += 1
            quantized = torch.einsum("bkhw,kd->bdhw", weights, self.codebook)
        else:
            quantized = self.codebook[codes].permute(0, 3, 1, 2)
        log_q = F.log_softmax(logits, dim=1)
        kl = (log_q.exp() * log_q).sum(1).mean() + math.log(logits.shape[1])
        return {"quantized": quantized, "codes": codes, "kl_loss": kl}

    def relaxed_one_hot(self, logits: Tensor, temperature: float) -> Tensor:
        """A Gumbel-softmax sample over dim 1 of ``logits``; exactly one-hot in value when ``hard``."""
        # -log(Exp(1)) is Gumbel(0, 1); a draw of exactly 0 (it happens at float precision) would give inf.
        gumbel = -torch.empty_like(logits).exponential_().clamp_(min=torch.finfo(logits.dtype).tiny).log()
        soft = F.softmax((logits + gumbel) / temperature, dim=1)
        if not self.hard:
            return soft
        one_hot = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
        return _straight_through(one_hot, soft)

    def extra_repr(self) -> str:
        k, d = self.codebook.shape
        return (
            f"num_codes={k}, embedding_dim={d}, tau_start={self.tau_start}, tau_end={self.tau_end}, "
            f"anneal_steps={self.anneal_steps}, hard={self.hard}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Finite scalar quantization


# dagcv's rule language has no product: spell out that of up to 8 levels, padding the list with ones.
_MAX_LEVELS = 8
_PRODUCT_OF_LEVELS = " * ".join(f"(levels + [1] * {_MAX_LEVELS})[{i}]" for i in range(_MAX_LEVELS))


@register_block(
    "fsq",
    family="quantizer",
    inputs={"x": "FeatureMap[B, D, H, W]?", "codes": "Codes[B, H, W] vocab num_codes?"},
    outputs={"quantized": "FeatureMap[B, D, H, W]", "codes": "Codes[B, H, W] vocab num_codes"},
    requires={
        "len(levels) >= 1 and min(levels) >= 2": "every channel needs at least 2 levels",
        f"len(levels) <= {_MAX_LEVELS}": f"fsq takes at most {_MAX_LEVELS} levels (its vocabulary rule spells "
        f"out the product of {_MAX_LEVELS})",
        f"num_codes == {_PRODUCT_OF_LEVELS}": "num_codes is the vocabulary, the product of the levels",
        "D == len(levels)": "each input channel is quantized to its own number of levels: D must be len(levels)",
    },
)
class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al., 2023): round each bounded channel to a few levels.

    Channel ``i`` of each latent vector is squashed by ``tanh`` into an interval that rounds to exactly
    ``levels[i]`` integers, rounded (straight-through: the gradient of the rounding is the identity, that of the
    bound is kept), and divided by ``levels[i] // 2`` so that ``quantized`` lies in [-1, 1]. For an even number
    of levels the interval is shifted by half a step (``tanh(z + atanh(1/2 / h)) · h - 1/2`` with
    ``h = (L - 1)(1 - 1e-3) / 2``), which puts the levels at ``-L/2, ..., L/2 - 1`` and keeps ``z = 0`` at 0
    (two levels, ``{-1, 0}``, have no level between two others: there ``z = 0`` is the boundary, no shift).
    ``codes`` reads the rounded channels as the digits of a mixed-radix number (channel 0 the least
    significant), so the vocabulary is the product of the levels: give it as ``num_codes`` (dagcv checks that
    it is). FSQ needs no codebook and no loss.

    Args:
        levels: number of levels of each channel, each at least 2 (``[8, 5, 5, 5]``: 1000 codes over 4 channels).
        num_codes: the vocabulary, the product of ``levels``.

    Example:
        >>> fsq = FSQ(levels=[8, 5, 5, 5], num_codes=1000)
        >>> out = fsq(torch.randn(2, 4, 3, 3))
        >>> out["quantized"].shape, out["codes"].shape, int(out["codes"].max()) < 1000
        (torch.Size([2, 4, 3, 3]), torch.Size([2, 3, 3]), True)
        >>> torch.equal(fsq(codes=out["codes"])["quantized"], out["quantized"])
        True
    """

    def __init__(self, *, levels: list[int] = [8, 5, 5, 5], num_codes: Size = 1000) -> None:  # noqa: B006
        super().__init__()
        if not levels or min(levels) < 2:
            raise ValueError(f"fsq: every channel needs at least 2 levels, found levels={levels}")
        if math.prod(levels) != num_codes:
            raise ValueError(f"fsq: num_codes={num_codes} must be the product of levels={levels}: {math.prod(levels)}")
        self.levels = list(levels)
        half = [(n - 1) * (1 - 1e-3) / 2 for n in levels]  # just under (L-1)/2: the bound never rounds past the end
        offset = [0.5 if n % 2 == 0 else 0.0 for n in levels]
        # The shift puts z = 0 at 0; two levels round to {-1, 0}, which has no inside point: no shift (the sign of z).
        shift = [math.atanh(o / h) if o < h else 0.0 for o, h in zip(offset, half, strict=True)]
        channels = {"half_range": half, "offset": offset, "shift": shift, "half_width": [n // 2 for n in levels]}
        for name, values in channels.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32)[:, None, None], persistent=False)
        self.register_buffer("level_counts", torch.tensor(levels)[:, None, None], persistent=False)
        self.register_buffer("radix", torch.tensor([math.prod(levels[:i]) for i in range(len(levels))])[:, None, None],
                             persistent=False)  # fmt: skip

    def forward(self, x: Tensor | None = None, codes: Tensor | None = None) -> dict[str, Tensor]:
        _one_input(x, codes, "fsq")
        if x is None:
            _check_codes(codes, math.prod(self.levels))
            digits = (codes[:, None] // self.radix) % self.level_counts
            return {"quantized": (digits - self.half_width) / self.half_width, "codes": codes}
        if x.shape[1] != len(self.levels):
            raise ValueError(f"fsq: levels={self.levels} quantize {len(self.levels)} channels, found {x.shape[1]}")
        bounded = torch.tanh(x + self.shift) * self.half_range - self.offset
        rounded = bounded.round()
        digits = (rounded + self.half_width).long()
        quantized = _straight_through(rounded, bounded) / self.half_width
        return {"quantized": quantized, "codes": (digits * self.radix).sum(1)}

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
