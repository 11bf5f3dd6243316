"""FCOS (Tian et al., 2019): an anchor-free one-stage detector, as torchvision's ``FCOS`` computes it.

Every location of every pyramid level is a point that predicts a class score, its distances to the four sides
of a box (``l, t, r, b``, in units of the level's stride) and a centre-ness logit. torchvision represents each
point as a square anchor one stride wide (one anchor per location, sizes 8 to 128 on P3-P7), so the anchors
come from ``anchor_generator`` and the boxes decode with ``BoxLinearCoder``. In a spec::

    head:        {type: fcos_head, in: neck, num_classes: 91}               # cls_logits, bbox_regression, bbox_ctrness
    loss:        {type: fcos_loss, in: {..., anchors: anchors, features: neck, targets: transform.targets}}
    postprocess: {type: fcos_postprocess, in: {..., image_sizes: transform.image_sizes}}

The head keeps torchvision's submodule names (``classification_head``, ``regression_head``), so a torchvision
``head.*`` state_dict loads into a node named ``head`` unchanged.
"""

from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Ge, Le
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSRegressionHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from blocks.detection.postprocess import Candidates, DensePostprocess
from dagcv.registry import Count, Fraction, Size, register_block

_HEAD_OUTPUTS = {"cls_logits": "Logits", "bbox_regression": "Tensor", "bbox_ctrness": "Logits"}


@register_block(
    "fcos_head",
    family="head",
    inputs={"features": "FeaturePyramid[B, C]"},
    outputs=_HEAD_OUTPUTS,
    infer={"in_channels": "C"},
    requires={"in_channels % 32 == 0": "its GroupNorm layers have 32 groups"},
    param_count="18 * num_convs * in_channels * in_channels + 9 * in_channels * (num_classes + 5)",
)
class FCOSHead(nn.Module):
    """FCOS's shared head: per point, class logits, ``l, t, r, b`` regression (ReLU) and a centre-ness logit.

    Two towers of ``num_convs`` 3×3 convs with GroupNorm(32) and ReLU run over every level with shared weights.
    Outputs are concatenated over levels, finest first: ``cls_logits`` ``B×N×num_classes``,
    ``bbox_regression`` ``B×N×4`` and ``bbox_ctrness`` ``B×N×1``, with ``N`` the points of all levels.

    Args:
        in_channels: channels of every pyramid level (inferred from ``C``; a multiple of 32 for GroupNorm).
        num_classes: classes including the background, as in torchvision (91 for COCO).
        num_convs: conv layers in each tower.
        prior_probability: initial foreground probability of the class logits (focal-loss prior).

    Example:
        >>> from collections import OrderedDict
        >>> head = FCOSHead(in_channels=32, num_classes=3, num_convs=1)
        >>> out = head(OrderedDict([("p3", torch.zeros(2, 32, 8, 8)), ("p4", torch.zeros(2, 32, 4, 4))]))
        >>> [tuple(v.shape) for v in out.values()]
        [(2, 80, 3), (2, 80, 4), (2, 80, 1)]
    """

    def __init__(
        self, *, in_channels: Size = 256, num_classes: Size = 91, num_convs: Count = 4, prior_probability: float = 0.01
    ) -> None:
        super().__init__()
        # One anchor (point) per location: FCOS is anchor-free.
        self.classification_head = FCOSClassificationHead(
            in_channels, 1, num_classes, num_convs, prior_probability=prior_probability
        )
        self.regression_head = FCOSRegressionHead(in_channels, 1, num_convs)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        levels = list(features.values())
        cls_logits = self.classification_head(levels)
        bbox_regression, bbox_ctrness = self.regression_head(levels)
        return {"cls_logits": cls_logits, "bbox_regression": bbox_regression, "bbox_ctrness": bbox_ctrness}


def level_sizes(features: dict[str, Tensor]) -> list[int]:
    """Points per pyramid level (``H × W`` of each map; one anchor per location)."""
    return [f.shape[-2] * f.shape[-1] for f in features.values()]


