"""The quantizers: encoding and decoding through one module, straight-through gradients, the EMA codebook and
its restarts, the Gumbel-softmax sample and temperature schedule, and FSQ's levels and mixed-radix codes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.quantizers import FSQ, GumbelQuantizer, VectorQuantizerEMA, _codebook_quantize
from dagcv.registry import iter_live
from dagcv.rules import holds


def make_ema(**kwargs) -> VectorQuantizerEMA:
    torch.manual_seed(0)
    return VectorQuantizerEMA(**{"embedding_dim": 4, "num_codes": 12, **kwargs})


def make_gumbel(**kwargs) -> GumbelQuantizer:
    torch.manual_seed(0)
    return GumbelQuantizer(**{"embedding_dim": 4, "num_codes": 12, "anneal_steps": 10, **kwargs})


def make_fsq() -> FSQ:
    return FSQ(levels=[8, 5, 3, 2], num_codes=240)


QUANTIZERS = {  # name: (module, vocabulary, channels, loss ports)
    "vector_quantizer_ema": (make_ema, 12, 4, ["commitment_loss"]),
    "gumbel_quantizer": (make_gumbel, 12, 4, ["kl_loss"]),
    "gumbel_quantizer_hard": (lambda: make_gumbel(hard=True), 12, 4, ["kl_loss"]),
    "fsq": (make_fsq, 240, 4, []),
}


def latents(channels: int = 4, *, grad: bool = False) -> Tensor:
    torch.manual_seed(1)
    return torch.randn(2, channels, 3, 5).requires_grad_(grad)


# ---------------------------------------------------------------------------------------------------------------
# Every quantizer: two uses, one contract


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("training", [False, True])
def test_encoding_gives_declared_ports_and_codes_in_the_vocabulary(name: str, training: bool) -> None:
    make, vocab, channels, losses = QUANTIZERS[name]
    out = make().train(training)(latents(channels))
    assert list(out) == ["quantized", "codes", *losses]
    assert out["quantized"].shape == (2, channels, 3, 5) and out["quantized"].dtype == torch.float32
    assert out["codes"].shape == (2, 3, 5) and out["codes"].dtype == torch.int64
    assert int(out["codes"].min()) >= 0 and int(out["codes"].max()) < vocab
    for loss in losses:
        assert out[loss].shape == () and torch.isfinite(out[loss])


@pytest.mark.parametrize("name", QUANTIZERS)
def test_decoding_the_codes_gives_back_the_quantized_latents_exactly(name: str) -> None:
    make, _, channels, losses = QUANTIZERS[name]
    quantizer = make().eval()
    encoded = quantizer(latents(channels))
    decoded = quantizer(codes=encoded["codes"])
    assert list(decoded) == list(encoded)
    assert torch.equal(decoded["quantized"], encoded["quantized"])
    assert decoded["codes"] is encoded["codes"]
    for loss in losses:
        assert decoded[loss].shape == () and decoded[loss].item() == 0


@pytest.mark.parametrize("name", QUANTIZERS)
def test_exactly_one_of_x_and_codes(name: str) -> None:
    make, _, channels, _ = QUANTIZERS[name]
    quantizer = make()
    with pytest.raises(ValueError, match=r"exactly one of 'x'.*found both"):
        quantizer(latents(channels), torch.zeros(2, 3, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="found neither"):
        quantizer()


@pytest.mark.parametrize("name", QUANTIZERS)
def test_decoding_refuses_codes_outside_the_vocabulary(name: str) -> None:
    make, vocab, _, _ = QUANTIZERS[name]
    quantizer = make()
    for bad in (-1, vocab):
        with pytest.raises(ValueError, match=rf"codes must lie in \[0, {vocab}\)"):
            quantizer(codes=torch.full((1, 2, 2), bad))


def test_contracts_take_optional_x_and_codes_and_name_their_vocabulary() -> None:
    contracts = {c.name: c for c, _ in iter_live()}
    for name, vocab in [("vector_quantizer_ema", "num_codes"), ("gumbel_quantizer", "num_codes"), ("fsq", "num_codes")]:
        contract = contracts[name]
        assert [(p.name, p.type) for p in contract.inputs] == [
            ("x", "FeatureMap[B, D, H, W]?"),
            ("codes", "Codes[B, H, W] vocab num_codes?"),
        ]
        assert contract.output("codes").parsed.vocab.expr == vocab
        assert contract.family == "quantizer"


# ---------------------------------------------------------------------------------------------------------------
# Straight-through gradients


def test_ema_straight_through_gradient_is_the_identity() -> None:
    x, upstream = latents(grad=True), torch.randn(2, 4, 3, 5)
    (grad,) = torch.autograd.grad((make_ema()(x)["quantized"] * upstream).sum(), [x])
    assert torch.equal(grad, upstream)


def test_shared_helper_routes_gradients_like_a_gradient_trained_codebook() -> None:
    """What ``vector_quantizer`` needs: quantized → x only, nearest → codebook only, exact decoding."""
    codebook, x = nn.Parameter(torch.randn(12, 4)), latents(grad=True)
    quantized, codes, nearest = _codebook_quantize(x, None, codebook, "vq")
    grad_x, grad_codebook = torch.autograd.grad(quantized.sum(), [x, codebook], allow_unused=True)
    assert torch.equal(grad_x, torch.ones_like(x)) and grad_codebook is None
    grad_x, grad_codebook = torch.autograd.grad(nearest.sum(), [x, codebook], allow_unused=True)
    assert grad_x is None and grad_codebook is not None
    decoded, same_codes, none = _codebook_quantize(None, codes, codebook, "vq")
    assert torch.equal(decoded, quantized) and same_codes is codes and none is None


def test_fsq_rounding_passes_the_gradient_of_the_bound_unchanged() -> None:
    """FSQ's rounding is straight-through; its tanh bound keeps its own gradient (as in the paper)."""
    fsq, x, upstream = make_fsq(), latents(grad=True), torch.randn(2, 4, 3, 5)
    (grad,) = torch.autograd.grad((fsq(x)["quantized"] * upstream).sum(), [x])
    bound = (torch.tanh(x + fsq.shift) * fsq.half_range - fsq.offset) / fsq.half_width
    (want,) = torch.autograd.grad((bound * upstream).sum(), [x])
    torch.testing.assert_close(grad, want, rtol=0, atol=0)
    assert (grad != 0).all()


