"""The autoregressive priors: causality (and no blind spot), filling unknown codes, and learning a small set of
code grids."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.priors import PixelCNNPrior, TransformerPrior, fill_unknown
from dagcv.registry import iter_live

V, H, W = 8, 4, 5


def make_pixelcnn() -> nn.Module:
    torch.manual_seed(0)
    return PixelCNNPrior(num_codes=V, hidden=16, layers=4, kernel=3)


def make_transformer() -> nn.Module:
    torch.manual_seed(0)
    return TransformerPrior(num_codes=V, height=H, width=W, d_model=16, heads=2, layers=2)


PRIORS = {"pixelcnn_prior": make_pixelcnn, "transformer_prior": make_transformer}


def grid(batch: int = 2, seed: int = 1) -> Tensor:
    torch.manual_seed(seed)
    return torch.randint(0, V, (batch, H, W))


def changed(codes: Tensor, position: int) -> Tensor:
    """``codes`` with the code at raster ``position`` of the first grid replaced by another one."""
    out = codes.clone()
    out.view(len(out), -1)[0, position] = (out.view(len(out), -1)[0, position] + 1) % V
    return out


# ---------------------------------------------------------------------------------------------------------------
# Causality


@pytest.mark.parametrize("name", PRIORS)
def test_logits_at_a_position_depend_on_every_earlier_code_and_no_later_one(name: str) -> None:
    """Each code, changed alone, moves the logits of the later positions (no blind spot) and of no other."""
    prior, codes = PRIORS[name]().eval(), grid()
    with torch.no_grad():
        base = prior(codes)["logits"][0].flatten(1)
        for position in range(H * W):
            moved = (prior(changed(codes, position))["logits"][0].flatten(1) - base).abs().amax(0) > 0
            assert not moved[: position + 1].any(), f"a code at {position} moves logits at or before it"
            assert moved[position + 1 :].all(), f"a code at {position} does not reach every later position"


@pytest.mark.parametrize("name", PRIORS)
def test_known_codes_take_one_pass_and_come_back_unchanged(name: str) -> None:
    prior, codes = PRIORS[name]().eval(), grid()
    out = prior(codes)
    assert list(out) == ["logits", "codes"]
    assert out["logits"].shape == (2, V, H, W) and out["codes"] is codes
    loss = F.cross_entropy(out["logits"], out["codes"])
    assert math.isfinite(loss.item())


# ---------------------------------------------------------------------------------------------------------------
# Filling unknown codes


@pytest.mark.parametrize("name", PRIORS)
def test_sampling_from_all_unknown_is_in_range_and_seeded(name: str) -> None:
    prior = PRIORS[name]().eval()
    unknown = torch.full((3, H, W), -1)
    torch.manual_seed(7)
    first = prior(unknown)
    torch.manual_seed(7)
    second = prior(unknown)
    assert first["codes"].shape == (3, H, W) and first["codes"].dtype == torch.int64
    assert int(first["codes"].min()) >= 0 and int(first["codes"].max()) < V
    assert torch.equal(first["codes"], second["codes"]) and torch.equal(first["logits"], second["logits"])
    assert (unknown == -1).all()  # the input is not filled in place
    torch.manual_seed(8)
    assert not torch.equal(prior(unknown)["codes"], first["codes"])


@pytest.mark.parametrize("name", PRIORS)
def test_partly_known_codes_are_kept_and_only_unknown_ones_drawn(name: str) -> None:
    prior, codes = PRIORS[name]().eval(), grid()
    partial = codes.clone()
    partial[0, 2:] = -1  # the bottom rows of the first grid
    partial[1, :, 3] = -1  # one column of the second, with known codes after each unknown one
    out = prior(partial)["codes"]
    known = partial >= 0
    assert torch.equal(out[known], codes[known])
    assert (out >= 0).all() and (out < V).all()


@pytest.mark.parametrize("name", PRIORS)
def test_temperature_zero_takes_the_most_likely_codes(name: str) -> None:
    prior = PRIORS[name]().eval()
    prior.temperature = 0.0
    out = prior(torch.full((2, H, W), -1))
    assert torch.equal(out["codes"], prior(out["codes"])["logits"].argmax(1))


def test_fill_unknown_draws_one_position_per_pass_in_raster_order() -> None:
    calls = []

    def logits_of(codes: Tensor) -> Tensor:
        calls.append(codes.clone())
        logits = torch.full((codes.shape[0], 3, *codes.shape[1:]), -1e9)
        logits[:, 2] = 0  # always code 2
        return logits

    codes = torch.tensor([[[0, -1], [-1, 1]], [[-1, 1], [1, 1]]])
    out = fill_unknown(logits_of, codes, temperature=1.0)
    assert out["codes"].tolist() == [[[0, 2], [2, 1]], [[2, 1], [1, 1]]]
    # positions 0, 1 and 2 are unknown somewhere: three passes; unknown codes not yet drawn read as 0
    assert [c.tolist() for c in calls] == [
        [[[0, 0], [0, 1]], [[0, 1], [1, 1]]],
        [[[0, 0], [0, 1]], [[2, 1], [1, 1]]],
        [[[0, 2], [0, 1]], [[2, 1], [1, 1]]],
    ]


@pytest.mark.parametrize("name", PRIORS)
def test_codes_outside_the_vocabulary_are_refused(name: str) -> None:
    prior = PRIORS[name]()
    for bad in (-2, V):
        with pytest.raises(ValueError, match=rf"codes must lie in \[0, {V}\) or be -1"):
            prior(torch.full((1, H, W), bad))


def test_transformer_prior_refuses_another_grid() -> None:
    with pytest.raises(ValueError, match="built for a 4×5 grid"):
        make_transformer()(torch.zeros(1, 5, 4, dtype=torch.int64))


def test_contracts_infer_the_vocabulary_and_the_transformers_grid() -> None:
    contracts = {c.name: c for c, _ in iter_live()}
    assert contracts["pixelcnn_prior"].infer == {"num_codes": "V"}
    assert contracts["transformer_prior"].infer == {"num_codes": "V", "height": "H", "width": "W"}
    for name in PRIORS:
        contract = contracts[name]
        assert contract.family == "prior"
        assert [(p.name, p.type) for p in contract.inputs] == [("codes", "Codes[B, H, W] vocab V")]
        assert [(p.name, p.type) for p in contract.outputs] == [
            ("logits", "Logits[B, num_codes, H, W]"),
            ("codes", "Codes[B, H, W] vocab num_codes"),
        ]


# ---------------------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("name", PRIORS)
def test_a_tiny_prior_learns_a_fixed_set_of_grids(name: str) -> None:
    prior, data = PRIORS[name]().train(), grid(batch=8, seed=3)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(prior(data)["logits"], data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = F.cross_entropy(prior.eval()(data)["logits"], data).item()
    assert final < 0.5 * math.log(V), f"cross-entropy {final:.3f} after 100 steps (log V = {math.log(V):.3f})"
