"""SSD-lite (Liu et al., 2016; Sandler et al., 2018) as torchvision's ``ssdlite320_mobilenet_v3_large`` builds it.

A MobileNetV3-Large trunk cut at C4's expansion layer, plus four extra blocks, gives six maps of different
widths; every location of map ``k`` holds ``2 + 2·len(aspect_ratios[k])`` default boxes; a depthwise-separable
head predicts class logits and box deltas for each. In a spec (after ``fixed_size_transform`` to 320×320)::

    backbone:    {type: ssdlite_mobilenet_v3_large, in: transform.images}
    head:        {type: ssdlite_head, in: backbone, num_classes: 91}
    anchors:     {type: default_box_generator, in: {images: transform.images, features: backbone}}
    loss:        {type: ssd_loss, in: {bbox_regression: head.bbox_regression, cls_logits: head.cls_logits, ...}}

The levels differ in width, so the pyramid is a bare ``FeaturePyramid`` (no common ``C``) and the head takes the
widths as ``in_channels``; its defaults are the backbone's. Module names are torchvision's: a torchvision SSD-lite
state_dict loads with ``backbone.`` → ``backbone.`` and ``head.`` → ``head.`` (nothing to rename).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TvDefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, _mobilenet_extractor, _normal_init
from torchvision.models.detection.ssdlite import SSDLiteHead as TvSSDLiteHead
from torchvision.ops import boxes as box_ops

from blocks.backbones import MobileNetLayers, MobileNetV3Trunk, load_weights_file
from blocks.detection.postprocess import Candidates, DensePostprocess
from dagcv.registry import Fraction, Size, register_block

SSDLITE_CHANNELS = (672, 480, 512, 256, 256, 128)  # the six maps of ssdlite_mobilenet_v3_large (reduced tail)


def ssdlite_norm_layer() -> partial[nn.BatchNorm2d]:
    """SSD-lite's batch norm: torchvision trains it with ``eps=0.001, momentum=0.03``."""
    return partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


@register_block(
    "ssdlite_mobilenet_v3_large",
    family="backbone",
    inputs={"x": "Image[B, 3, H, W]"},
    outputs={"features": "FeaturePyramid"},
    checkpoints=("weights",),
    param_count="2072672",
)
def ssdlite_mobilenet_v3_large(
    *, reduced_tail: bool = True, weights: str | None = None, trainable_layers: MobileNetLayers = 6
) -> SSDLiteFeatureExtractorMobileNet:
    """SSD-lite's MobileNetV3-Large feature extractor (torchvision's ``SSDLiteFeatureExtractorMobileNet``).

    Returns six maps ``'0'``-``'5'`` (strides 16, 32, 64, 128, 256, 512; for 320×320 inputs 20×20 down to 1×1): the
    trunk up to C4's expansion layer (672 channels), the rest of the trunk (480, or 960 without the reduced
    tail), then four extra blocks (512, 256, 256, 128). The defaults build exactly the backbone of torchvision's
    ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``: reduced tail, SSD-lite's batch norm and
    its normal(0, 0.03) initialisation.

    Args:
        reduced_tail: halve the channels of the last trunk stage (torchvision does so without a pretrained trunk).
        weights: path of a local state_dict of a torchvision ``mobilenet_v3_large`` (its ``classifier.*`` keys are
            set aside; it needs ``reduced_tail: false``); ``None`` keeps SSD-lite's random initialisation.
        trainable_layers: trunk stages that train, counted from the last (6 trains all, 0 freezes the trunk).

    Example:
        >>> features = ssdlite_mobilenet_v3_large().eval()(torch.zeros(1, 3, 320, 320))
        >>> [(k, tuple(v.shape[1:])) for k, v in features.items()][:2]
        [('0', (672, 20, 20)), ('1', (480, 10, 10))]
    """
    net = tvm.mobilenet_v3_large(weights=None, norm_layer=ssdlite_norm_layer(), reduced_tail=reduced_tail)
    if weights is None:
        _normal_init(net)
    else:
        load_weights_file(MobileNetV3Trunk(net), weights, block="ssdlite_mobilenet_v3_large",
                          classifier_prefix="classifier.")  # fmt: skip
    return _mobilenet_extractor(net, trainable_layers, ssdlite_norm_layer())