# ---------------------------------------------------------------------------------------------------------------
# The EMA codebook


def test_ema_codebook_gets_no_gradient_and_commitment_loss_by_hand() -> None:
    vq, x = make_ema(beta=0.5), latents(grad=True)
    assert list(vq.parameters()) == [] and not vq.codebook.requires_grad
    out = vq.eval()(x)
    nearest = vq.codebook[out["codes"]].permute(0, 3, 1, 2)
    torch.testing.assert_close(out["commitment_loss"], 0.5 * ((x.detach() - nearest) ** 2).mean())
    out["commitment_loss"].backward()
    assert x.grad is not None and not vq.codebook.requires_grad


def test_one_ema_step_by_hand() -> None:
    vq, x = make_ema(decay=0.9, eps=1e-3), latents()
    codebook, size, total = vq.codebook.clone(), vq.cluster_size.clone(), vq.embedding_sum.clone()
    codes = vq.train()(x)["codes"].reshape(-1)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 4)
    one_hot = F.one_hot(codes, 12).float()
    size = 0.9 * size + 0.1 * one_hot.sum(0)
    total = 0.9 * total + 0.1 * one_hot.t() @ flat
    n = size.sum()
    smoothed = (size + 1e-3) / (n + 12 * 1e-3) * n
    torch.testing.assert_close(vq.cluster_size, size)
    torch.testing.assert_close(vq.embedding_sum, total)
    torch.testing.assert_close(vq.codebook, total / smoothed[:, None])
    assert not torch.equal(vq.codebook, codebook)


