"""The denoisers: the shape of ``x`` in and out, the timestep and class conditioning with its null condition,
DiT's adaLN-Zero start (identity blocks, zero output, gradients at the last layer), the contract rules against
what builds, fx leaf calls, and a few steps of learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from blocks.denoisers import (
    Conditioning,
    DiTBlock,
    DiTDenoiser,
    MLPDenoiser,
    UNetDenoiser,
    timestep_embedding,
)
from dagcv.compiler import compile_spec
from dagcv.registry import iter_live
from dagcv.rules import holds
from dagcv.spec import parse_spec_text

DENOISERS = (UNetDenoiser, DiTDenoiser, MLPDenoiser)


def make_unet(**kwargs) -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(**{"in_channels": 2, "channels": 8, "channel_mults": [1, 2], "groups": 4, **kwargs})


def make_dit(**kwargs) -> DiTDenoiser:
    torch.manual_seed(0)
    sizes = {"in_channels": 2, "height": 6, "width": 10, "patch_size": 2, "hidden": 16, "depth": 2, "heads": 2}
    return DiTDenoiser(**(sizes | kwargs))


def make_mlp(**kwargs) -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(**{"features": 3, "hidden": [16, 16], "time_dim": 8, **kwargs})


# name: (maker, shape of x)
MODELS = {"unet": (make_unet, (2, 6, 10)), "dit": (make_dit, (2, 6, 10)), "mlp": (make_mlp, (3,))}


def batch(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator), torch.randint(0, 1000, (n,), generator=generator)


def perturb_zero_weights(module: nn.Module, std: float = 0.1) -> None:
    """Give every all-zero parameter (the zero-initialised output layers and modulations) random values."""
    torch.manual_seed(2)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.normal_(0, std)


# ---------------------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (make_unet(in_channels=3, channel_mults=[1]), (3, 5, 7)),  # one resolution: any size
        (make_unet(in_channels=1, channel_mults=[1, 2, 2], res_blocks=2, dropout=0.1), (1, 12, 20)),
        (make_unet(attention=False), (2, 2, 6)),
        (make_dit(in_channels=3, height=5, width=7, patch_size=1), (3, 5, 7)),
        (make_dit(mlp_ratio=1.5), (2, 6, 10)),
        (make_mlp(features=2), (2,)),
        (make_mlp(features=20, hidden=[7]), (20,)),
    ],
)
def test_output_has_the_shape_of_x(model: nn.Module, shape: tuple[int, ...]) -> None:
    x, t = batch(shape, n=3)
    for training in (False, True):
        out = model.train(training)(x, t)
        assert out.shape == x.shape and out.dtype == torch.float32


def test_unet_refuses_sides_that_do_not_halve() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        make_unet()(*batch((2, 6, 9)))


def test_dit_refuses_an_image_of_another_size() -> None:
    with pytest.raises(ValueError, match="built for 2×6×10"):
        make_dit()(*batch((2, 6, 12)))


# ---------------------------------------------------------------------------------------------------------------
# Conditioning


def test_timestep_embedding_is_cos_then_sin_over_geometric_frequencies() -> None:
    t = torch.tensor([0, 7, 999])
    embedding = timestep_embedding(t, 7)
    frequencies = torch.tensor([10000 ** (-i / 3) for i in range(3)])
    angles = t[:, None].float() * frequencies
    expected = torch.cat([angles.cos(), angles.sin(), torch.zeros(3, 1)], dim=1)
    torch.testing.assert_close(embedding, expected)
    assert not torch.allclose(timestep_embedding(t, 8)[1], timestep_embedding(t, 8)[2])


def test_label_minus_one_and_no_label_select_the_null_row() -> None:
    condition = Conditioning(dim=4, frequency_dim=4, num_classes=3)
    t = torch.tensor([5, 5, 5])
    assert condition.class_index(t, torch.tensor([2, -1, 0])).tolist() == [2, 3, 0]
    assert condition.class_index(t, None).tolist() == [3, 3, 3]
    assert condition.classes.num_embeddings == 4
    with pytest.raises(IndexError):
        condition(t, torch.tensor([0, 3, -2]))  # not a class, not the null label


@pytest.mark.parametrize("name", MODELS)
def test_labels_condition_and_minus_one_is_the_null_condition(name: str) -> None:
    make, shape = MODELS[name]
    model = make(num_classes=3).eval()
    perturb_zero_weights(model)
    x, t = batch(shape, n=1)
    x, t = x.expand(4, *shape), t.expand(4)
    out = model(x, t, torch.tensor([0, 1, 2, -1]))
    assert torch.equal(out[3], model(x, t)[3])
    for a in range(4):
        for b in range(a):
            assert (out[a] - out[b]).abs().max() > 1e-4, f"labels {a} and {b} give the same output"


@pytest.mark.parametrize("name", MODELS)
def test_an_unconditional_model_refuses_labels(name: str) -> None:
    make, shape = MODELS[name]
    x, t = batch(shape)
    with pytest.raises(ValueError, match="without num_classes"):
        make()(x, t, torch.zeros(4, dtype=torch.int64))


def test_unet_output_depends_on_the_timestep() -> None:
    model = make_unet().eval()
    assert not model.head[-1].weight.any()  # zero-initialised output conv
    x, _ = batch((2, 6, 10), n=1)
    assert not model(x, torch.tensor([10])).any()
    perturb_zero_weights(model.head[-1])
    early, late = model(x, torch.tensor([10])), model(x, torch.tensor([900]))
    assert (early - late).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# DiT's adaLN-Zero start


def test_a_fresh_dit_block_is_exactly_the_identity() -> None:
    torch.manual_seed(0)
    block = DiTBlock(hidden=32, heads=4, mlp_ratio=4.0)
    x, c = torch.randn(3, 7, 32) * 5, torch.randn(3, 32)
    assert torch.equal(block(x, c), x)
    perturb_zero_weights(block)  # the identity comes from the zero gates, not from dead branches
    assert not torch.equal(block(x, c), x)


def test_a_fresh_dit_outputs_zeros_yet_its_last_layer_learns() -> None:
    model = make_dit(num_classes=3)
    x, t = batch((2, 6, 10))
    out = model(x, t, torch.tensor([0, 1, 2, -1]))
    assert torch.equal(out, torch.zeros_like(x))
    (out * torch.randn_like(out)).sum().backward()
    assert model.to_patches.weight.grad.abs().sum() > 0
    # Behind the zero layer everything gets exactly zero gradient (adaLN-Zero), but a gradient all the same.
    assert all(p.grad is not None for p in model.parameters())


def test_dit_patches_go_back_where_they_came_from() -> None:
    """With the output linear copying each patch's pixels, unpatchify must rebuild the image exactly."""
    model = make_dit(in_channels=2, height=4, width=6, patch_size=2)
    x, _ = batch((2, 4, 6), n=2)
    p, c = 2, 2
    patches = x.reshape(2, c, 2, p, 3, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, p * p * c)
    assert torch.equal(model.unpatchify(patches), x)