@register_block(
    "ssdlite_head",
    family="head",
    inputs={"features": "FeaturePyramid"},
    outputs={"bbox_regression": "Tensor", "cls_logits": "Logits"},
    requires={"len(in_channels) == len(num_anchors)": "in_channels and num_anchors each give one entry per level"},
)
class SSDLiteHead(TvSSDLiteHead):
    """torchvision's ``SSDLiteHead``: per level a 3×3 depthwise conv (BN, ReLU6) and a 1×1 conv, for classes and boxes.

    Outputs are concatenated over levels in default-box order: ``bbox_regression`` ``B×N×4`` (deltas, weights
    10, 10, 5, 5) and ``cls_logits`` ``B×N×num_classes``, with ``N`` the default boxes of all levels.

    Args:
        in_channels: channels of each input level (the backbone's; the defaults are ``ssdlite_mobilenet_v3_large``'s).
        num_anchors: default boxes per location of each level (``default_box_generator``: 2 + 2 per aspect ratio).
        num_classes: classes including the background, as in torchvision (91 for COCO).

    Example:
        >>> from collections import OrderedDict
        >>> head = SSDLiteHead(in_channels=(8, 16), num_anchors=(4, 6), num_classes=3)
        >>> out = head(OrderedDict([("0", torch.zeros(2, 8, 4, 4)), ("1", torch.zeros(2, 16, 2, 2))]))
        >>> tuple(out["bbox_regression"].shape), tuple(out["cls_logits"].shape)  # 4·4·4 + 2·2·6 = 88 boxes
        ((2, 88, 4), (2, 88, 3))
    """

    def __init__(
        self,
        *,
        in_channels: tuple[Size, ...] = SSDLITE_CHANNELS,
        num_anchors: tuple[Size, ...] = (6, 6, 6, 6, 6, 6),
        num_classes: Size = 91,
    ) -> None:
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"in_channels has {len(in_channels)} levels but num_anchors {len(num_anchors)}")
        super().__init__(list(in_channels), list(num_anchors), num_classes, ssdlite_norm_layer())
        self.in_channels = tuple(in_channels)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:  # type: ignore[override]
        # The pyramid's type carries no widths, so check them here: a clear message instead of a conv error.
        widths = tuple(f.shape[1] for f in features.values())
        if widths != self.in_channels:
            raise ValueError(
                f"ssdlite_head: the pyramid's levels have {list(widths)} channels but in_channels is "
                f"{list(self.in_channels)}; set in_channels to the backbone's widths"
            )
        return super().forward(list(features.values()))