def test_ema_codebook_converges_to_the_cluster_means_of_a_fixed_batch() -> None:
    vq, x = make_ema(decay=0.8), latents() * 2
    flat = x.permute(0, 2, 3, 1).reshape(-1, 4)
    initial_codes = vq.eval()(x)["codes"].reshape(-1)

    def distance_to_means(codes: Tensor) -> float:
        used = codes.unique()
        means = torch.stack([flat[codes == k].mean(0) for k in used])
        return float((vq.codebook[used] - means).norm(dim=1).max())

    before = distance_to_means(initial_codes)
    vq.train()
    for _ in range(100):
        vq(x)
    codes = vq.eval()(x)["codes"].reshape(-1)
    assert distance_to_means(codes) < 1e-3 < before


def test_eval_mode_and_decoding_leave_the_ema_state_alone() -> None:
    vq, x = make_ema(restart_after=1), latents()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()(x)
    vq.train()(codes=torch.zeros(2, 3, 5, dtype=torch.int64))
    assert all(torch.equal(v, state[k]) for k, v in vq.state_dict().items())


def test_an_unused_code_restarts_at_a_batch_vector_after_restart_after_steps() -> None:
    vq, x = make_ema(restart_after=3), latents()
    with torch.no_grad():
        vq.codebook[5] = vq.embedding_sum[5] = 100.0  # far from every latent: never chosen
    flat = x.permute(0, 2, 3, 1).reshape(-1, 4)
    vq.train()
    for step in range(1, 4):
        codes = vq(x)["codes"]
        assert not (codes == 5).any()
        restarted = (vq.codebook[5] - flat).abs().sum(1).min() == 0
        assert bool(restarted) == (step == 3), f"step {step}"
    assert vq.steps_unused[5] == 0 and vq.cluster_size[5] == 1


def test_no_restart_when_restart_after_is_zero() -> None:
    vq, x = make_ema(), latents()
    with torch.no_grad():
        vq.codebook[5] = vq.embedding_sum[5] = 100.0
    vq.train()
    for _ in range(5):
        vq(x)
    assert vq.codebook[5].min() > 50 and vq.steps_unused.sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# Gumbel-softmax


