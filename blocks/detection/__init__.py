"""Detection blocks, one module per stage or method: the image transform, anchors, and each detector's head,
loss and post-processing. Every module is imported here so that its blocks register."""

from blocks.detection import anchors, detr, fcos, retinanet, roi_heads, rpn, ssd, transform, yolo  # noqa: F401