def fcos_match(
    anchors: list[Tensor], targets: list[dict[str, Tensor]], num_per_level: list[int], center_sampling_radius: float
) -> list[Tensor]:
    """For each point of each image, the index of the ground-truth box it is responsible for, or -1.

    A point matches a box when all of these hold (FCOS with centre sampling, as torchvision does it):
    it lies within ``center_sampling_radius`` strides of the box centre (Chebyshev distance); it lies inside the
    box; and its largest side distance ``max(l, t, r, b)`` falls in its level's range ``(4s, 8s)`` for stride
    ``s``, the finest level having no lower bound and the coarsest no upper bound. Among several matching
    boxes the point takes the one of smallest area.
    """
    matched = []
    for points, target in zip(anchors, targets, strict=True):
        gt_boxes = target["boxes"]
        if gt_boxes.numel() == 0:
            matched.append(torch.full((points.size(0),), -1, dtype=torch.int64, device=points.device))
            continue
        gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # M×2
        centers = (points[:, :2] + points[:, 2:]) / 2  # N×2
        strides = points[:, 2] - points[:, 0]  # each anchor is one stride wide
        # Centre sampling: only points near the box centre are positives.
        match = (centers[:, None, :] - gt_centers[None, :, :]).abs().max(dim=2).values
        match = match < center_sampling_radius * strides[:, None]  # N×M
        # Distances from each point to the four sides of each box; all positive means the point is inside.
        x, y = centers[:, 0:1], centers[:, 1:2]  # N×1
        x0, y0, x1, y1 = (gt_boxes[None, :, k] for k in range(4))  # 1×M
        sides = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # N×M×4
        match &= sides.min(dim=2).values > 0
        # Scale assignment: each level regresses boxes of one size range.
        lower, upper = strides * 4, strides * 8
        lower[: num_per_level[0]] = 0
        upper[-num_per_level[-1] :] = float("inf")
        reach = sides.max(dim=2).values
        match &= (reach > lower[:, None]) & (reach < upper[:, None])
        # The smallest matching box wins: score 1e8 - area for a match, 0 otherwise.
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        scores = match.to(torch.float32) * (1e8 - areas[None, :])
        best, index = scores.max(dim=1)
        index[best < 1e-5] = -1
        matched.append(index)
    return matched