def test_hard_samples_are_exactly_one_hot_and_pick_codebook_entries() -> None:
    gq, x = make_gumbel(hard=True), latents(grad=True)
    weights = gq.relaxed_one_hot(gq.to_logits(x), temperature=0.5)
    assert set(weights.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(weights.sum(1), torch.ones(2, 3, 5))
    quantized = gq.train()(x)["quantized"].detach().permute(0, 2, 3, 1).reshape(-1, 4)
    assert all((gq.codebook.detach() == row).all(1).any() for row in quantized)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_gradients_reach_the_logits_conv_codebook_and_input(hard: bool) -> None:
    gq, x = make_gumbel(hard=hard), latents(grad=True)
    out = gq.train()(x)
    (out["quantized"] * torch.randn(2, 4, 3, 5)).sum().backward()
    for tensor in (gq.to_logits.weight, gq.to_logits.bias, gq.codebook, x):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_eval_mode_takes_the_argmax_without_noise() -> None:
    gq, x = make_gumbel().eval(), latents()
    first, second = gq(x), gq(x)
    assert torch.equal(first["quantized"], second["quantized"])
    assert torch.equal(first["codes"], gq.to_logits(x).argmax(1))
    assert gq.step == 0


def test_kl_to_the_uniform_prior_by_hand() -> None:
    gq, x = make_gumbel(), latents()
    q = torch.distributions.Categorical(logits=gq.to_logits(x).permute(0, 2, 3, 1))
    uniform = torch.distributions.Categorical(logits=torch.zeros(12))
    want = torch.distributions.kl_divergence(q, uniform).mean()
    torch.testing.assert_close(gq.eval()(x)["kl_loss"], want)
    with torch.no_grad():
        gq.to_logits.weight.zero_()
        gq.to_logits.bias.zero_()
    assert abs(gq(x)["kl_loss"].item()) < 1e-6  # equal logits: q is uniform


def test_temperature_follows_the_cosine_schedule_and_survives_a_state_dict_round_trip() -> None:
    gq, x = make_gumbel(tau_start=1.0, tau_end=0.0625, anneal_steps=10).train(), latents()
    seen = []
    for _ in range(12):
        seen.append(gq.tau)
        gq(x)
    want = [0.0625 + 0.9375 * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2 for t in range(12)]
    assert seen == pytest.approx(want, abs=1e-12)
    assert seen[0] == 1.0 and seen[5] == pytest.approx(0.53125) and seen[10] == seen[11] == 0.0625
    resumed = make_gumbel(tau_start=1.0, tau_end=0.0625, anneal_steps=10)
    gq.step.fill_(4)
    resumed.load_state_dict(gq.state_dict())
    assert int(resumed.step) == 4 and resumed.tau == gq.tau == pytest.approx(want[4])


def test_zero_anneal_steps_starts_at_tau_end() -> None:
    assert make_gumbel(anneal_steps=0, tau_end=0.25).tau == 0.25


# ---------------------------------------------------------------------------------------------------------------
# FSQ


def test_every_fsq_code_decodes_to_a_distinct_vector_on_the_level_grid() -> None:
    fsq = make_fsq()
    decoded = fsq(codes=torch.arange(240).view(1, 1, 240))["quantized"][0, :, 0].t()
    assert len(decoded.unique(dim=0)) == 240
    for channel, levels in enumerate(fsq.levels):
        values = decoded[:, channel].unique()
        assert len(values) == levels and values.min() == -1 and values.max() <= 1


def test_fsq_codes_are_mixed_radix_numbers_of_the_levels() -> None:
    fsq = FSQ(levels=[3, 4], num_codes=12)
    # code 7 = 1 + 2·3: digit 1 of 3 levels (centre, 0) and digit 2 of 4 levels (0 on -2..1)
    assert fsq(codes=torch.tensor([[[7]]]))["quantized"].flatten().tolist() == [0.0, 0.0]
    x = torch.tensor([-9.0, 9.0]).view(1, 2, 1, 1)  # the lowest level of channel 0, the highest of channel 1
    out = fsq(x)
    assert out["quantized"].flatten().tolist() == [-1.0, 0.5] and out["codes"].item() == 0 + 3 * 3


def test_fsq_maps_zero_to_zero_and_a_large_random_input_uses_almost_every_code() -> None:
    fsq = make_fsq()
    zero = fsq(torch.zeros(1, 4, 1, 1))["quantized"].flatten()
    assert zero[:3].tolist() == [0.0, 0.0, 0.0]  # two levels ({-1, 0}) have no centre
    torch.manual_seed(0)
    codes = fsq(torch.randn(8, 4, 64, 64) * 1.5)["codes"]
    assert len(codes.unique()) >= 0.95 * 240


def test_fsq_rules_and_constructor_checks() -> None:
    rules = {c.name: c for c, _ in iter_live()}["fsq"].requires
    env = {"levels": [8, 5, 5, 5], "num_codes": 1000, "D": 4}
    assert all(holds(rule, env) for rule in rules)
    for bad in ({"num_codes": 999}, {"D": 3}, {"levels": [8, 1], "num_codes": 8}, {"levels": [], "num_codes": 1},
                {"levels": [2] * 9, "num_codes": 512}):  # fmt: skip
        assert not all(holds(rule, env | bad) is not False for rule in rules), bad
    with pytest.raises(ValueError, match="product of levels"):
        FSQ(levels=[8, 5], num_codes=41)
    with pytest.raises(ValueError, match="at least 2 levels"):
        FSQ(levels=[8, 1], num_codes=8)
    with pytest.raises(ValueError, match="quantize 4 channels, found 3"):
        make_fsq()(torch.zeros(1, 3, 2, 2))


def test_quantizers_are_plain_modules() -> None:
    for make, *_ in QUANTIZERS.values():
        assert isinstance(make(), nn.Module)