# ---------------------------------------------------------------------------------------------------------------
# Contracts: a spec that checks builds


def contract(name: str):
    return next(c for c, _ in iter_live() if c.name == name)


RULE_CASES = [  # block, params, input symbols, builds?
    ("unet_denoiser", {"channels": 8, "channel_mults": [1, 2, 2], "groups": 4}, {"H": 28, "W": 12}, True),
    ("unet_denoiser", {"channels": 8, "channel_mults": [1, 2, 2, 2], "groups": 4}, {"H": 28, "W": 16}, False),
    ("unet_denoiser", {"channels": 12, "channel_mults": [1, 2], "groups": 8}, {"H": 4, "W": 4}, False),
    ("unet_denoiser", {"channels": 4, "channel_mults": [1, 3], "groups": 4}, {"H": 6, "W": 2}, True),
    ("unet_denoiser", {"channels": 6, "channel_mults": [1], "groups": 3}, {"H": 5, "W": 7}, True),
    ("unet_denoiser", {"channels": 8, "channel_mults": [], "groups": 4}, {"H": 4, "W": 4}, False),
    ("dit_denoiser", {"patch_size": 3, "hidden": 12, "heads": 3, "depth": 1}, {"H": 9, "W": 6}, True),
    ("dit_denoiser", {"patch_size": 3, "hidden": 12, "heads": 3, "depth": 1}, {"H": 9, "W": 8}, False),
    ("dit_denoiser", {"patch_size": 1, "hidden": 12, "heads": 5, "depth": 1}, {"H": 3, "W": 3}, False),
    ("mlp_denoiser", {"hidden": [4], "time_dim": 3}, {"D": 2}, True),
    ("mlp_denoiser", {"hidden": [], "time_dim": 3}, {"D": 2}, False),
]