@register_block(
    "default_box_generator",
    family="head",
    inputs={"images": "Image[B, C, H, W]", "features": "FeaturePyramid"},
    outputs={"anchors": "Boxes"},
)
class DefaultBoxGenerator(TvDefaultBoxGenerator):
    """SSD's default boxes for every location of every level, in pixels of the (padded) batch: torchvision's own.

    Level ``k`` of ``K`` has scale ``s_k`` (``min_ratio`` to ``max_ratio`` evenly, or ``scales``) of the image
    side; at each location it places boxes of aspect ratio 1 with sides ``s_k`` and ``sqrt(s_k·s_{k+1})``, and
    for each ratio ``r`` a pair ``s_k·sqrt(r) × s_k/sqrt(r)`` and its transpose. ``images`` (the transformed
    batch) only gives the batch size and the canvas size. The defaults are SSD-lite's (six levels of ratios 2 and
    3, scales 0.2 to 0.95).

    Args:
        aspect_ratios: per level, the aspect ratios besides 1.
        min_ratio: scale of the finest level, as a fraction of the image side.
        max_ratio: scale of the coarsest level.
        scales: explicit scales, one per level plus one (overrides ``min_ratio`` and ``max_ratio``).
        steps: per level, the stride of the box centres in pixels; ``None`` spreads them evenly over the image.
        clip: clip the boxes' width and height to the image (as fractions, before converting to corners).

    Example:
        >>> from collections import OrderedDict
        >>> gen = DefaultBoxGenerator(aspect_ratios=((2,),), min_ratio=0.5, max_ratio=0.5)
        >>> boxes = gen(torch.zeros(2, 3, 32, 32), OrderedDict([("0", torch.zeros(2, 8, 1, 1))]))
        >>> len(boxes), boxes[0].tolist()[0]
        (2, [8.0, 8.0, 24.0, 24.0])
    """

    def __init__(
        self,
        *,
        aspect_ratios: tuple[tuple[Size, ...], ...] = ((2, 3),) * 6,
        min_ratio: Fraction = 0.2,
        max_ratio: Fraction = 0.95,
        scales: list[float] | None = None,
        steps: list[Size] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__([list(r) for r in aspect_ratios], min_ratio, max_ratio, scales, steps, clip)

    def forward(self, images: Tensor, features: dict[str, Tensor]) -> list[Tensor]:  # type: ignore[override]
        # torchvision reads only the batch's tensor size and the number of images from the ImageList.
        batch = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
        return super().forward(batch, list(features.values()))


def ssd_box_coder() -> det_utils.BoxCoder:
    """SSD's box encoding: centre and size deltas weighted 10, 10, 5, 5."""
    return det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


@register_block(
    "ssd_loss",
    family="loss",
    inputs={"bbox_regression": "Tensor", "cls_logits": "Logits", "anchors": "Boxes", "targets": "Targets"},
    outputs={"bbox_regression": "Loss[]", "classification": "Loss[]"},
    default_mode="train",
)
class SSDLoss(nn.Module):
    """SSD's training losses with hard negative mining, as torchvision's ``SSD`` computes them.

    Matching (``SSDMatcher``): a default box is positive for the ground-truth box it overlaps most when that
    IoU reaches ``iou_thresh``, and every ground-truth box also claims its best default box. Then, with ``P``
    the positives of the whole batch:

    - ``bbox_regression``: smooth L1 (β 1) between predicted and target deltas of the positives, summed, / ``P``;
    - ``classification``: cross-entropy of the positives plus that of the hardest negatives (the highest loss),
      ``(1 - positive_fraction) / positive_fraction`` of them per positive in each image (3 by default), / ``P``.

    Args:
        iou_thresh: IoU at which a default box becomes a positive.
        positive_fraction: the fraction of positives among the scored boxes; sets the negatives per positive.

    Example:
        >>> anchors = [torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]])]
        >>> targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
        >>> loss = SSDLoss()(torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), anchors, targets)
        >>> round(loss["classification"].item(), 4), loss["bbox_regression"].item()  # 3·log(3); exact deltas
        (3.2958, 0.0)

        With fewer negatives than wanted, the ranking also takes the positive (ranked last) as a "negative": it
        counts twice here, as in torchvision.
    """

    def __init__(self, *, iou_thresh: float = 0.5, positive_fraction: Fraction = 0.25) -> None:
        super().__init__()
        self.iou_thresh = iou_thresh
        self.neg_to_pos_ratio = (1.0 - positive_fraction) / positive_fraction
        self.matcher = det_utils.SSDMatcher(iou_thresh)
        self.box_coder = ssd_box_coder()

    def match(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """Per default box of each image, the index of its ground-truth box, or a negative number."""
        matched = []
        for points, target in zip(anchors, targets, strict=True):
            if target["boxes"].numel() == 0:
                matched.append(torch.full((points.size(0),), -1, dtype=torch.int64, device=points.device))
            else:
                matched.append(self.matcher(box_ops.box_iou(target["boxes"], points)))
        return matched

    def forward(
        self, bbox_regression: Tensor, cls_logits: Tensor, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        matched = self.match(anchors, targets)
        num_foreground = 0
        box_losses, class_targets = [], []
        for target, deltas, logits, boxes, index in zip(
            targets, bbox_regression, cls_logits, anchors, matched, strict=True
        ):
            positive = torch.where(index >= 0)[0]
            gt_index = index[positive]
            num_foreground += gt_index.numel()
            wanted = self.box_coder.encode_single(target["boxes"][gt_index], boxes[positive, :])
            box_losses.append(F.smooth_l1_loss(deltas[positive, :], wanted, reduction="sum"))
            labels = torch.zeros((logits.size(0),), dtype=target["labels"].dtype, device=target["labels"].device)
            labels[positive] = target["labels"][gt_index]
            class_targets.append(labels)
        labels = torch.stack(class_targets)

        num_classes = cls_logits.size(-1)
        class_loss = F.cross_entropy(cls_logits.view(-1, num_classes), labels.view(-1), reduction="none")
        class_loss = class_loss.view(labels.size())
        # Hard negative mining: rank each image's negatives by loss; keep ratio × (its positives) of them.
        foreground = labels > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        negative_loss = class_loss.clone()
        negative_loss[foreground] = -float("inf")  # positives sort last
        _, order = negative_loss.sort(1, descending=True)
        # The rank of each box < the number to keep. When an image has fewer negatives than that, positives
        # (ranked last) are taken too and count twice: torchvision's behaviour, kept for parity.
        hard_negative = order.sort(1)[1] < num_negative

        n = max(1, num_foreground)
        return {
            "bbox_regression": torch.stack(box_losses).sum() / n,
            "classification": (class_loss[foreground].sum() + class_loss[hard_negative].sum()) / n,
        }

    def extra_repr(self) -> str:
        return f"iou_thresh={self.iou_thresh}, neg_to_pos_ratio={self.neg_to_pos_ratio}"


@register_block(
    "ssd_postprocess",
    family="postprocess",
    inputs={"bbox_regression": "Tensor", "cls_logits": "Logits", "anchors": "Boxes", "image_sizes": "ImageSizes[B, 2]"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class SSDPostprocess(DensePostprocess):
    """Detections from SSD's head outputs, in the frame of the transformed images (torchvision's SSD rule).

    Per image: softmax over classes, decode and clip every box; per foreground class keep scores above
    ``score_thresh`` and the best ``topk_candidates``; then class-wise NMS and the best ``detections_per_img``.
    Follow it with ``detection_rescale`` for boxes in the original images' pixels.

    Args:
        score_thresh: minimum class probability of a kept detection.
        nms_thresh: IoU above which NMS drops the lower-scored of two boxes of the same class.
        detections_per_img: detections kept per image after NMS.
        topk_candidates: best candidates kept per class before NMS.

    Example:
        >>> anchors = [torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]])]
        >>> logits = torch.tensor([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]])  # box 0 is class 1, box 1 background
        >>> out = SSDPostprocess(score_thresh=0.5)(torch.zeros(1, 2, 4), logits, anchors, torch.tensor([[16, 16]]))
        >>> out[0]["boxes"].tolist(), out[0]["labels"].tolist()
        ([[0.0, 0.0, 10.0, 10.0]], [1])
    """

    def __init__(
        self,
        *,
        score_thresh: Fraction = 0.01,
        nms_thresh: Fraction = 0.45,
        detections_per_img: Size = 200,
        topk_candidates: Candidates = 400,
    ) -> None:
        super().__init__(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
        )
        self.box_coder = ssd_box_coder()

    def forward(
        self, bbox_regression: Tensor, cls_logits: Tensor, anchors: list[Tensor], image_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        probabilities = F.softmax(cls_logits, dim=-1)
        detections = []
        for deltas, scores, points, size in zip(
            bbox_regression, probabilities, anchors, image_sizes.tolist(), strict=True
        ):
            boxes = box_ops.clip_boxes_to_image(self.box_coder.decode_single(deltas, points), tuple(size))
            kept_boxes, kept_scores, kept_labels = [], [], []
            for label in range(1, scores.size(-1)):  # class 0 is the background
                score, best = self.top_candidates(scores[:, label])
                kept_boxes.append(boxes[best])
                kept_scores.append(score)
                kept_labels.append(torch.full_like(score, fill_value=label, dtype=torch.int64))
            detections.append(self.suppress(kept_boxes, kept_scores, kept_labels))
        return detections
