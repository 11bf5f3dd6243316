"""A YOLO-style grid detector (Redmon et al., 2016, "You Only Look Once"): one feature map, one grid, no anchors.

The image is divided into the ``S_h × S_w`` cells of the last feature map. Each cell predicts ``num_boxes`` boxes,
each with a confidence ("objectness"), and one set of class probabilities shared by its boxes. The cell holding
the centre of an object is responsible for it; among its boxes, the one that overlaps the object most learns it.

Box parameters, all in ``[0, 1]`` through a sigmoid: ``x, y`` the centre's offset inside its cell (in cell
units), ``w, h`` the size as a fraction of the image. In pixels of an ``H × W`` image, a box of cell
``(i, j)`` (row, column) has centre ``((j + x) W / S_w, (i + y) H / S_h)`` and size ``(w W, h H)``. In a spec::

    head:        {type: yolo_grid_head, in: backbone.c4, num_classes: 3}
    loss:        {type: yolo_grid_loss, in: {boxes: head.boxes, objectness: head.objectness,
                                             class_logits: head.class_logits, images: image, targets: targets}}
    postprocess: {type: yolo_grid_postprocess, in: {boxes: head.boxes, ..., images: image}}

Unlike torchvision's detectors there is no background class: labels run from 1 to ``num_classes`` (as the
shapes and COCO datasets number them) and class channel ``c`` stands for label ``c + 1``; objectness says whether
there is an object at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image

from blocks.detection.postprocess import Candidates
from dagcv.registry import Fraction, Size, register_block

_GRID_OUTPUTS = {
    "boxes": "Tensor[B, H, W, num_boxes, 4]",
    "objectness": "Tensor[B, H, W, num_boxes]",
    "class_logits": "Logits[B, H, W, num_classes]",
}
_GRID_INPUTS = {
    "boxes": "Tensor[B, S_h, S_w, A, 4]",
    "objectness": "Tensor[B, S_h, S_w, A]",
    "class_logits": "Logits[B, S_h, S_w, K]",
    "images": "Image[B, C, H, W]",
}


@register_block(
    "yolo_grid_head",
    family="head",
    inputs={"features": "FeatureMap[B, C, H, W]"},
    outputs=_GRID_OUTPUTS,
    infer={"in_channels": "C"},
    param_count="9 * hidden_channels * in_channels + hidden_channels * (5 * num_boxes + num_classes)",
)
class YoloGridHead(nn.Module):
    """Per grid cell: ``num_boxes`` boxes ``(x, y, w, h)`` and objectness in ``[0, 1]``, and class logits.

    A 3×3 conv (batch norm, leaky ReLU 0.1, as in YOLO) then a 1×1 conv to ``5·num_boxes + num_classes``
    channels per cell. Outputs are channels-last: ``boxes`` ``B×S_h×S_w×num_boxes×4`` (sigmoid), ``objectness``
    ``B×S_h×S_w×num_boxes`` (sigmoid) and ``class_logits`` ``B×S_h×S_w×num_classes`` (raw; softmax gives
    P(class | object)).

    Args:
        in_channels: channels of the feature map (inferred from ``C``).
        num_classes: object classes (labels 1 to ``num_classes``; there is no background class).
        num_boxes: boxes predicted per cell.
        hidden_channels: channels of the 3×3 conv.

    Example:
        >>> out = YoloGridHead(in_channels=16, num_classes=3).eval()(torch.zeros(2, 16, 4, 4))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'boxes': (2, 4, 4, 2, 4), 'objectness': (2, 4, 4, 2), 'class_logits': (2, 4, 4, 3)}
    """

    def __init__(
        self, *, in_channels: Size = 512, num_classes: Size = 20, num_boxes: Size = 2, hidden_channels: Size = 256
    ) -> None:
        super().__init__()
        self.num_boxes = num_boxes
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.LeakyReLU(0.1),
        )
        self.predict = nn.Conv2d(hidden_channels, 5 * num_boxes + num_classes, kernel_size=1)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        out = self.predict(self.conv(features)).permute(0, 2, 3, 1)  # B × S_h × S_w × channels
        per_box = out[..., : 5 * self.num_boxes].unflatten(-1, (self.num_boxes, 5)).sigmoid()
        return {
            "boxes": per_box[..., :4],
            "objectness": per_box[..., 4],
            "class_logits": out[..., 5 * self.num_boxes :],
        }


# ---------------------------------------------------------------------------------------------------------------
# Decoding and target assignment


def grid_boxes_to_xyxy(boxes: Tensor, height: int, width: int) -> Tensor:
    """Cell-relative ``(x, y, w, h)`` boxes (``…×S_h×S_w×A×4``) as ``x1, y1, x2, y2`` pixels of an image.

    Example:
        >>> grid_boxes_to_xyxy(torch.tensor([[[[0.5, 0.5, 0.25, 0.5]]]]), 64, 64)  # one 1×1 grid, one box
        tensor([[[[24., 16., 40., 48.]]]])
    """
    s_h, s_w = boxes.shape[-4], boxes.shape[-3]
    rows = torch.arange(s_h, dtype=boxes.dtype, device=boxes.device).view(s_h, 1, 1)
    cols = torch.arange(s_w, dtype=boxes.dtype, device=boxes.device).view(1, s_w, 1)
    cx = (cols + boxes[..., 0]) * (width / s_w)
    cy = (rows + boxes[..., 1]) * (height / s_h)
    cxcywh = torch.stack([cx, cy, boxes[..., 2] * width, boxes[..., 3] * height], dim=-1)
    return box_convert(cxcywh, "cxcywh", "xyxy")


@dataclass
class GridTargets:
    """Dense training targets of a batch on its grid (``B×S_h×S_w×A`` per predictor, ``B×S_h×S_w`` per cell).

    Attributes:
        responsible: bool, the predictors that each learn one object.
        boxes: the ``(x, y, w, h)`` each responsible predictor should output (0 elsewhere).
        ious: IoU of each responsible predictor's current box with its object (its objectness target).
        has_object: bool, the cells that hold at least one assigned object.
        classes: class channel of each cell's object (its largest), -1 for cells without one.
    """

    responsible: Tensor
    boxes: Tensor
    ious: Tensor
    has_object: Tensor
    classes: Tensor


def assign_grid_targets(
    boxes: Tensor, targets: list[dict[str, Tensor]], height: int, width: int, num_classes: int
) -> GridTargets:
    """Assign every ground-truth box to the cell holding its centre and to that cell's best-overlapping predictor.

    Objects are taken largest first. Each picks, among its cell's predictors still free, the one whose current box
    (``boxes``, detached) has the highest IoU with it; ties go to the lower index. An object finding no free
    predictor is left out. A cell's class target is that of its largest object: a cell predicts one class.

    Args:
        boxes: predicted ``(x, y, w, h)``, ``B×S_h×S_w×A×4``.
        targets: per image ``boxes`` (``N×4`` xyxy pixels of the ``height × width`` image) and ``labels`` (1 to
            ``num_classes``).
        height: image height in pixels.
        width: image width in pixels.
        num_classes: number of object classes.

    Example:
        >>> pred = torch.full((1, 2, 2, 2, 4), 0.5)  # a 2×2 grid, 2 boxes per cell
        >>> pred[0, 1, 0, 1] = torch.tensor([0.5, 0.5, 0.25, 0.25])  # cell (1, 0), box 1: a 16×16 box at (16, 48)
        >>> t = assign_grid_targets(pred, [{"boxes": torch.tensor([[8.0, 40, 24, 56]]), "labels": torch.tensor([2])}],
        ...                         64, 64, num_classes=3)
        >>> t.responsible.nonzero().tolist(), t.ious[0, 1, 0, 1].item(), t.classes[0].tolist()
        ([[0, 1, 0, 1]], 1.0, [[-1, -1], [1, -1]])
    """
    b, s_h, s_w, a, _ = boxes.shape
    device = boxes.device
    responsible = torch.zeros(b, s_h, s_w, a, dtype=torch.bool, device=device)
    box_targets = torch.zeros(b, s_h, s_w, a, 4, dtype=boxes.dtype, device=device)
    ious = torch.zeros(b, s_h, s_w, a, dtype=boxes.dtype, device=device)
    classes = torch.full((b, s_h, s_w), -1, dtype=torch.int64, device=device)
    predicted = grid_boxes_to_xyxy(boxes.detach(), height, width)
    for n, target in enumerate(targets):
        gt = torch.as_tensor(target["boxes"], dtype=boxes.dtype, device=device).reshape(-1, 4)
        labels = torch.as_tensor(target["labels"], device=device).reshape(-1)
        if labels.numel() and not bool(((labels >= 1) & (labels <= num_classes)).all()):
            raise ValueError(f"yolo grid: labels must be 1..{num_classes} (num_classes), got {labels.tolist()}")
        cx, cy = (gt[:, 0] + gt[:, 2]) / 2 * (s_w / width), (gt[:, 1] + gt[:, 3]) / 2 * (s_h / height)
        cols, rows = cx.floor().long().clamp(0, s_w - 1), cy.floor().long().clamp(0, s_h - 1)
        wanted = torch.stack([cx - cols, cy - rows, (gt[:, 2] - gt[:, 0]) / width, (gt[:, 3] - gt[:, 1]) / height], 1)
        areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        for k in torch.argsort(areas, descending=True, stable=True).tolist():
            i, j = int(rows[k]), int(cols[k])
            overlap = box_iou(predicted[n, i, j], gt[k : k + 1]).squeeze(1)  # A
            free = ~responsible[n, i, j]
            if not bool(free.any()):
                continue  # every predictor of the cell already has a larger object
            best = int(torch.where(free, overlap, overlap.new_tensor(-1.0)).argmax())
            responsible[n, i, j, best] = True
            box_targets[n, i, j, best] = wanted[k]
            ious[n, i, j, best] = overlap[best]
            if classes[n, i, j] < 0:
                classes[n, i, j] = labels[k] - 1
    return GridTargets(responsible, box_targets, ious, classes >= 0, classes)


@register_block(
    "yolo_grid_loss",
    family="loss",
    inputs={**_GRID_INPUTS, "targets": "Targets"},
    outputs={"coordinates": "Loss[]", "objectness": "Loss[]", "classification": "Loss[]"},
    infer={"num_classes": "K"},
    default_mode="train",
)
class YoloGridLoss(nn.Module):
    """YOLOv1's sum-squared loss, averaged over the images of the batch.

    With targets from :func:`assign_grid_targets` (``1^obj_ia`` marks predictor ``a`` of cell ``i`` responsible
    for an object, ``1^obj_i`` a cell holding one, ``p_i`` the softmax of the class logits), per image:

    - ``coordinates`` = λ_coord Σ_ia 1^obj_ia [(x - x̂)² + (y - ŷ)² + (√w - √ŵ)² + (√h - √ĥ)²]
    - ``objectness``  = Σ_ia 1^obj_ia (C - IoU)² + λ_noobj Σ_ia (1 - 1^obj_ia) C², with IoU that of the predicted
      box and its object (no gradient through it)
    - ``classification`` = Σ_i 1^obj_i Σ_c (p_i(c) - 1[c = class_i])²

    The square roots weigh an error in a small box more than the same error in a large one.

    Args:
        num_classes: object classes (labels 1 to ``num_classes``; inferred from the class logits).
        lambda_coord: weight of the coordinate terms.
        lambda_noobj: weight of the objectness of predictors without an object.

    Example:
        >>> pred = torch.full((1, 2, 2, 1, 4), 0.5)
        >>> targets = [{"boxes": torch.tensor([[0.0, 0, 32, 32]]), "labels": torch.tensor([1])}]
        >>> loss = YoloGridLoss(num_classes=2)(pred, torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 2),
        ...                                    torch.zeros(1, 3, 64, 64), targets)
        >>> {k: round(v.item(), 4) for k, v in loss.items()}  # a perfect box (IoU 1) with objectness 0
        {'coordinates': 0.0, 'objectness': 1.0, 'classification': 0.5}
    """

    def __init__(self, *, num_classes: Size = 20, lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lambda_coord = lambda_coord
        self.lambda_noobj = lambda_noobj

    def forward(
        self,
        boxes: Tensor,
        objectness: Tensor,
        class_logits: Tensor,
        images: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        height, width = images.shape[-2:]
        t = assign_grid_targets(boxes, targets, height, width, self.num_classes)
        batch = boxes.shape[0]
        # x, y as they are; w, h through square roots.
        pred = torch.cat([boxes[..., :2], boxes[..., 2:].clamp(min=1e-9).sqrt()], dim=-1)
        want = torch.cat([t.boxes[..., :2], t.boxes[..., 2:].sqrt()], dim=-1)
        coordinates = self.lambda_coord * ((pred - want) ** 2).sum(-1)[t.responsible].sum()
        obj = ((objectness - t.ious) ** 2)[t.responsible].sum()
        noobj = (objectness**2)[~t.responsible].sum()
        one_hot = F.one_hot(t.classes.clamp(min=0), self.num_classes).to(class_logits.dtype)
        classification = ((class_logits.softmax(-1) - one_hot) ** 2).sum(-1)[t.has_object].sum()
        return {
            "coordinates": coordinates / batch,
            "objectness": (obj + self.lambda_noobj * noobj) / batch,
            "classification": classification / batch,
        }

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, lambda_coord={self.lambda_coord}, lambda_noobj={self.lambda_noobj}"


@register_block(
    "yolo_grid_postprocess",
    family="postprocess",
    inputs={**_GRID_INPUTS, "image_sizes": "ImageSizes[B, 2]?"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class YoloGridPostprocess(nn.Module):
    """Detections from the grid: score every (predictor, class) and keep the best after class-wise NMS.

    The score of class ``c`` for predictor ``a`` of a cell is ``objectness · P(c | object)`` (YOLO's
    class-specific confidence). Candidates above ``score_thresh`` (at most the ``topk_candidates`` best, as
    torchvision's dense detectors cap theirs, so NMS never sees a quadratic number of pairs on a large grid) are
    decoded to pixels of ``images`` (clipped to ``image_sizes`` when given, else to the image), suppressed per class
    by ``torchvision.ops.batched_nms`` and cut to the best ``detections_per_img``. Labels are ``c + 1``.

    Args:
        score_thresh: minimum score of a kept detection.
        nms_thresh: IoU above which NMS drops the lower-scored of two boxes of the same class.
        detections_per_img: detections kept per image.
        topk_candidates: the best candidates per image that go into NMS.

    Example:
        >>> pred = torch.full((1, 1, 1, 1, 4), 0.5)  # a 1×1 grid: one box in the middle, half the image
        >>> logits = torch.tensor([[[[0.0, 4.0]]]])
        >>> out = YoloGridPostprocess()(pred, torch.ones(1, 1, 1, 1), logits, torch.zeros(1, 3, 32, 64))
        >>> out[0]["boxes"].tolist(), out[0]["labels"].tolist(), round(out[0]["scores"].item(), 3)
        ([[16.0, 8.0, 48.0, 24.0]], [2], 0.982)
    """

    def __init__(
        self,
        *,
        score_thresh: Fraction = 0.05,
        nms_thresh: Fraction = 0.5,
        detections_per_img: Size = 100,
        topk_candidates: Candidates = 1000,
    ) -> None:
        super().__init__()
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def forward(
        self,
        boxes: Tensor,
        objectness: Tensor,
        class_logits: Tensor,
        images: Tensor,
        image_sizes: Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        height, width = images.shape[-2:]
        xyxy = grid_boxes_to_xyxy(boxes, height, width).flatten(1, 3)  # B × N × 4
        scores = (objectness.unsqueeze(-1) * class_logits.softmax(-1).unsqueeze(-2)).flatten(1, 3)  # B × N × K
        sizes = image_sizes.tolist() if image_sizes is not None else [[height, width]] * boxes.shape[0]
        detections = []
        for image_boxes, image_scores, size in zip(xyxy, scores, sizes, strict=True):
            keep = image_scores > self.score_thresh
            box_index, classes = keep.nonzero(as_tuple=True)
            kept_scores = image_scores[box_index, classes]
            if kept_scores.numel() > self.topk_candidates:
                kept_scores, top = kept_scores.topk(self.topk_candidates)
                box_index, classes = box_index[top], classes[top]
            kept_boxes = clip_boxes_to_image(image_boxes[box_index], (int(size[0]), int(size[1])))
            best = batched_nms(kept_boxes, kept_scores, classes, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": kept_boxes[best], "scores": kept_scores[best], "labels": classes[best] + 1})
        return detections

    def extra_repr(self) -> str:
        return (
            f"score_thresh={self.score_thresh}, nms_thresh={self.nms_thresh}, "
            f"detections_per_img={self.detections_per_img}, topk_candidates={self.topk_candidates}"
        )