def builds_and_runs(name: str, params: dict, symbols: dict) -> bool:
    try:
        if name == "mlp_denoiser":
            model, x = MLPDenoiser(features=symbols["D"], **params), torch.randn(2, symbols["D"])
        else:
            x = torch.randn(2, 1, symbols["H"], symbols["W"])
            image = {"height": symbols["H"], "width": symbols["W"]} if name == "dit_denoiser" else {}
            model = (DiTDenoiser if name == "dit_denoiser" else UNetDenoiser)(in_channels=1, **image, **params)
        model(x, torch.tensor([1, 2]))
    except (ValueError, RuntimeError):
        return False
    return True


@pytest.mark.parametrize(("name", "params", "symbols", "builds"), RULE_CASES)
def test_rules_accept_exactly_what_builds(name: str, params: dict, symbols: dict, builds: bool) -> None:
    c = contract(name)
    env = {p.name: p.default for p in c.params} | params | symbols | {"in_channels": 1, "features": symbols.get("D")}
    verdicts = {rule: holds(rule, env) for rule in c.requires}
    assert all(v is not False for v in verdicts.values()) == builds, verdicts
    assert builds_and_runs(name, params, symbols) == builds


def test_contracts() -> None:
    for name in ("unet_denoiser", "dit_denoiser"):
        c = contract(name)
        assert c.family == "denoiser"
        assert [(p.name, p.type) for p in c.inputs] == [("x", "Tensor[B, C, H, W]"), ("t", "Timesteps[B]"),
                                                         ("y", "Labels[B]?")]  # fmt: skip
        assert [(p.name, p.type) for p in c.outputs] == [("out", "Tensor[B, C, H, W]")]
    assert contract("dit_denoiser").infer == {"in_channels": "C", "height": "H", "width": "W"}
    assert contract("mlp_denoiser").infer == {"features": "D"}


# ---------------------------------------------------------------------------------------------------------------
# fx: a leaf call in a traced graph and in a compiled spec


class _Caller(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.block(x, t, y) * 2


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, DENOISERS) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("name", MODELS)
def test_each_denoiser_is_an_fx_leaf(name: str) -> None:
    make, shape = MODELS[name]
    model = make(num_classes=3).eval()
    perturb_zero_weights(model)
    caller = _Caller(model)
    gm = fx.GraphModule(caller, _LeafTracer().trace(caller))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["block"]
    x, t = batch(shape)
    y = torch.tensor([0, 2, -1, 1])
    assert torch.equal(gm(x, t, y), caller(x, t, y))


SPEC = """\
dagcv: 1
name: tiny_diffusion
inputs:
  image: Image[B, 1, 8, 8]
  label: Labels[B]
blocks:
  noising:  {type: cosine_schedule, in: image, steps: 10, prediction: v}
  dropped:  {type: condition_dropout, in: label, p: 0.5}
  denoiser: {type: unet_denoiser, in: {x: noising.x_t, t: noising.t, y: dropped}, channels: 8, groups: 4,
             channel_mults: [1, 2], num_classes: 10}
  loss:     {type: diffusion_loss, in: {prediction: denoiser, target: noising.target, weight: noising.weight}}
outputs:
  prediction: denoiser
  loss: loss
"""


def test_a_spec_wires_schedule_dropout_denoiser_and_loss() -> None:
    model = compile_spec(parse_spec_text(SPEC, "tiny_diffusion.yaml")).module
    calls = [n.target for n in model.graph_module("train").graph.nodes if n.op == "call_module"]
    assert calls == ["noising", "dropped", "denoiser", "loss"]
    torch.manual_seed(0)
    out = model.train()(torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]))
    assert out["prediction"].shape == (4, 1, 8, 8) and out["loss"].shape == ()
    out["loss"].backward()
    assert model.denoiser.head[-1].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("name", MODELS)
def test_a_few_steps_fit_a_fixed_regression(name: str) -> None:
    """The noise of a fixed batch, conditioned on t and y: the loss starts at E[ε²] ≈ 1 (zero output) and falls."""
    make, shape = MODELS[name]
    model = make(num_classes=3).train()
    x, t = batch(shape, n=8)
    y = torch.tensor([0, 1, 2, -1] * 2)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x, t, y), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isclose(losses[0], target.pow(2).mean().item(), rel_tol=1e-6)
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
