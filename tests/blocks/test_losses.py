"""Losses against hand computation."""

from __future__ import annotations

import math

import torch

from blocks.heads import MLPHead
from blocks.layers import MLP
from blocks.losses import CrossEntropy, DiceLoss, GIoULoss, L1Loss, MSELoss, SigmoidFocalLoss, SmoothL1Loss


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


def test_cross_entropy_per_pixel_skips_ignored_pixels() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :3] = 255
    weights = torch.tensor([0.5, 1.0, 2.0])
    # Every kept pixel is one sample of the classification formula; ignored pixels leave the normaliser too.
    keep = target != 255
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1)[keep]  # pixels × classes
    labels = target[keep]
    expected = -(weights[labels] * log_p[torch.arange(len(labels)), labels]).sum() / weights[labels].sum()
    loss = CrossEntropy(class_weights=weights.tolist(), ignore_index=255)(logits, target)
    torch.testing.assert_close(loss, expected)


def test_dice_loss_by_hand() -> None:
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]])  # 1×2×2×2
    target = torch.tensor([[[0, 1], [1, 1]]])
    p1 = [1 / (1 + math.exp(2)), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(1))]
    t1 = [0, 1, 1, 1]
    p0, t0 = [1 - p for p in p1], [1 - t for t in t1]
    smooth = 0.5

    def dice(p: list[float], t: list[float]) -> float:
        return (2 * sum(a * b for a, b in zip(p, t, strict=True)) + smooth) / (sum(p) + sum(t) + smooth)

    expected = 1 - (dice(p0, t0) + dice(p1, t1)) / 2
    assert math.isclose(DiceLoss(smooth=smooth)(logits, target).item(), expected, rel_tol=1e-6)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_averages_over_samples() -> None:
    target = torch.tensor([[0, 1, 2], [2, 2, 2]])
    perfect = 50.0 * torch.nn.functional.one_hot(target, 3).permute(0, 2, 1).float()
    assert DiceLoss(smooth=1e-6)(perfect, target).item() < 1e-5
    # Sample 1 lacks classes 0 and 1: with smooth = 1 they count as Dice 1, not 0.
    assert DiceLoss(smooth=1.0)(perfect, target).item() < 1e-5


def test_sigmoid_focal_loss_by_hand_and_against_torchvision() -> None:
    from torchvision.ops import sigmoid_focal_loss

    x, t = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for xi, ti in zip(x.tolist(), t.tolist(), strict=True):
        p = 1 / (1 + math.exp(-xi))
        p_t = p if ti else 1 - p
        alpha_t = alpha if ti else 1 - alpha
        expected += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
    loss = SigmoidFocalLoss(alpha=alpha, gamma=gamma, reduction="sum")(x, t)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    torch.manual_seed(0)
    x, t = torch.randn(4, 7), (torch.rand(4, 7) > 0.7).float()
    torch.testing.assert_close(
        SigmoidFocalLoss(alpha=0.5, gamma=1.5)(x, t), sigmoid_focal_loss(x, t, 0.5, 1.5, reduction="mean")
    )


def test_l1_and_smooth_l1_by_hand() -> None:
    x, y = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[0.1, 3.0], [2.0, 0.0]])
    diffs = [0.1, 2.0, 0.0, 1.0]
    assert math.isclose(L1Loss()(x, y).item(), sum(diffs) / 4, rel_tol=1e-6)
    assert math.isclose(L1Loss(reduction="sum")(x, y).item(), sum(diffs), rel_tol=1e-6)
    beta = 0.5
    huber = [0.5 * d * d / beta if d < beta else d - 0.5 * beta for d in diffs]
    assert math.isclose(SmoothL1Loss(beta=beta)(x, y).item(), sum(huber) / 4, rel_tol=1e-6)
    assert math.isclose(SmoothL1Loss(beta=beta, reduction="sum")(x, y).item(), sum(huber), rel_tol=1e-6)


def test_giou_loss_by_hand_over_matched_pairs() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    # Pair 0: intersection 1, union 7, enclosing 3×3: GIoU = 1/7 - 2/9. Pair 1: the same box, GIoU = 1.
    first = 1 - (1 / 7 - 2 / 9)
    assert math.isclose(GIoULoss(reduction="sum")(boxes, target).item(), first, rel_tol=1e-6)
    assert math.isclose(GIoULoss()(boxes, target).item(), first / 2, rel_tol=1e-6)


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
