"""What the dense detectors' post-processing blocks share (RetinaNet, FCOS, SSD).

Each scores every (anchor or point, class) pair, keeps the candidates above ``score_thresh`` and the best
``topk_candidates`` of them per level (per class for SSD), decodes and clips their boxes, then runs class-wise NMS
over all of an image's candidates and keeps the best ``detections_per_img``: torchvision's
``postprocess_detections`` of each model, step for step, so the outputs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from annotated_types import Gt, Le
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

# Candidates that go into NMS, per level or per image. NMS is quadratic, and when `dagcv compile` runs a detector
# on random example values nearly every score passes the threshold: past ten thousand it would take minutes.
Candidates = Annotated[int, Gt(0), Le(10_000)]


class DensePostprocess(nn.Module):
    """The four settings of a dense detector's post-processing, its candidate selection and its NMS.

    Subclasses keep their own constructor, with their model's defaults, and call this one.
    """

    def __init__(
        self, *, score_thresh: float, nms_thresh: float, detections_per_img: int, topk_candidates: int
    ) -> None:
        super().__init__()
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def top_candidates(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The scores of a flat tensor above ``score_thresh``, at most ``topk_candidates`` of them, best first,
        and their indices into ``scores``.

        Example:
            >>> post = DensePostprocess(score_thresh=0.1, nms_thresh=0.5, detections_per_img=10, topk_candidates=2)
            >>> post.top_candidates(torch.tensor([0.05, 0.3, 0.9, 0.2]))
            (tensor([0.9000, 0.3000]), tensor([2, 1]))
        """
        candidates = torch.where(scores > self.score_thresh)[0]
        scores, order = scores[candidates].topk(min(self.topk_candidates, candidates.size(0)))
        return scores, candidates[order]

    def suppress(
        self, boxes: Sequence[Tensor], scores: Sequence[Tensor], labels: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """One image's detections from its candidates in pieces (levels or classes): class-wise NMS at
        ``nms_thresh``, then the best ``detections_per_img``."""
        all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = box_ops.batched_nms(all_boxes, all_scores, all_labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": all_boxes[keep], "scores": all_scores[keep], "labels": all_labels[keep]}

    def extra_repr(self) -> str:
        return (
            f"score_thresh={self.score_thresh}, nms_thresh={self.nms_thresh}, "
            f"detections_per_img={self.detections_per_img}, topk_candidates={self.topk_candidates}"
        )
