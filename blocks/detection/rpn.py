"""Region Proposal Network (Faster / Mask R-CNN), one block per stage of torchvision's ``RegionProposalNetwork``.

``rpn_head`` scores every anchor of every pyramid level; ``rpn_proposals`` decodes the deltas onto the anchors and
keeps the best boxes per level (torchvision's ``filter_proposals``); ``rpn_loss`` matches anchors to the ground
truth, samples them and scores the sample (torchvision's ``assign_targets_to_anchors`` + ``compute_loss``).

The head keeps torchvision's submodule names (``conv``, ``cls_logits``, ``bbox_pred``), so the keys ``rpn.head.*`` of
a torchvision detector load into an ``rpn_head`` node by prefix. The other two blocks have no parameters: they hold
a torchvision ``RegionProposalNetwork`` without anchor generator or head and call its own methods, so proposals,
losses and random anchor sampling are torchvision's exactly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch  # noqa: F401  (the docstring examples use it)
from torch import Tensor, nn
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from blocks.detection.postprocess import Candidates
from dagcv.registry import Fraction, Size, register_block


def image_size_list(image_sizes: Tensor) -> list[tuple[int, int]]:
    """An ``ImageSizes`` tensor (``B×2``, height and width) as torchvision's list of ``(height, width)`` tuples.

    Example:
        >>> image_size_list(torch.tensor([[64, 80], [60, 80]]))
        [(64, 80), (60, 80)]
    """
    return [(int(h), int(w)) for h, w in image_sizes.tolist()]


def _rpn_methods(**kwargs: object) -> RegionProposalNetwork:
    """A parameterless torchvision RPN: its anchor generator and head are separate blocks in a dagcv graph."""
    return RegionProposalNetwork(anchor_generator=None, head=None, **kwargs)  # type: ignore[arg-type]


@register_block(
    "rpn_head",
    family="head",
    inputs={"features": "FeaturePyramid[B, C]"},
    outputs={
        "objectness": "FeaturePyramid[B, num_anchors]",
        "pred_bbox_deltas": "FeaturePyramid[B, 4*num_anchors]",
    },
    infer={"in_channels": "C"},
    param_count="9 * conv_depth * in_channels * in_channels + 5 * num_anchors * in_channels",
)
class RpnHead(nn.Module):
    """torchvision's ``RPNHead``: a shared 3×3 conv, then per-anchor objectness logits and box deltas on every level.

    Returns two pyramids with the input's level names: ``objectness`` (``A`` channels per level) and
    ``pred_bbox_deltas`` (``4A``), ``A`` being the anchors per location of the anchor generator.

    Args:
        in_channels: channels of every pyramid level (inferred from ``C``).
        num_anchors: anchors per location (sizes per level × aspect ratios of the anchor generator).
        conv_depth: number of shared 3×3 conv + ReLU layers.

    Example:
        >>> head = RpnHead(in_channels=8, num_anchors=3)
        >>> out = head(OrderedDict([("0", torch.zeros(2, 8, 16, 16)), ("pool", torch.zeros(2, 8, 4, 4))]))
        >>> [(k, tuple(v.shape)) for k, v in out["pred_bbox_deltas"].items()]
        [('0', (2, 12, 16, 16)), ('pool', (2, 12, 4, 4))]
    """

    def __init__(self, *, in_channels: Size, num_anchors: Size = 3, conv_depth: Size = 1) -> None:
        super().__init__()
        head = RPNHead(in_channels, num_anchors, conv_depth=conv_depth)
        self.conv, self.cls_logits, self.bbox_pred = head.conv, head.cls_logits, head.bbox_pred

    def forward(self, features: OrderedDict[str, Tensor]) -> dict[str, OrderedDict[str, Tensor]]:
        objectness, deltas = OrderedDict(), OrderedDict()
        for name, feature in features.items():
            t = self.conv(feature)
            objectness[name] = self.cls_logits(t)
            deltas[name] = self.bbox_pred(t)
        return {"objectness": objectness, "pred_bbox_deltas": deltas}


@register_block(
    "rpn_proposals",
    family="head",
    inputs={
        "anchors": "Boxes",
        "objectness": "FeaturePyramid[B, A]",
        "pred_bbox_deltas": "FeaturePyramid[B, 4*A]",
        "image_sizes": "ImageSizes[B, 2]",
    },
    outputs={"proposals": "Boxes"},
)
class RpnProposals(nn.Module):
    """Proposals from the RPN: deltas decoded onto the anchors, then torchvision's ``filter_proposals``.

    Per image and level, the ``pre_nms_top_n`` highest-scoring boxes are kept; the boxes are clipped to the image,
    tiny and low-scoring ones dropped, NMS runs per level, and the ``post_nms_top_n`` best survive. As in
    torchvision, training keeps the ``*_train`` counts and evaluation the ``*_test`` ones (``self.training``), and
    no gradient flows into the proposals.

    Args:
        pre_nms_top_n_train: boxes kept per level before NMS, in training.
        pre_nms_top_n_test: boxes kept per level before NMS, in evaluation.
        post_nms_top_n_train: proposals kept per image after NMS, in training.
        post_nms_top_n_test: proposals kept per image after NMS, in evaluation.
        nms_thresh: IoU above which NMS removes the lower-scoring box.
        score_thresh: proposals with a lower objectness probability are dropped.

    Example:
        >>> anchors = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0]])]
        >>> logits = OrderedDict([("0", torch.tensor([[[[2.0]], [[-1.0]]]]))])  # 1 image, A=2, 1×1 map
        >>> deltas = OrderedDict([("0", torch.zeros(1, 8, 1, 1))])
        >>> RpnProposals().eval()(anchors, logits, deltas, torch.tensor([[10, 10]]))
        [tensor([[ 0.,  0.,  8.,  8.],
                [ 4.,  4., 10., 10.]])]
    """

    def __init__(
        self,
        *,
        pre_nms_top_n_train: Candidates = 2000,
        pre_nms_top_n_test: Candidates = 1000,
        post_nms_top_n_train: Size = 2000,
        post_nms_top_n_test: Size = 1000,
        nms_thresh: Fraction = 0.7,
        score_thresh: Fraction = 0.0,
    ) -> None:
        super().__init__()
        # The sampling arguments are unused here: rpn_loss holds its own RPN with them.
        self.rpn = _rpn_methods(
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
            post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
            nms_thresh=nms_thresh, score_thresh=score_thresh,
        )  # fmt: skip

    def forward(
        self,
        anchors: list[Tensor],
        objectness: OrderedDict[str, Tensor],
        pred_bbox_deltas: OrderedDict[str, Tensor],
        image_sizes: Tensor,
    ) -> list[Tensor]:
        scores, deltas = list(objectness.values()), list(pred_bbox_deltas.values())
        num_anchors_per_level = [s[0].numel() for s in scores]  # A·H·W of each level
        flat_scores, flat_deltas = concat_box_prediction_layers(scores, deltas)
        # Faster R-CNN does not backpropagate through the proposals.
        proposals = self.rpn.box_coder.decode(flat_deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.rpn.filter_proposals(
            proposals, flat_scores, image_size_list(image_sizes), num_anchors_per_level
        )
        return boxes


@register_block(
    "rpn_loss",
    family="loss",
    inputs={
        "anchors": "Boxes",
        "objectness": "FeaturePyramid[B, A]",
        "pred_bbox_deltas": "FeaturePyramid[B, 4*A]",
        "targets": "Targets[B, H, W]",
    },
    outputs={"loss_objectness": "Loss[]", "loss_rpn_box_reg": "Loss[]"},
    default_mode="train",
    requires={"bg_iou_thresh <= fg_iou_thresh": "torchvision's Matcher ignores the IoUs between the two thresholds"},
)
class RpnLoss(nn.Module):
    """RPN losses, as torchvision computes them: anchors matched to the ground truth, sampled, then scored.

    An anchor whose best IoU with a ground-truth box is at least ``fg_iou_thresh`` is positive (and so is the best
    anchor of every box), below ``bg_iou_thresh`` negative, in between ignored. ``batch_size_per_image`` anchors per
    image are drawn at random (torch's global RNG, as torchvision's ``BalancedPositiveNegativeSampler``) with at most
    ``positive_fraction`` positives. ``loss_objectness`` is the binary cross-entropy over the sample,
    ``loss_rpn_box_reg`` the smooth-L1 (beta 1/9) of the positives' deltas, summed and divided by the sample size.

    Args:
        fg_iou_thresh: minimum IoU with a ground-truth box for a positive anchor.
        bg_iou_thresh: maximum IoU for a negative anchor.
        batch_size_per_image: anchors sampled per image.
        positive_fraction: largest share of positives in the sample.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> anchors = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])]
        >>> logits = OrderedDict([("0", torch.zeros(1, 2, 1, 1))])
        >>> deltas = OrderedDict([("0", torch.zeros(1, 8, 1, 1))])
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1])}]
        >>> {k: round(v.item(), 4) for k, v in RpnLoss()(anchors, logits, deltas, targets).items()}
        {'loss_objectness': 0.6931, 'loss_rpn_box_reg': 0.0}
    """

    def __init__(
        self,
        *,
        fg_iou_thresh: Fraction = 0.7,
        bg_iou_thresh: Fraction = 0.3,
        batch_size_per_image: Size = 256,
        positive_fraction: Fraction = 0.5,
    ) -> None:
        super().__init__()
        # The proposal arguments are unused here: rpn_proposals holds its own RPN with them.
        self.rpn = _rpn_methods(
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh, batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction, pre_nms_top_n={"training": 0, "testing": 0},
            post_nms_top_n={"training": 0, "testing": 0}, nms_thresh=0.7,
        )  # fmt: skip

    def forward(
        self,
        anchors: list[Tensor],
        objectness: OrderedDict[str, Tensor],
        pred_bbox_deltas: OrderedDict[str, Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        flat_scores, flat_deltas = concat_box_prediction_layers(
            list(objectness.values()), list(pred_bbox_deltas.values())
        )
        labels, matched_gt_boxes = self.rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = self.rpn.box_coder.encode(matched_gt_boxes, anchors)
        loss_objectness, loss_box = self.rpn.compute_loss(flat_scores, flat_deltas, labels, list(regression_targets))
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
