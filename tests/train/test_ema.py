"""The weight average every loop can ask for: the EMA formula with and without warm-up, what it copies instead
of averaging, and swapping the average in for sampling."""

from __future__ import annotations

import torch
from torch import nn

from dagcv.train.ema import WeightAverage


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_the_average_follows_the_formula_with_warm_up() -> None:
    net = _net()
    ema = WeightAverage(net, decay=0.99, warmup=True)
    expected = net[0].weight.detach().clone()
    for n in range(3):
        with torch.no_grad():
            net[0].weight.add_(torch.randn_like(net[0].weight))
        decay = min(0.99, (1 + n) / (10 + n))  # 0.1, 0.18..., 0.25: early weights barely count
        expected = decay * expected + (1 - decay) * net[0].weight.detach()
        ema.update(net)
    torch.testing.assert_close(ema.average["0.weight"], expected)
    assert ema.updates == 3


def test_statistics_and_frozen_weights_are_copied_not_averaged() -> None:
    net = _net()
    net[0].bias.requires_grad_(False)  # a frozen weight (an earlier stage's) is state, not averaged
    ema = WeightAverage(net, decay=0.5, warmup=False)
    net.train()(torch.randn(8, 3))  # moves the running statistics and counts a batch
    with torch.no_grad():
        net[0].bias.add_(1.0)
        net[0].weight.add_(1.0)
    ema.update(net)
    assert torch.equal(ema.average["1.running_mean"], net[1].running_mean)
    assert ema.average["1.num_batches_tracked"].item() == 1
    assert torch.equal(ema.average["0.bias"], net[0].bias)
    torch.testing.assert_close(ema.average["0.weight"], net[0].weight.detach() - 0.5)


def test_swapping_the_average_in_restores_the_raw_weights_afterwards() -> None:
    net = _net()
    ema = WeightAverage(net, decay=0.5, warmup=False)
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.mul_(3)
    ema.update(net)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swapped_into(net):
        torch.testing.assert_close(net[0].weight.detach(), raw["0.weight"] * 2)  # halfway from 1× to 3×
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in trained)
    copy = WeightAverage(_net(), decay=0.5)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 1 and torch.equal(copy.average["0.weight"], ema.average["0.weight"])
