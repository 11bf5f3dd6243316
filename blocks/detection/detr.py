"""DETR (Carion et al., 2020, "End-to-End Object Detection with Transformers"), compact.

A backbone's last stage goes through a 1×1 projection, gets a 2-D sine positional encoding and enters an
``nn.Transformer`` encoder–decoder whose decoder reads ``num_queries`` learned object queries. Each decoder
embedding becomes one detection: ``num_classes + 1`` class logits (the last one is "no object") and a normalized
``cx, cy, w, h`` box. Training matches predictions to targets one-to-one with the Hungarian algorithm and scores
the matched pairs (``set_criterion``); evaluation keeps every query's best real class (``detr_postprocess``).
No anchors, no NMS.

Like DETR's 50-line demo, the positional encoding is added once to the encoder input and the object queries
are the decoder input itself, so the stock ``nn.Transformer`` runs unchanged (the paper adds them at every
layer). Boxes inside the model are normalized ``cxcywh`` in [0, 1]; targets arrive as absolute xyxy pixels
(``Targets[B, H, W]``) and are normalized by the loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import MLP, box_convert, generalized_box_iou, generalized_box_iou_loss

from dagcv.registry import Fraction, Size, register_block


def sine_position_encoding(height: int, width: int, dim: int, *, temperature: float = 10000.0) -> Tensor:
    """DETR's 2-D sine encoding of an ``height×width`` grid as ``(height·width)×dim`` rows, row-major.

    Half the channels encode ``y``, half ``x``, each position scaled to ``(0, 2π]``; channel pairs
    ``(2i, 2i+1)`` hold ``sin`` and ``cos`` of ``pos / temperature^(2i/(dim/2))``.

    Example:
        >>> sine_position_encoding(2, 3, 8).shape
        torch.Size([6, 8])
    """
    if dim % 4:
        raise ValueError(f"sine_position_encoding: dim must be a multiple of 4, got {dim}")
    half = dim // 2
    freqs = temperature ** (2 * (torch.arange(half) // 2) / half)

    def encode(n: int) -> Tensor:  # n×half
        pos = torch.arange(1, n + 1, dtype=torch.float32) / (n + 1e-6) * (2 * math.pi)
        angles = pos[:, None] / freqs
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = encode(height)[:, None, :].expand(height, width, half)
    pos_x = encode(width)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=2).reshape(height * width, dim)


@register_block(
    "detr_transformer",
    family="neck",
    inputs={"x": "FeatureMap[B, C, H, W]"},
    outputs={"out": "Embedding[B, num_queries, d_model]"},
    infer={"in_channels": "C"},
    requires={
        "d_model % 4 == 0": "the sine position encoding splits d_model into four parts",
        "d_model % nhead == 0": "each attention head takes d_model / nhead channels",
    },
    param_count=(
        "(num_encoder_layers + "
        "num_decoder_layers) * (4 * d_model + 2 * dim_feedforward) * d_model + (num_queries + in_channels) * d_model"
    ),
)
class DetrTransformer(nn.Module):
    """DETR's transformer: a feature map in, one ``d_model`` embedding per learned object query out.

    ``input_proj`` (1×1 conv) maps the ``C`` backbone channels to ``d_model``; the ``H·W`` positions plus their
    sine encoding are the encoder's tokens, and the ``num_queries`` learned ``query_embed`` rows are the
    decoder's input (``nn.Transformer``, post-norm, batch first).

    Args:
        in_channels: channels of the input feature map (inferred from ``C``).
        d_model: width of the tokens and queries (a multiple of 4 and of ``nhead``).
        nhead: attention heads per layer.
        num_encoder_layers: encoder layers (at least 1: torch's ``TransformerEncoder`` reads its first layer).
        num_decoder_layers: decoder layers (at least 1).
        dim_feedforward: hidden width of each layer's feed-forward block.
        dropout: dropout inside the transformer layers.
        num_queries: object queries: the most objects one image can yield.

    Example:
        >>> net = DetrTransformer(in_channels=32, d_model=16, nhead=2, num_encoder_layers=1,
        ...                       num_decoder_layers=1, dim_feedforward=32, num_queries=5)
        >>> net(torch.zeros(2, 32, 3, 4)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        *,
        in_channels: Size,
        d_model: Size = 256,
        nhead: Size = 8,
        num_encoder_layers: Size = 6,
        num_decoder_layers: Size = 6,
        dim_feedforward: Size = 2048,
        dropout: Fraction = 0.1,
        num_queries: Size = 100,
    ) -> None:
        super().__init__()
        if d_model % 4:
            raise ValueError(f"detr_transformer: d_model must be a multiple of 4 (sine encoding), got {d_model}")
        self.input_proj = nn.Conv2d(in_channels, d_model, kernel_size=1)
        self.transformer = nn.Transformer(
            d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, batch_first=True
        )
        self.query_embed = nn.Embedding(num_queries, d_model)

    def forward(self, x: Tensor) -> Tensor:
        src = self.input_proj(x)
        batch, dim, height, width = src.shape
        pos = sine_position_encoding(height, width, dim).to(src)
        tokens = src.flatten(2).transpose(1, 2) + pos
        queries = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        return self.transformer(tokens, queries)


@register_block(
    "detr_head",
    family="head",
    inputs={"x": "Embedding[B, Q, D]"},
    outputs={"logits": "Logits[B, Q, num_classes + 1]", "boxes": "Tensor[B, Q, 4]"},
    infer={"d_model": "D"},
)
class DetrHead(nn.Module):
    """Per query: class logits (a linear layer) and a normalized ``cx, cy, w, h`` box (3-layer MLP, sigmoid).

    Args:
        d_model: width of the decoder embeddings (inferred from ``D``).
        num_classes: class ids ``0 .. num_classes - 1`` (an unused background id 0 included, as in DETR's
            COCO setup); the extra last logit is "no object".

    Example:
        >>> out = DetrHead(d_model=16, num_classes=4)(torch.zeros(2, 5, 16))
        >>> out["logits"].shape, out["boxes"].shape
        (torch.Size([2, 5, 5]), torch.Size([2, 5, 4]))
    """

    def __init__(self, *, d_model: Size, num_classes: Size) -> None:
        super().__init__()
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, [d_model, d_model, 4])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.class_embed(x), "boxes": self.bbox_embed(x).sigmoid()}


