"""Losses: predictions and targets in, a scalar to minimise out. They run in training mode by default.

Classification and segmentation share ``cross_entropy`` and ``dice_loss`` (``*S`` binds the spatial dims, none
for classification); detection uses ``sigmoid_focal_loss`` for classes and ``l1_loss``, ``smooth_l1_loss`` and
``giou_loss`` for boxes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from dagcv.registry import Fraction, register_block

Reduction = Literal["mean", "sum"]


@register_block(
    "cross_entropy",
    family="loss",
    inputs={"logits": "Logits[B, K, *S]", "target": "Labels[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class CrossEntropy(nn.Module):
    """Mean cross-entropy between class logits and integer labels, per sample or per pixel (``F.cross_entropy``).

    ``loss = -Σ_i w[y_i] log softmax(x_i)[y_i] / Σ_i w[y_i]`` over every sample (and pixel) ``i`` whose label
    is not ``ignore_index``; with label smoothing ``ε`` the target is ``(1 - ε)·onehot(y_i) + ε/K``. Logits are
    ``B×K`` for classification and ``B×K×H×W`` (any number of trailing dims) for segmentation, with labels
    ``B`` or ``B×H×W``.

    Args:
        label_smoothing: mass taken from the target class and spread uniformly over all classes, in [0, 1).
        class_weights: one rescaling weight per class (length ``K``); ``None`` weighs classes equally.
        ignore_index: a label value that contributes neither to the loss nor to its normaliser (void pixels).

    Example:
        >>> round(CrossEntropy()(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item(), 4)  # log(3)
        1.0986
        >>> round(CrossEntropy()(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, -100]]])).item(), 4)
        1.0986
    """

    class_weights: Tensor | None

    def __init__(
        self, *, label_smoothing: Fraction = 0.0, class_weights: list[float] | None = None, ignore_index: int = -100
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        # A buffer follows the module across devices; not persistent, since it is configuration, not state.
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}"


@register_block(
    "mse_loss",
    family="loss",
    inputs={"input": "Tensor[B, *F]", "target": "Tensor[B, *F]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class MSELoss(nn.Module):
    """Squared error between two tensors of the same shape, averaged or summed over every element.

    Args:
        reduction: ``"mean"`` over all elements, or their ``"sum"``.

    Example:
        >>> MSELoss()(torch.zeros(2, 3), torch.ones(2, 3)).item()
        1.0
    """

    def __init__(self, *, reduction: Literal["mean", "sum"] = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}"


@register_block(
    "dice_loss",
    family="loss",
    inputs={"logits": "Logits[B, K, *S]", "target": "Labels[B, *S]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class DiceLoss(nn.Module):
    """Soft Dice loss between class probabilities and integer labels (segmentation).

    With ``p = softmax(logits)`` over the ``K`` classes and ``t`` the one-hot labels, each sample ``b`` and class
    ``k`` gets ``Dice[b, k] = (2 Σ_s p·t + smooth) / (Σ_s p + Σ_s t + smooth)``, sums over the pixels ``s``; the
    loss is ``1 - mean_{b,k} Dice[b, k]``. ``smooth`` keeps a class absent from both prediction and target at
    Dice 1 and the gradient finite.

    Args:
        smooth: added to the numerator and the denominator of every Dice ratio.

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # 1×2×1×2, confident and right
        >>> round(DiceLoss()(logits, torch.tensor([[[0, 1]]])).item(), 4)
        0.0
    """

    def __init__(self, *, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        batch, classes = logits.shape[:2]
        probs = logits.softmax(dim=1).reshape(batch, classes, -1)
        onehot = F.one_hot(target.reshape(batch, -1), classes).transpose(1, 2).to(probs.dtype)
        overlap = (probs * onehot).sum(-1)
        total = probs.sum(-1) + onehot.sum(-1)
        dice = (2 * overlap + self.smooth) / (total + self.smooth)
        return 1 - dice.mean()

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}"


@register_block(
    "sigmoid_focal_loss",
    family="loss",
    inputs={"logits": "Logits[B, *F]", "target": "Tensor[B, *F]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class SigmoidFocalLoss(nn.Module):
    """Focal loss of independent sigmoid scores against 0/1 targets (``torchvision.ops.sigmoid_focal_loss``).

    With ``p = σ(x)``, ``p_t = p·t + (1 - p)(1 - t)`` and ``α_t = α·t + (1 - α)(1 - t)``, each element costs
    ``α_t (1 - p_t)^γ · BCE(x, t)``; the loss is their mean or sum. ``γ = 0, α = -1`` is plain binary
    cross-entropy. RetinaNet sums and divides by the number of foreground anchors.

    Args:
        alpha: weight of the positives in [0, 1] (negatives get ``1 - alpha``); -1 weighs both alike.
        gamma: focusing exponent: how much the well-classified elements are down-weighted.
        reduction: ``"mean"`` over all elements, or their ``"sum"``.

    Example:
        >>> loss = SigmoidFocalLoss(alpha=-1, gamma=0.0)(torch.zeros(2, 3), torch.ones(2, 3))
        >>> round(loss.item(), 4)  # log(2)
        0.6931
    """

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction}"


@register_block(
    "l1_loss",
    family="loss",
    inputs={"input": "Tensor[B, *F]", "target": "Tensor[B, *F]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class L1Loss(nn.Module):
    """Absolute error ``|x - y|`` between two tensors of the same shape (box offsets), averaged or summed.

    Args:
        reduction: ``"mean"`` over all elements, or their ``"sum"``.

    Example:
        >>> L1Loss()(torch.zeros(2, 4), torch.full((2, 4), -2.0)).item()
        2.0
    """

    def __init__(self, *, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}"


@register_block(
    "smooth_l1_loss",
    family="loss",
    inputs={"input": "Tensor[B, *F]", "target": "Tensor[B, *F]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class SmoothL1Loss(nn.Module):
    """Huber-like error between two tensors of the same shape (box offsets), averaged or summed.

    Each element costs ``0.5 (x - y)² / β`` where ``|x - y| < β`` and ``|x - y| - 0.5 β`` elsewhere
    (``F.smooth_l1_loss``); ``β = 0`` is the L1 loss. Faster R-CNN's box heads use ``β = 1/9``.

    Args:
        beta: where the quadratic part turns linear (non-negative).
        reduction: ``"mean"`` over all elements, or their ``"sum"``.

    Example:
        >>> SmoothL1Loss(beta=1.0)(torch.zeros(2), torch.tensor([0.5, 3.0])).item()  # (0.125 + 2.5) / 2
        1.3125
    """

    def __init__(self, *, beta: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.beta = beta
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, beta=self.beta, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction}"


@register_block(
    "giou_loss",
    family="loss",
    inputs={"input": "Tensor[N, 4]", "target": "Tensor[N, 4]"},
    outputs={"loss": "Loss[]"},
    default_mode="train",
)
class GIoULoss(nn.Module):
    """Generalized-IoU loss over matched pairs of xyxy boxes (``torchvision.ops.generalized_box_iou_loss``).

    For boxes ``a`` and ``b`` with enclosing box ``c``: ``GIoU = IoU - (|c| - |a ∪ b|) / |c|`` and each pair
    costs ``1 - GIoU``, in [0, 2]; the loss is the mean or sum over the ``N`` pairs. Row ``i`` of ``input`` is
    compared with row ``i`` of ``target`` only.

    Args:
        reduction: ``"mean"`` over the pairs, or their ``"sum"``.
        eps: added to the union and the enclosing area to keep the ratios finite.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> GIoULoss()(boxes, boxes).item(), round(GIoULoss()(boxes, boxes + 4).item(), 4)  # 1 + 28/36
        (0.0, 1.7778)
    """

    def __init__(self, *, reduction: Reduction = "mean", eps: float = 1e-7) -> None:
        super().__init__()
        self.reduction = reduction
        self.eps = eps

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return generalized_box_iou_loss(input, target, reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}, eps={self.eps}"