@register_block(
    "fcos_loss",
    family="loss",
    inputs={**_HEAD_OUTPUTS, "anchors": "Boxes", "features": "FeaturePyramid", "targets": "Targets"},
    outputs={"classification": "Loss[]", "bbox_regression": "Loss[]", "bbox_ctrness": "Loss[]"},
    default_mode="train",
)
class FCOSLoss(nn.Module):
    """FCOS's training losses, each summed over the batch and divided by the number of foreground points.

    Points are matched to boxes as :func:`fcos_match` describes. Then, with ``P`` the foreground points:

    - ``classification``: sigmoid focal loss (α 0.25, γ 2 by default) over every point and class, one-hot targets;
    - ``bbox_regression``: generalized IoU loss between decoded and matched boxes over ``P``;
    - ``bbox_ctrness``: binary cross-entropy of the centre-ness logit against
      ``sqrt(min(l, r) / max(l, r) · min(t, b) / max(t, b))`` of the matched box, over ``P``.

    ``features`` only gives the number of points per level (for the scale ranges); ``targets`` are in the
    frame of the transformed images.

    Args:
        center_sampling_radius: how far from a box centre (in strides of the point's level) a point may be a
            positive.
        focal_alpha: the focal loss's weight of positives (0.25, as torchvision's FCOS).
        focal_gamma: the focal loss's focusing exponent (2; 0 is plain binary cross-entropy).

    Example:
        >>> points = torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8]])  # two stride-8 points, one level
        >>> loss = FCOSLoss()(torch.zeros(1, 2, 3), torch.ones(1, 2, 4), torch.zeros(1, 2, 1), [points],
        ...                   {"p3": torch.zeros(1, 1, 1, 2)}, [{"boxes": torch.tensor([[0.0, 0, 10, 8]]),
        ...                                                      "labels": torch.tensor([1])}])
        >>> sorted(loss)
        ['bbox_ctrness', 'bbox_regression', 'classification']
    """

    def __init__(
        self,
        *,
        center_sampling_radius: float = 1.5,
        focal_alpha: Fraction = 0.25,
        focal_gamma: Annotated[float, Ge(0), Le(10)] = 2.0,
    ) -> None:
        super().__init__()
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)

    def forward(
        self,
        cls_logits: Tensor,
        bbox_regression: Tensor,
        bbox_ctrness: Tensor,
        anchors: list[Tensor],
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        matched = fcos_match(anchors, targets, level_sizes(features), self.center_sampling_radius)
        gt_labels, gt_boxes = [], []
        for target, index in zip(targets, matched, strict=True):
            if len(target["labels"]) == 0:
                labels = target["labels"].new_zeros((len(index),))
                boxes = target["boxes"].new_zeros((len(index), 4))
            else:
                labels, boxes = target["labels"][index.clip(min=0)], target["boxes"][index.clip(min=0)]
            labels[index < 0] = -1  # background
            gt_labels.append(labels)
            gt_boxes.append(boxes)
        labels, boxes, points = torch.stack(gt_labels), torch.stack(gt_boxes), torch.stack(anchors)
        foreground = labels >= 0
        num_foreground = max(1, int(foreground.sum().item()))

        one_hot = torch.zeros_like(cls_logits)
        one_hot[foreground, labels[foreground]] = 1.0
        loss_cls = sigmoid_focal_loss(
            cls_logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )

        predicted = self.box_coder.decode(bbox_regression, points)
        loss_box = generalized_box_iou_loss(predicted[foreground], boxes[foreground], reduction="sum")

        ltrb = self.box_coder.encode(points, boxes)  # the targets the regression branch aims at
        if len(ltrb) == 0:
            centerness = ltrb.new_zeros(ltrb.size()[:-1])
        else:
            left_right, top_bottom = ltrb[:, :, [0, 2]], ltrb[:, :, [1, 3]]
            centerness = torch.sqrt(
                (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
            )
        loss_ctr = nn.functional.binary_cross_entropy_with_logits(
            bbox_ctrness.squeeze(dim=2)[foreground], centerness[foreground], reduction="sum"
        )
        return {
            "classification": loss_cls / num_foreground,
            "bbox_regression": loss_box / num_foreground,
            "bbox_ctrness": loss_ctr / num_foreground,
        }

    def extra_repr(self) -> str:
        return f"center_sampling_radius={self.center_sampling_radius}"


@register_block(
    "fcos_postprocess",
    family="postprocess",
    inputs={**_HEAD_OUTPUTS, "anchors": "Boxes", "features": "FeaturePyramid", "image_sizes": "ImageSizes[B, 2]"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class FCOSPostprocess(DensePostprocess):
    """Detections from FCOS's head outputs, in the frame of the transformed (resized) images.

    Per image and level: score every (point, class) by ``sqrt(sigmoid(class logit) · sigmoid(centre-ness))``,
    keep scores above ``score_thresh``, the best ``topk_candidates`` of them, decode their boxes and clip them
    to the image size. Then per image: class-wise NMS over all levels and the best ``detections_per_img``.
    Follow it with ``detection_rescale`` to get boxes in the original images' pixels.

    Args:
        score_thresh: minimum score of a kept detection.
        nms_thresh: IoU above which NMS drops the lower-scored of two boxes of the same class.
        detections_per_img: detections kept per image after NMS.
        topk_candidates: best candidates kept per level before NMS.

    Example:
        >>> points = torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8]])  # two stride-8 points of one level
        >>> logits = torch.full((1, 2, 3), -5.0)
        >>> logits[0, 0, 1] = 5.0  # only point 0 is sure of something: class 1
        >>> out = FCOSPostprocess()(logits, torch.ones(1, 2, 4), torch.zeros(1, 2, 1), [points],
        ...                         {"p3": torch.zeros(1, 1, 1, 2)}, torch.tensor([[8, 16]]))
        >>> out[0]["boxes"].tolist(), out[0]["labels"].tolist()  # one stride on each side, clipped to 8×16
        ([[0.0, 0.0, 12.0, 8.0]], [1])
    """

    def __init__(
        self,
        *,
        score_thresh: Fraction = 0.2,
        nms_thresh: Fraction = 0.6,
        detections_per_img: Size = 100,
        topk_candidates: Candidates = 1000,
    ) -> None:
        super().__init__(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
        )
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)

    def forward(
        self,
        cls_logits: Tensor,
        bbox_regression: Tensor,
        bbox_ctrness: Tensor,
        anchors: list[Tensor],
        features: dict[str, Tensor],
        image_sizes: Tensor,
    ) -> list[dict[str, Tensor]]:
        sizes = level_sizes(features)
        detections = []
        for index, image_size in enumerate(image_sizes.tolist()):
            per_level = zip(
                cls_logits[index].split(sizes),
                bbox_regression[index].split(sizes),
                bbox_ctrness[index].split(sizes),
                anchors[index].split(sizes),
                strict=True,
            )
            boxes, scores, labels = zip(*(self._level(*level, tuple(image_size)) for level in per_level), strict=True)
            detections.append(self.suppress(boxes, scores, labels))
        return detections

    def _level(
        self, logits: Tensor, regression: Tensor, ctrness: Tensor, points: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The best-scoring (box, score, label) candidates of one level of one image."""
        num_classes = logits.shape[-1]
        scores, candidates = self.top_candidates(torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctrness)).flatten())
        point = torch.div(candidates, num_classes, rounding_mode="floor")
        boxes = self.box_coder.decode(regression[point], points[point])
        return box_ops.clip_boxes_to_image(boxes, image_size), scores, candidates % num_classes