def normalize_targets(targets: list[dict[str, Tensor]], height: int, width: int) -> list[dict[str, Tensor]]:
    """Targets with absolute xyxy pixel boxes as ``labels`` and normalized ``cxcywh`` boxes of an image size.

    Example:
        >>> normalize_targets([{"boxes": torch.tensor([[0.0, 0.0, 32.0, 16.0]]), "labels": torch.tensor([2])}],
        ...                   64, 64)[0]["boxes"]
        tensor([[0.2500, 0.1250, 0.5000, 0.2500]])
    """
    out = []
    for target in targets:
        boxes = target["boxes"].as_subclass(Tensor).to(torch.float32)  # a tv_tensors.BoundingBoxes too
        scale = boxes.new_tensor([width, height, width, height])
        out.append({"labels": target["labels"], "boxes": box_convert(boxes, "xyxy", "cxcywh") / scale})
    return out


@register_block(
    "hungarian_matcher",
    family="loss",
    inputs={"logits": "Logits[B, Q, K]", "boxes": "Tensor[B, Q, 4]", "targets": "Targets[B, H, W]"},
    outputs={"indices": "Any"},
    infer={"image_height": "H", "image_width": "W"},
    default_mode="train",
)
class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, per image, at the lowest total cost.

    Query ``q`` and target ``j`` cost ``cost_class·(-p_q(c_j)) + cost_bbox·‖b_q - b_j‖₁ + cost_giou·(-GIoU(b_q,
    b_j))``, with ``p_q`` the softmax over all classes and boxes as normalized cxcywh (xyxy for the GIoU);
    ``scipy.optimize.linear_sum_assignment`` solves each image. Called as a block it takes absolute-pixel
    ``targets``; :meth:`match` takes normalized ones. Nothing here is differentiated.

    Args:
        image_height: height of the image the target boxes lie in (inferred from ``H``).
        image_width: width of the image the target boxes lie in (inferred from ``W``).
        cost_class: weight of the class cost.
        cost_bbox: weight of the L1 box cost.
        cost_giou: weight of the GIoU cost.

    Returns:
        For each image a pair ``(query_indices, target_indices)`` of int64 tensors of length
        ``min(num_queries, num_targets)``, sorted by query.

    Example:
        >>> matcher = HungarianMatcher(image_height=10, image_width=10)
        >>> boxes = torch.tensor([[[0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]])  # normalized cxcywh
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1])}]
        >>> matcher(torch.zeros(1, 2, 3), boxes, targets)
        [(tensor([1]), tensor([0]))]
    """

    def __init__(
        self,
        *,
        image_height: Size,
        image_width: Size,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
    ) -> None:
        super().__init__()
        self.image_height, self.image_width = image_height, image_width
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def forward(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        return self.match(logits, boxes, normalize_targets(targets, self.image_height, self.image_width))

    @torch.no_grad()
    def match(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """The assignment for predictions and *normalized* targets (``labels``, ``boxes`` as cxcywh)."""
        indices = []
        for probs, pred, target in zip(logits.softmax(-1), boxes, targets, strict=True):
            labels, tgt = target["labels"], target["boxes"].to(pred)
            cost = (
                -self.cost_class * probs[:, labels]
                + self.cost_bbox * torch.cdist(pred, tgt, p=1)
                - self.cost_giou * generalized_box_iou(_xyxy(pred), _xyxy(tgt))
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"


def _xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


@register_block(
    "set_criterion",
    family="loss",
    inputs={"logits": "Logits[B, Q, K]", "boxes": "Tensor[B, Q, 4]", "targets": "Targets[B, H, W]"},
    outputs={"loss_ce": "Loss[]", "loss_bbox": "Loss[]", "loss_giou": "Loss[]"},
    infer={"num_classes": "K - 1", "image_height": "H", "image_width": "W"},
    default_mode="train",
)
class SetCriterion(nn.Module):
    """DETR's set loss: Hungarian matching, then a class loss on every query and box losses on matched ones.

    With ``σ`` the assignment of :class:`HungarianMatcher` and ``N = max(1, number of target boxes)``:

    - ``loss_ce``: cross-entropy of every query's logits against its matched label, or "no object"
      (``num_classes``) when unmatched; class weights 1, and ``eos_coef`` for "no object" (a weighted mean).
    - ``loss_bbox``: ``Σ_matched ‖b_q - b_σ(q)‖₁ / N`` over normalized cxcywh boxes.
    - ``loss_giou``: ``Σ_matched (1 - GIoU(b_q, b_σ(q))) / N``.

    The spec weighs the three (``train.losses``; DETR uses 1, 5 and 2). The matcher is the ``matcher``
    submodule, a :class:`HungarianMatcher` with the ``cost_*`` weights.

    Args:
        num_classes: real class ids ``0 .. num_classes - 1`` (inferred: the logits' last dim minus one).
        image_height: height of the image the target boxes lie in (inferred from ``H``).
        image_width: width of the image the target boxes lie in (inferred from ``W``).
        eos_coef: weight of the "no object" class in the class loss.
        cost_class: the matcher's class-cost weight.
        cost_bbox: the matcher's L1 box-cost weight.
        cost_giou: the matcher's GIoU-cost weight.
    """

    empty_weight: Tensor

    def __init__(
        self,
        *,
        num_classes: Size,
        image_height: Size,
        image_width: Size,
        eos_coef: Fraction = 0.1,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.eos_coef = num_classes, eos_coef
        self.image_height, self.image_width = image_height, image_width
        self.matcher = HungarianMatcher(
            image_height=image_height,
            image_width=image_width,
            cost_class=cost_class,
            cost_bbox=cost_bbox,
            cost_giou=cost_giou,
        )
        weight = torch.ones(num_classes + 1)
        weight[-1] = eos_coef
        self.register_buffer("empty_weight", weight, persistent=False)

    def forward(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        targets = normalize_targets(targets, self.image_height, self.image_width)
        indices = self.matcher.match(logits, boxes, targets)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(logits.device)
        query_idx = torch.cat([q for q, _ in indices]).to(logits.device)

        # Every query learns a class; unmatched ones learn "no object" (down-weighted by eos_coef).
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        target_classes[batch_idx, query_idx] = matched_labels.to(logits.device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.empty_weight)

        # Only matched queries get box losses, summed and divided by the number of target boxes.
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
        pred = boxes[batch_idx, query_idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)]).to(pred)
        loss_bbox = F.l1_loss(pred, tgt, reduction="sum") / num_boxes
        loss_giou = generalized_box_iou_loss(_xyxy(pred), _xyxy(tgt), reduction="sum") / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, eos_coef={self.eos_coef}"


@register_block(
    "detr_postprocess",
    family="postprocess",
    inputs={"logits": "Logits[B, Q, K]", "boxes": "Tensor[B, Q, 4]", "image": "Image[B, C, H, W]"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class DetrPostprocess(nn.Module):
    """One detection per query: its best real class and score, its box in absolute xyxy pixels of ``image``.

    Scores are the softmax over all ``K`` logits with "no object" (the last) left out of the maximum, as in
    DETR; boxes are scaled by the width and height of ``image`` (only its size is read). Nothing is
    thresholded: every image gets ``Q`` detections, which suits mAP.

    Example:
        >>> logits = torch.tensor([[[0.0, 2.0, 0.0]]])  # one query, classes 0 and 1, then "no object"
        >>> boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25]]])
        >>> det = DetrPostprocess()(logits, boxes, torch.zeros(1, 3, 8, 16))[0]
        >>> det["boxes"], det["labels"], round(det["scores"].item(), 4)
        (tensor([[ 4.,  3., 12.,  5.]]), tensor([1]), 0.787)
    """

    def forward(self, logits: Tensor, boxes: Tensor, image: Tensor) -> list[dict[str, Any]]:
        height, width = image.shape[-2:]
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        scale = boxes.new_tensor([width, height, width, height])
        xyxy = _xyxy(boxes) * scale
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(xyxy, scores, labels, strict=True)]
