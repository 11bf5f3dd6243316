"""RoI heads of Fast / Faster / Mask R-CNN, one block per stage of torchvision's ``RoIHeads.forward``.

Training: ``roi_sampler`` (add the ground truth to the proposals, match, sample, encode targets) →
``multiscale_roi_align`` → ``two_mlp_head`` → ``fastrcnn_predictor`` → ``fastrcnn_loss``; Mask R-CNN adds
``mask_roi_select`` (the positive samples) → ``multiscale_roi_align`` → ``mask_head`` → ``mask_predictor`` →
``maskrcnn_loss``. Evaluation: the sampler passes the proposals through, ``fastrcnn_postprocess`` makes the
detections, ``mask_roi_select`` takes their boxes and ``maskrcnn_postprocess`` adds each one's mask.

RoI-level tensors (``R`` rows: the RoI features, logits, labels, regression targets) are concatenated over the
images in proposal order, as torchvision's box head sees them; ``R`` is known only at run time. Heads and
predictors are torchvision's own modules (``TwoMLPHead``, ``FastRCNNPredictor``'s layers, ``MaskRCNNHeads``,
``MaskRCNNPredictor``) with torchvision's submodule names, so the keys ``roi_heads.box_head.*`` and so on of a
torchvision detector load into the matching nodes by prefix. Sampling and post-processing call the methods of a
parameterless torchvision ``RoIHeads``, so their results and random draws are torchvision's exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import torch
from annotated_types import Ge, Le
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, RoIAlign, RoIPool

from blocks.detection.rpn import image_size_list
from dagcv.registry import Count, Fraction, PositiveFloat, Size, register_block

# Sampling points per bin side (a value <= 0 lets RoIAlign adapt it to the box): more than 32² points per bin only
# costs time.
SamplingRatio = Annotated[int, Le(32)]


def _roi_heads_methods(**kwargs: object) -> RoIHeads:
    """A parameterless torchvision ``RoIHeads``: its pooling, heads and predictors are separate blocks here."""
    return RoIHeads(box_roi_pool=None, box_head=None, box_predictor=None, **kwargs)


def _reg_weights(weights: list[float] | None) -> tuple[float, float, float, float] | None:
    if weights is not None and len(weights) != 4:
        raise ValueError(f"bbox_reg_weights must hold 4 numbers (x, y, w, h), got {weights}")
    return None if weights is None else tuple(weights)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Sampling


@register_block(
    "roi_sampler",
    family="head",
    inputs={"proposals": "Boxes", "targets": "Targets[B, H, W]?"},
    outputs={
        "proposals": "Boxes",
        "labels": "Labels[R]",
        "matched_idxs": "Labels[R]",
        "regression_targets": "Tensor[R, 4]",
    },
    requires={"bg_iou_thresh <= fg_iou_thresh": "torchvision's Matcher ignores the IoUs between the two thresholds"},
)
class RoiSampler(nn.Module):
    """Training RoIs as torchvision's ``RoIHeads.select_training_samples`` picks them; evaluation passes through.

    In training, each image's ground-truth boxes join its proposals; each proposal is matched to the box it
    overlaps most (IoU at least ``fg_iou_thresh``: that box's class; below ``bg_iou_thresh``: background), and
    ``batch_size_per_image`` of them are drawn at random (torch's global RNG) with at most ``positive_fraction``
    foreground. Outputs the sampled ``proposals`` per image and, concatenated over the images in that order, their
    class ``labels``, ``matched_idxs`` (index of the matched ground-truth box in its image, 0 for background) and
    ``regression_targets`` (box deltas to the matched box, weighted by ``bbox_reg_weights``). In evaluation the
    proposals come out unchanged and the other outputs are ``None``.

    Args:
        fg_iou_thresh: minimum IoU with a ground-truth box for a foreground RoI.
        bg_iou_thresh: IoU below which a RoI is background.
        batch_size_per_image: RoIs sampled per image.
        positive_fraction: largest share of foreground RoIs in the sample.
        bbox_reg_weights: weights of the (x, y, w, h) deltas; ``None`` is torchvision's (10, 10, 5, 5).

    Example:
        >>> sampler = RoiSampler(batch_size_per_image=4).eval()
        >>> out = sampler([torch.tensor([[0.0, 0.0, 8.0, 8.0]])])
        >>> out["proposals"][0].tolist(), out["labels"]
        ([[0.0, 0.0, 8.0, 8.0]], None)
    """

    def __init__(
        self,
        *,
        fg_iou_thresh: Fraction = 0.5,
        bg_iou_thresh: Fraction = 0.5,
        batch_size_per_image: Size = 512,
        positive_fraction: Fraction = 0.25,
        bbox_reg_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.roi_heads = _roi_heads_methods(
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh, batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction, bbox_reg_weights=_reg_weights(bbox_reg_weights),
            score_thresh=0.0, nms_thresh=0.5, detections_per_img=100,
        )  # fmt: skip

    def forward(self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict[str, object]:
        if not self.training:
            return {"proposals": proposals, "labels": None, "matched_idxs": None, "regression_targets": None}
        if targets is None:
            raise ValueError("roi_sampler: targets are required in training mode")
        for t in targets:
            if not t["boxes"].is_floating_point():
                raise TypeError(f"roi_sampler: target boxes must be floating point, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"roi_sampler: target labels must be int64, got {t['labels'].dtype}")
        sampled, matched_idxs, labels, regression_targets = self.roi_heads.select_training_samples(
            list(proposals), targets
        )
        return {
            "proposals": sampled,
            "labels": torch.cat(labels),
            "matched_idxs": torch.cat(matched_idxs),
            "regression_targets": torch.cat(regression_targets),
        }


# ---------------------------------------------------------------------------------------------------------------
# RoI pooling


@register_block(
    "multiscale_roi_align",
    family="layer",
    inputs={"features": "FeaturePyramid[B, C]", "boxes": "Boxes", "image_sizes": "ImageSizes[B, 2]"},
    outputs={"out": "FeatureMap[R, C, output_size, output_size]"},
)
class MultiScaleRoiAlign(nn.Module):
    """torchvision's ``MultiScaleRoIAlign``: each box pooled from the pyramid level that suits its size.

    A box of area ``w·h`` goes to level ``floor(canonical_level + log2(sqrt(w·h) / canonical_scale))``, clamped to
    the levels in ``featmap_names``; each level's scale follows from its size and the largest image size.
    Outputs one ``C×output_size×output_size`` map per box, boxes of all images concatenated in order.

    Args:
        featmap_names: pyramid levels to pool from (torchvision's keys, finest first).
        output_size: height and width of each pooled map.
        sampling_ratio: sampling points per bin side (``-1``: adaptive).
        canonical_scale: box size mapped to ``canonical_level``.
        canonical_level: pyramid level of a ``canonical_scale``-sized box.

    Example:
        >>> pool = MultiScaleRoiAlign(featmap_names=["0", "1"], output_size=2)
        >>> features = OrderedDict([("0", torch.ones(1, 4, 16, 16)), ("1", torch.ones(1, 4, 8, 8))])
        >>> pool(features, [torch.tensor([[0.0, 0.0, 20.0, 30.0]])], torch.tensor([[64, 64]])).shape
        torch.Size([1, 4, 2, 2])
    """

    def __init__(
        self,
        *,
        featmap_names: list[str] | None = None,
        output_size: Size = 7,
        sampling_ratio: SamplingRatio = 2,
        canonical_scale: Size = 224,
        canonical_level: Size = 4,
    ) -> None:
        super().__init__()
        names = ["0", "1", "2", "3"] if featmap_names is None else list(featmap_names)
        self.pool = MultiScaleRoIAlign(
            names, output_size, sampling_ratio, canonical_scale=canonical_scale, canonical_level=canonical_level
        )

    def forward(self, features: OrderedDict[str, Tensor], boxes: list[Tensor], image_sizes: Tensor) -> Tensor:
        # torchvision caches the level scales at the first call; shape propagation makes that call with example
        # sizes, so the scales are worked out again for every batch (the same values for the same sizes).
        self.pool.scales, self.pool.map_levels = None, None
        return self.pool(features, boxes, image_size_list(image_sizes))


@register_block(
    "roi_align",
    family="layer",
    inputs={"features": "FeatureMap[B, C, H, W]", "boxes": "Boxes"},
    outputs={"out": "FeatureMap[R, C, output_size, output_size]"},
)
class RoiAlign(nn.Module):
    """``torchvision.ops.RoIAlign`` over one feature map: one ``C×output_size×output_size`` map per box.

    Args:
        output_size: height and width of each pooled map.
        spatial_scale: feature-map pixels per image pixel (``1/16`` for a stride-16 map).
        sampling_ratio: sampling points per bin side (``-1``: adaptive).
        aligned: shift boxes by half a pixel (Detectron2's corrected alignment).

    Example:
        >>> RoiAlign(output_size=2, spatial_scale=0.5)(torch.ones(1, 3, 8, 8), [torch.tensor([[0, 0, 8, 8.0]])])
        tensor([[[[1., 1.],
                  [1., 1.]],
        <BLANKLINE>
                 [[1., 1.],
                  [1., 1.]],
        <BLANKLINE>
                 [[1., 1.],
                  [1., 1.]]]])
    """

    def __init__(
        self,
        *,
        output_size: Size = 7,
        spatial_scale: PositiveFloat = 0.0625,
        sampling_ratio: SamplingRatio = -1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.pool = RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)

    def forward(self, features: Tensor, boxes: list[Tensor]) -> Tensor:
        return self.pool(features, boxes)


@register_block(
    "roi_pool",
    family="layer",
    inputs={"features": "FeatureMap[B, C, H, W]", "boxes": "Boxes"},
    outputs={"out": "FeatureMap[R, C, output_size, output_size]"},
)
class RoiPool(nn.Module):
    """``torchvision.ops.RoIPool`` over one feature map (Fast R-CNN's max pooling of each box into a grid).

    Args:
        output_size: height and width of each pooled map.
        spatial_scale: feature-map pixels per image pixel (``1/16`` for a stride-16 map).

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> RoiPool(output_size=2, spatial_scale=1.0)(x, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])])
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """

    def __init__(self, *, output_size: Size = 7, spatial_scale: PositiveFloat = 0.0625) -> None:
        super().__init__()
        self.pool = RoIPool(output_size, spatial_scale)

    def forward(self, features: Tensor, boxes: list[Tensor]) -> Tensor:
        return self.pool(features, boxes)


# ---------------------------------------------------------------------------------------------------------------
# Box head, predictor, loss, post-processing


@register_block(
    "two_mlp_head",
    family="head",
    inputs={"x": "FeatureMap[R, C, S, S]"},
    outputs={"out": "Embedding[R, representation_size]"},
    infer={"in_channels": "C*S*S"},
)
def two_mlp_head(*, in_channels: Size, representation_size: Size = 1024) -> TwoMLPHead:
    """torchvision's ``TwoMLPHead``: each RoI's features flattened, then two fully connected layers with ReLU.

    Args:
        in_channels: flattened size of one RoI's features (inferred: ``C·S·S``).
        representation_size: width of both layers.

    Example:
        >>> two_mlp_head(in_channels=4 * 7 * 7, representation_size=32)(torch.zeros(5, 4, 7, 7)).shape
        torch.Size([5, 32])
    """
    return TwoMLPHead(in_channels, representation_size)


@register_block(
    "fastrcnn_predictor",
    family="head",
    inputs={"x": "Embedding[R, D]"},
    outputs={"class_logits": "Logits[R, num_classes]", "box_regression": "Tensor[R, 4*num_classes]"},
    infer={"in_channels": "D"},
)
class FastRcnnPredictor(nn.Module):
    """torchvision's ``FastRCNNPredictor``: class logits and per-class box deltas for every RoI.

    Args:
        in_channels: width of each RoI's representation (inferred from ``D``).
        num_classes: classes including the background (class 0): at least 2, a detector needs one object class.

    Example:
        >>> out = FastRcnnPredictor(in_channels=8, num_classes=3)(torch.zeros(5, 8))
        >>> out["class_logits"].shape, out["box_regression"].shape
        (torch.Size([5, 3]), torch.Size([5, 12]))
    """

    def __init__(self, *, in_channels: Size, num_classes: Annotated[int, Ge(2)]) -> None:
        super().__init__()
        predictor = FastRCNNPredictor(in_channels, num_classes)
        self.cls_score, self.bbox_pred = predictor.cls_score, predictor.bbox_pred

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = x.flatten(start_dim=1)
        return {"class_logits": self.cls_score(x), "box_regression": self.bbox_pred(x)}


@register_block(
    "fastrcnn_loss",
    family="loss",
    inputs={
        "class_logits": "Logits[R, K]",
        "box_regression": "Tensor[R, 4*K]",
        "labels": "Labels[R]",
        "regression_targets": "Tensor[R, 4]",
    },
    outputs={"loss_classifier": "Loss[]", "loss_box_reg": "Loss[]"},
    default_mode="train",
)
class FastRcnnLoss(nn.Module):
    """torchvision's ``fastrcnn_loss``: cross-entropy over the sampled RoIs, smooth-L1 on the foreground's boxes.

    ``loss_box_reg`` takes the deltas of each foreground RoI's own class (smooth-L1, beta 1/9), summed and divided
    by the number of sampled RoIs.

    Example:
        >>> losses = FastRcnnLoss()(torch.zeros(2, 3), torch.zeros(2, 12), torch.tensor([0, 2]), torch.zeros(2, 4))
        >>> {k: round(v.item(), 4) for k, v in losses.items()}
        {'loss_classifier': 1.0986, 'loss_box_reg': 0.0}
    """

    def forward(
        self, class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor
    ) -> dict[str, Tensor]:
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, [labels], [regression_targets])
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


@register_block(
    "fastrcnn_postprocess",
    family="postprocess",
    inputs={
        "class_logits": "Logits[R, K]",
        "box_regression": "Tensor[R, 4*K]",
        "proposals": "Boxes",
        "image_sizes": "ImageSizes[B, 2]",
    },
    outputs={"detections": "Detections"},
    default_mode="eval",
    requires={
        "detections_per_img <= 10000": "at most 10,000 detections per image: the mask branch pastes one "
        "mask per detection (COCO keeps 100)"
    },
)
class FastRcnnPostprocess(nn.Module):
    """Detections from the box head, as torchvision's ``RoIHeads.postprocess_detections`` makes them.

    Each RoI's per-class deltas are decoded onto its proposal and clipped to the image; every (RoI, class) pair but
    the background is a candidate scored by the softmax. Candidates scoring at most ``score_thresh`` and empty
    boxes are dropped, NMS runs per class, and the ``detections_per_img`` best remain. Boxes are in the resized
    image's pixels; ``detection_rescale`` maps them back to the input's.

    Args:
        score_thresh: candidates must score above this.
        nms_thresh: IoU above which NMS removes the lower-scoring box of a class.
        detections_per_img: detections kept per image.
        bbox_reg_weights: weights of the (x, y, w, h) deltas; ``None`` is torchvision's (10, 10, 5, 5).

    Example:
        >>> post = FastRcnnPostprocess(score_thresh=0.4)
        >>> out = post(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 8), [torch.tensor([[1.0, 1.0, 5.0, 5.0]])],
        ...            torch.tensor([[8, 8]]))
        >>> out[0]["boxes"].tolist(), out[0]["labels"].tolist(), round(out[0]["scores"].item(), 4)
        ([[1.0, 1.0, 5.0, 5.0]], [1], 0.8808)
    """

    def __init__(
        self,
        *,
        score_thresh: Fraction = 0.05,
        nms_thresh: Fraction = 0.5,
        detections_per_img: Size = 100,
        bbox_reg_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.roi_heads = _roi_heads_methods(
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
            bbox_reg_weights=_reg_weights(bbox_reg_weights), score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )  # fmt: skip

    def forward(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        boxes, scores, labels = self.roi_heads.postprocess_detections(
            class_logits, box_regression, proposals, image_size_list(image_sizes)
        )
        return [{"boxes": b, "labels": l, "scores": s} for b, s, l in zip(boxes, scores, labels, strict=True)]


# ---------------------------------------------------------------------------------------------------------------
# Mask branch


@register_block(
    "mask_roi_select",
    family="head",
    inputs={
        "proposals": "Boxes",
        "labels": "Labels[R]?",
        "matched_idxs": "Labels[R]?",
        "detections": "Detections?",
    },
    outputs={"boxes": "Boxes", "matched_idxs": "Labels[P]"},
)
class MaskRoiSelect(nn.Module):
    """The boxes the mask branch sees, as torchvision's ``RoIHeads.forward`` picks them.

    In training: the sampled proposals with a foreground label, per image, and their ``matched_idxs``
    (concatenated). In evaluation: the boxes of the detections, and ``matched_idxs`` is ``None``.

    Example:
        >>> select = MaskRoiSelect()
        >>> out = select([torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]])], torch.tensor([0, 3]), torch.tensor([0, 1]))
        >>> out["boxes"][0].tolist(), out["matched_idxs"].tolist()
        ([[1.0, 1.0, 5.0, 5.0]], [1])
    """

    def forward(
        self,
        proposals: list[Tensor],
        labels: Tensor | None = None,
        matched_idxs: Tensor | None = None,
        detections: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, object]:
        if not self.training:
            if detections is None:
                raise ValueError("mask_roi_select: detections are required in evaluation mode")
            return {"boxes": [d["boxes"] for d in detections], "matched_idxs": None}
        if labels is None or matched_idxs is None:
            raise ValueError("mask_roi_select: labels and matched_idxs are required in training mode")
        counts = [len(p) for p in proposals]
        boxes, positive_idxs = [], []
        for boxes_in_image, labels_in_image, idxs_in_image in zip(
            proposals, labels.split(counts), matched_idxs.split(counts), strict=True
        ):
            pos = torch.where(labels_in_image > 0)[0]
            boxes.append(boxes_in_image[pos])
            positive_idxs.append(idxs_in_image[pos])
        return {"boxes": boxes, "matched_idxs": torch.cat(positive_idxs)}


@register_block(
    "mask_head",
    family="head",
    inputs={"x": "FeatureMap[R, C, S, S]"},
    outputs={"out": "FeatureMap[R, channels, S, S]"},
    infer={"in_channels": "C"},
    param_count="9 * num_convs * channels * max(channels, in_channels)",
)
def mask_head(*, in_channels: Size, channels: Size = 256, num_convs: Count = 4, dilation: Size = 1) -> MaskRCNNHeads:
    """torchvision's ``MaskRCNNHeads``: ``num_convs`` 3×3 conv + ReLU layers over each RoI's features.

    Args:
        in_channels: channels of the RoI features (inferred from ``C``).
        channels: channels of every conv layer.
        num_convs: number of conv layers.
        dilation: dilation (and padding) of the convs.

    Example:
        >>> mask_head(in_channels=8, channels=16, num_convs=2)(torch.zeros(3, 8, 14, 14)).shape
        torch.Size([3, 16, 14, 14])
    """
    return MaskRCNNHeads(in_channels, [channels] * num_convs, dilation)


@register_block(
    "mask_predictor",
    family="head",
    inputs={"x": "FeatureMap[R, C, S, S]"},
    outputs={"out": "Mask[R, num_classes, 2*S, 2*S]"},
    infer={"in_channels": "C"},
)
def mask_predictor(*, in_channels: Size, num_classes: Size, dim_reduced: Size = 256) -> MaskRCNNPredictor:
    """torchvision's ``MaskRCNNPredictor``: a 2× transposed conv + ReLU, then one mask logit map per class.

    Args:
        in_channels: channels of the mask head's output (inferred from ``C``).
        num_classes: classes including the background.
        dim_reduced: channels of the transposed conv.

    Example:
        >>> mask_predictor(in_channels=8, num_classes=3, dim_reduced=4)(torch.zeros(2, 8, 14, 14)).shape
        torch.Size([2, 3, 28, 28])
    """
    return MaskRCNNPredictor(in_channels, dim_reduced, num_classes)


@register_block(
    "maskrcnn_loss",
    family="loss",
    inputs={
        "mask_logits": "Mask[P, K, M, M]",
        "boxes": "Boxes",
        "matched_idxs": "Labels[P]",
        "targets": "Targets[B, H, W]",
    },
    outputs={"loss_mask": "Loss[]"},
    default_mode="train",
)
class MaskRcnnLoss(nn.Module):
    """torchvision's ``maskrcnn_loss``: per-pixel binary cross-entropy of each positive RoI's own-class mask logits.

    Each RoI's target is its matched ground-truth mask cropped to the RoI and resampled to ``M×M`` (RoIAlign);
    no positive RoI gives a zero loss that still reaches the logits.

    Example:
        >>> target = {"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([1]),
        ...           "masks": torch.ones(1, 8, 8, dtype=torch.uint8)}
        >>> loss = MaskRcnnLoss()(torch.zeros(1, 2, 4, 4), [torch.tensor([[0.0, 0, 4, 4]])], torch.tensor([0]),
        ...                       [target])
        >>> round(loss.item(), 4)
        0.6931
    """

    def forward(
        self, mask_logits: Tensor, boxes: list[Tensor], matched_idxs: Tensor, targets: list[dict[str, Tensor]]
    ) -> Tensor:
        matched = list(matched_idxs.split([len(b) for b in boxes]))
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        return maskrcnn_loss(mask_logits, boxes, gt_masks, gt_labels, matched)


@register_block(
    "maskrcnn_postprocess",
    family="postprocess",
    inputs={"mask_logits": "Mask[P, K, M, M]", "detections": "Detections"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class MaskRcnnPostprocess(nn.Module):
    """Each detection gets the mask probabilities of its predicted class (torchvision's ``maskrcnn_inference``).

    Adds ``masks`` (``N×1×M×M``, in the detection's box) to copies of the detection dicts; ``detection_rescale``
    pastes them into the input image.

    Example:
        >>> dets = [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([1]), "scores": torch.ones(1)}]
        >>> MaskRcnnPostprocess()(torch.zeros(1, 2, 2, 2), dets)[0]["masks"]
        tensor([[[[0.5000, 0.5000],
                  [0.5000, 0.5000]]]])
    """

    def forward(self, mask_logits: Tensor, detections: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        probs = maskrcnn_inference(mask_logits, [d["labels"] for d in detections])
        return [{**d, "masks": p} for d, p in zip(detections, probs, strict=True)]
