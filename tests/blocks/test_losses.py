"""Losses against hand computation."""

from __future__ import annotations

import math

import torch

from blocks.heads import MLPHead
from blocks.layers import MLP
from blocks.losses import CrossEntropy, MSELoss


def test_cross_entropy_of_uniform_logits_is_log_k() -> None:
    loss = CrossEntropy()(torch.zeros(4, 5), torch.tensor([0, 1, 2, 4]))
    assert math.isclose(loss.item(), math.log(5), rel_tol=1e-6)


def test_cross_entropy_by_hand_with_smoothing_and_class_weights() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weights, eps = torch.tensor([1.0, 2.0, 0.5]), 0.1
    log_p = logits.log_softmax(1)
    smoothed = (1 - eps) * torch.nn.functional.one_hot(target, 3) + eps / 3
    # PyTorch's convention: each sample's terms weighted per class, normalised by the weights of the targets.
    per_sample = -(smoothed * weights * log_p).sum(1)
    expected = per_sample.sum() / weights[target].sum()
    loss = CrossEntropy(label_smoothing=eps, class_weights=[1.0, 2.0, 0.5])(logits, target)
    torch.testing.assert_close(loss, expected)


def test_class_weights_follow_the_module_but_stay_out_of_the_state_dict() -> None:
    loss = CrossEntropy(class_weights=[1.0, 2.0])
    assert "class_weights" not in loss.state_dict()
    assert loss.to(torch.float64).class_weights.dtype == torch.float64


def test_mse_loss_mean_and_sum() -> None:
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 6.0]])
    assert MSELoss()(a, b).item() == (1 + 4 + 0 + 4) / 4
    assert MSELoss(reduction="sum")(a, b).item() == 9.0


def test_mlp_head_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    head, x = MLPHead(in_features=12, hidden=(64,), num_classes=3, dropout=0.5), torch.randn(2, 3, 4)
    assert torch.equal(head.eval()(x), head.eval()(x))
    assert not torch.equal(head.train()(x), head.eval()(x))


def test_mlp_activation_is_applied_between_layers() -> None:
    torch.manual_seed(0)
    mlp, x = MLP(in_features=3, hidden=(5,), out_features=2, activation="tanh"), torch.randn(4, 3)
    first, last = mlp.layers
    torch.testing.assert_close(mlp(x), last(torch.tanh(first(x))), rtol=0, atol=0)
