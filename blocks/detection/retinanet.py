"""RetinaNet (Lin et al., 2017) as torchvision's ``RetinaNet`` computes it: head, focal loss, post-processing.

A dense one-stage detector: on every location of every pyramid level (P3-P7), for each of ``A`` anchors, a
shared head predicts ``K`` sigmoid class logits and 4 box deltas. In a spec::

    head:        {type: retina_head, in: neck, num_classes: 91}            # cls_logits, bbox_regression
    anchors:     {type: anchor_generator, in: {images: transform.images, image_sizes: transform.image_sizes,
                                               features: neck}, sizes: [...]}
    loss:        {type: retina_loss, in: {cls_logits: head.cls_logits, bbox_regression: head.bbox_regression,
                                          anchors: anchors, targets: transform.targets}}
    postprocess: {type: retina_postprocess, in: {..., features: neck, image_sizes: transform.image_sizes}}

The head keeps torchvision's submodule names (``classification_head``, ``regression_head``), so a torchvision
``head.*`` state_dict loads into a node named ``head`` unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Le
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss

from blocks.detection.postprocess import Candidates, DensePostprocess
from dagcv.registry import Fraction, Size, register_block

_HEAD_OUTPUTS = {"cls_logits": "Logits", "bbox_regression": "Tensor"}


@register_block(
    "retina_head",
    family="head",
    inputs={"features": "FeaturePyramid[B, C]"},
    outputs=_HEAD_OUTPUTS,
    infer={"in_channels": "C"},
    param_count="72 * in_channels * in_channels + 9 * in_channels * num_anchors * (num_classes + 4)",
)
class RetinaHead(RetinaNetHead):
    """RetinaNet's shared head: per anchor, ``num_classes`` sigmoid logits and 4 box deltas, over every level.

    torchvision's ``RetinaNetHead``: two towers of four 3×3 conv + ReLU, then a 3×3 conv to ``A·K`` class logits
    (bias initialised to the prior 0.01) and one to ``A·4`` deltas, the same weights on every level. Outputs are
    concatenated over the levels in pyramid order, location-major then anchor: ``cls_logits`` is
    ``B×(Σ H_l·W_l·A)×K``, ``bbox_regression`` ``B×(Σ H_l·W_l·A)×4``, in the order ``anchor_generator`` lays
    out its anchors.

    Args:
        in_channels: channels of every pyramid level (inferred).
        num_anchors: anchors per location (``len(sizes[l]) × len(aspect_ratios[l])`` of the anchor generator).
        num_classes: classes, background included as class 0 only if the dataset labels it (COCO: 91).

    Example:
        >>> head = RetinaHead(in_channels=8, num_anchors=9, num_classes=4)
        >>> out = head({"0": torch.zeros(2, 8, 4, 4), "1": torch.zeros(2, 8, 2, 2)})
        >>> out["cls_logits"].shape, out["bbox_regression"].shape
        (torch.Size([2, 180, 4]), torch.Size([2, 180, 4]))
    """

    def __init__(self, *, in_channels: Size, num_anchors: Size = 9, num_classes: Size) -> None:
        super().__init__(in_channels, num_anchors, num_classes)

    def forward(self, features: OrderedDict[str, Tensor]) -> dict[str, Tensor]:  # type: ignore[override]
        return super().forward(list(features.values()))


def match_anchors(anchors: list[Tensor], targets: list[dict[str, Tensor]], matcher: det_utils.Matcher) -> list[Tensor]:
    """Index of the ground-truth box each anchor is matched to (``-1`` background, ``-2`` ignored), per image.

    ``RetinaNet.compute_loss``: IoU of every ground-truth box with every anchor, through ``matcher``; an image
    without boxes is all background.
    """
    matched_idxs = []
    for anchors_per_image, targets_per_image in zip(anchors, targets, strict=True):
        if targets_per_image["boxes"].numel() == 0:
            matched_idxs.append(
                torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device)
            )
            continue
        match_quality_matrix = box_ops.box_iou(targets_per_image["boxes"], anchors_per_image)
        matched_idxs.append(matcher(match_quality_matrix))
    return matched_idxs


@register_block(
    "retina_loss",
    family="loss",
    inputs={**_HEAD_OUTPUTS, "anchors": "Boxes", "targets": "Targets"},
    outputs={"classification": "Loss[]", "bbox_regression": "Loss[]"},
    default_mode="train",
    requires={"bg_iou_thresh <= fg_iou_thresh": "torchvision's Matcher ignores the IoUs between the two thresholds"},
)
class RetinaLoss(nn.Module):
    """RetinaNet's training losses: sigmoid focal loss over all non-ignored anchors, L1 on the foreground deltas.

    Exactly ``RetinaNet.compute_loss``: anchors match ground truth with ``Matcher(fg_iou_thresh, bg_iou_thresh,
    allow_low_quality_matches=True)`` (IoU ≥ 0.5 foreground, < 0.4 background, in between ignored, and each box
    keeps its best anchors); ``classification`` is the focal loss (α 0.25, γ 2, summed) over foreground and
    background anchors, divided by the image's foreground count; ``bbox_regression`` the L1 loss between the
    predicted deltas and ``BoxCoder(1, 1, 1, 1)``-encoded targets over foreground anchors, divided likewise. Both
    are averaged over the images.

    Args:
        fg_iou_thresh: IoU from which an anchor is foreground.
        bg_iou_thresh: IoU below which an anchor is background (between the two it is ignored).
        bbox_loss: the box loss (torchvision's ``_box_loss`` types; RetinaNet uses ``l1``).
        focal_alpha: the focal loss's weight of positives (0.25 in the paper and torchvision).
        focal_gamma: the focal loss's focusing exponent (2 in the paper; 0 is plain binary cross-entropy).

    Example:
        >>> loss = RetinaLoss()
        >>> anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])]
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 11.0]]), "labels": torch.tensor([1])}]
        >>> out = loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), anchors, targets)
        >>> round(out["classification"].item(), 4), round(out["bbox_regression"].item(), 4)
        (0.6931, 0.1453)
    """

    def __init__(
        self,
        *,
        fg_iou_thresh: Fraction = 0.5,
        bg_iou_thresh: Fraction = 0.4,
        bbox_loss: Literal["l1", "smooth_l1", "giou", "diou", "ciou"] = "l1",
        focal_alpha: Fraction = 0.25,
        focal_gamma: Annotated[float, Ge(0), Le(10)] = 2.0,
    ) -> None:
        super().__init__()
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.proposal_matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.bbox_loss = bbox_loss

    def forward(
        self, cls_logits: Tensor, bbox_regression: Tensor, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        matched_idxs = match_anchors(anchors, targets, self.proposal_matcher)
        return {
            "classification": self.classification_loss(cls_logits, targets, matched_idxs),
            "bbox_regression": self.regression_loss(bbox_regression, anchors, targets, matched_idxs),
        }

    def classification_loss(
        self, cls_logits: Tensor, targets: list[dict[str, Tensor]], matched_idxs: list[Tensor]
    ) -> Tensor:
        """``RetinaNetClassificationHead.compute_loss``."""
        losses = []
        for targets_per_image, logits, matched in zip(targets, cls_logits, matched_idxs, strict=True):
            foreground = matched >= 0
            num_foreground = foreground.sum()
            gt_classes_target = torch.zeros_like(logits)
            gt_classes_target[foreground, targets_per_image["labels"][matched[foreground]]] = 1.0
            valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], gt_classes_target[valid], alpha=self.focal_alpha,
                                      gamma=self.focal_gamma, reduction="sum")  # fmt: skip
            losses.append(loss / max(1, num_foreground))
        return _sum(losses) / len(targets)

    def regression_loss(
        self,
        bbox_regression: Tensor,
        anchors: list[Tensor],
        targets: list[dict[str, Tensor]],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        """``RetinaNetRegressionHead.compute_loss``."""
        losses = []
        for targets_per_image, deltas, anchors_per_image, matched in zip(
            targets, bbox_regression, anchors, matched_idxs, strict=True
        ):
            foreground = torch.where(matched >= 0)[0]
            matched_gt_boxes = targets_per_image["boxes"][matched[foreground]]
            loss = det_utils._box_loss(
                self.bbox_loss,
                self.box_coder,
                anchors_per_image[foreground, :],
                matched_gt_boxes,
                deltas[foreground, :],
            )
            losses.append(loss / max(1, foreground.numel()))
        return _sum(losses) / max(1, len(targets))


def _sum(values: list[Tensor]) -> Tensor:
    # torchvision's left-to-right sum (not torch.stack(...).sum()), for bit-identical losses.
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


@register_block(
    "retina_postprocess",
    family="postprocess",
    inputs={**_HEAD_OUTPUTS, "anchors": "Boxes", "features": "FeaturePyramid", "image_sizes": "ImageSizes[B, 2]"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class RetinaPostprocess(DensePostprocess):
    """Decode RetinaNet's outputs into per-image detections in the resized frame (evaluation).

    ``RetinaNet.postprocess_detections``: per level, keep the scores (sigmoid of every anchor×class logit) above
    ``score_thresh``, at most ``topk_candidates`` of them; decode their boxes with ``BoxCoder(1, 1, 1, 1)`` and
    clip them to the image; then class-wise NMS at ``nms_thresh`` over all levels and keep the best
    ``detections_per_img``. ``features`` gives the level sizes that split the concatenated outputs. Follow with
    ``detection_rescale`` for boxes in the original images' pixels.

    Args:
        score_thresh: minimum class probability of a kept detection.
        nms_thresh: IoU above which NMS suppresses the lower-scoring box of the same class.
        detections_per_img: at most this many detections per image.
        topk_candidates: at most this many candidates per level before NMS.

    Example:
        >>> post = RetinaPostprocess(score_thresh=0.5)
        >>> logits = torch.tensor([[[4.0, -4.0], [-4.0, -4.0]]])
        >>> anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])]
        >>> out = post(logits, torch.zeros(1, 2, 4), anchors, {"0": torch.zeros(1, 8, 1, 2)}, torch.tensor([[16, 16]]))
        >>> out[0]["boxes"].tolist(), out[0]["labels"].tolist()
        ([[0.0, 0.0, 10.0, 10.0]], [0])
    """

    def __init__(
        self,
        *,
        score_thresh: Fraction = 0.05,
        nms_thresh: Fraction = 0.5,
        detections_per_img: Size = 300,
        topk_candidates: Candidates = 1000,
    ) -> None:
        super().__init__(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
        )
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def forward(
        self,
        cls_logits: Tensor,
        bbox_regression: Tensor,
        anchors: list[Tensor],
        features: OrderedDict[str, Tensor],
        image_sizes: Tensor,
    ) -> list[dict[str, Tensor]]:
        # Split the concatenated outputs and anchors back into levels (RetinaNet.forward's evaluation branch).
        locations_per_level = [x.size(2) * x.size(3) for x in features.values()]
        anchors_per_location = cls_logits.size(1) // sum(locations_per_level)
        split = [hw * anchors_per_location for hw in locations_per_level]
        logits_per_level = list(cls_logits.split(split, dim=1))
        deltas_per_level = list(bbox_regression.split(split, dim=1))
        image_shapes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        detections = []
        for index, image_shape in enumerate(image_shapes):
            detections.append(
                self.detect_image(
                    [level[index] for level in logits_per_level],
                    [level[index] for level in deltas_per_level],
                    list(anchors[index].split(split)),
                    image_shape,
                )
            )
        return detections

    def detect_image(
        self, logits: list[Tensor], deltas: list[Tensor], anchors: list[Tensor], image_shape: tuple[int, int]
    ) -> dict[str, Tensor]:
        """One image's detections from its per-level logits, deltas and anchors."""
        image_boxes, image_scores, image_labels = [], [], []
        for logits_per_level, deltas_per_level, anchors_per_level in zip(logits, deltas, anchors, strict=True):
            num_classes = logits_per_level.shape[-1]
            # Remove low scoring boxes, then keep only the top-k scoring candidates.
            scores, topk_idxs = self.top_candidates(torch.sigmoid(logits_per_level).flatten())
            anchor_idxs = torch.div(topk_idxs, num_classes, rounding_mode="floor")
            boxes = self.box_coder.decode_single(deltas_per_level[anchor_idxs], anchors_per_level[anchor_idxs])
            image_boxes.append(box_ops.clip_boxes_to_image(boxes, image_shape))
            image_scores.append(scores)
            image_labels.append(topk_idxs % num_classes)
        return self.suppress(image_boxes, image_scores, image_labels)
