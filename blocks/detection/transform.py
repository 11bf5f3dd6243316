"""The detection image transform and its inverse: torchvision's ``GeneralizedRCNNTransform`` as blocks.

``rcnn_transform`` (Faster / Mask R-CNN, RetinaNet, FCOS) normalises, resizes each image so its shorter side is
``min_size`` (the longer at most ``max_size``), resizes the targets with it and pads the batch to a multiple of
``size_divisible``. ``fixed_size_transform`` (SSD) resizes every image to one fixed size instead. In evaluation,
``detection_rescale`` maps the detections back to the pixels of the original images, as
``GeneralizedRCNNTransform.postprocess`` does. In a spec::

    transform: {type: rcnn_transform, in: {images: image, targets: targets}, min_size: 800, max_size: 1333}
    ...
    rescale:   {type: detection_rescale, in: {detections: postprocess, image_sizes: transform.image_sizes,
                                              images: image}}

The blocks run torchvision's own code, so the resized sizes, the pixels and the random draw of a multi-scale
``min_size`` (one ``torch.empty(1).uniform_()`` per image in training, even with a single size) are the same as
in a torchvision detector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from dagcv.registry import Size, register_block

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_RESIZED_H = "rcnn_resize(H, H, W, min_size, max_size)"
_RESIZED_W = "rcnn_resize(W, H, W, min_size, max_size)"


def _transform(
    transform: GeneralizedRCNNTransform, images: Tensor, targets: list[dict[str, Tensor]] | None
) -> dict[str, Tensor | list[dict[str, Tensor]] | None]:
    """Run ``transform`` over a stacked batch (and its targets, when given, in either mode, as torchvision does)."""
    image_list, resized_targets = transform(list(images.unbind(0)), targets)
    return {
        "images": image_list.tensors,
        # On the CPU: every consumer needs plain ints (``.tolist()``), which then costs no device sync.
        "image_sizes": torch.tensor(image_list.image_sizes, dtype=torch.int64).reshape(-1, 2),
        "targets": resized_targets,
    }


@register_block(
    "rcnn_transform",
    family="layer",
    inputs={"images": "Image[B, 3, H, W]", "targets": "Targets[B, H, W]?"},
    outputs={
        "images": f"Image[B, 3, cdiv({_RESIZED_H}, size_divisible)*size_divisible, "
        f"cdiv({_RESIZED_W}, size_divisible)*size_divisible]",
        "image_sizes": "ImageSizes[B, 2]",
        "targets": f"Targets[B, {_RESIZED_H}, {_RESIZED_W}]",
    },
    requires={
        "len(image_mean) in [1, 3] and len(image_std) in [1, 3]": "one mean and one std per channel, or one for all",
    },
)
class RCNNTransform(nn.Module):
    """Normalise, resize (shorter side to ``min_size``, longer at most ``max_size``) and pad a detection batch.

    torchvision's ``GeneralizedRCNNTransform``: bilinear resize by the factor
    ``min(min_size / min(H, W), max_size / max(H, W))`` (sizes floored), boxes scaled by the same ratio, masks
    resized with nearest neighbours, and the batch zero-padded at the bottom and right to a multiple of
    ``size_divisible``. Returns ``images`` (padded), ``image_sizes`` (each image's ``(height, width)`` before
    padding, an int64 CPU tensor) and ``targets`` (resized; ``None`` when none are given, as in evaluation).

    Args:
        min_size: length of the shorter side after resizing.
        max_size: longest allowed longer side after resizing.
        image_mean: per-channel mean subtracted before resizing.
        image_std: per-channel standard deviation divided by.
        size_divisible: the padded batch's height and width are multiples of this.

    Example:
        >>> out = RCNNTransform(min_size=64, max_size=100)(torch.rand(2, 3, 48, 80))
        >>> out["images"].shape, out["image_sizes"].tolist(), out["targets"]
        (torch.Size([2, 3, 64, 128]), [[60, 100], [60, 100]], None)
    """

    def __init__(
        self,
        *,
        min_size: Size = 800,
        max_size: Size = 1333,
        image_mean: list[float] = IMAGENET_MEAN,
        image_std: list[float] = IMAGENET_STD,
        size_divisible: Size = 32,
    ) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(
            min_size, max_size, list(image_mean), list(image_std), size_divisible=size_divisible
        )

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor | list[dict[str, Tensor]] | None]:
        return _transform(self.transform, images, targets)


@register_block(
    "fixed_size_transform",
    family="layer",
    inputs={"images": "Image[B, 3, H, W]", "targets": "Targets[B, H, W]?"},
    outputs={
        "images": "Image[B, 3, height, width]",
        "image_sizes": "ImageSizes[B, 2]",
        "targets": "Targets[B, height, width]",
    },
    requires={
        "len(image_mean) in [1, 3] and len(image_std) in [1, 3]": "one mean and one std per channel, or one for all",
    },
)
class FixedSizeTransform(nn.Module):
    """Normalise and resize every image (and its targets) to ``height×width``, whatever its aspect ratio (SSD).

    torchvision's ``GeneralizedRCNNTransform`` with ``fixed_size`` and ``size_divisible=1``, as its SSD models
    build it: no padding, so ``image_sizes`` is ``(height, width)`` for every image. ``targets`` is ``None`` when
    none are given.

    Args:
        height: height of every resized image.
        width: width of every resized image.
        image_mean: per-channel mean subtracted before resizing.
        image_std: per-channel standard deviation divided by.

    Example:
        >>> out = FixedSizeTransform(height=30, width=20)(torch.rand(2, 3, 48, 80))
        >>> out["images"].shape, out["image_sizes"].tolist()
        (torch.Size([2, 3, 30, 20]), [[30, 20], [30, 20]])
    """

    def __init__(
        self,
        *,
        height: Size = 300,
        width: Size = 300,
        image_mean: list[float] = IMAGENET_MEAN,
        image_std: list[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        # torchvision reads ``fixed_size`` as (width, height); min and max size are unused with a fixed size.
        self.transform = GeneralizedRCNNTransform(
            min(height, width),
            max(height, width),
            list(image_mean),
            list(image_std),
            size_divisible=1,
            fixed_size=(width, height),
        )

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor | list[dict[str, Tensor]] | None]:
        return _transform(self.transform, images, targets)


@register_block(
    "detection_rescale",
    family="postprocess",
    inputs={"detections": "Detections", "image_sizes": "ImageSizes[B, 2]", "images": "Image[B, C, H, W]"},
    outputs={"detections": "Detections"},
    default_mode="eval",
)
class DetectionRescale(nn.Module):
    """Map detections from the resized frame back to the original images' pixels (evaluation).

    ``GeneralizedRCNNTransform.postprocess``: boxes scale by original over resized size per axis; masks (Mask
    R-CNN's ``N×1×28×28`` per-box masks), when present, are pasted into their boxes on the original canvas.
    ``images`` are the original, untransformed images: only their height and width are read.

    Example:
        >>> dets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.ones(1),
        ...          "labels": torch.ones(1, dtype=torch.int64)}]
        >>> out = DetectionRescale()(dets, torch.tensor([[50, 100]]), torch.zeros(1, 3, 100, 50))
        >>> out[0]["boxes"]
        tensor([[ 5., 40., 15., 80.]])
    """

    def forward(
        self, detections: list[dict[str, Tensor]], image_sizes: Tensor, images: Tensor
    ) -> list[dict[str, Tensor]]:
        original_size = [int(images.shape[-2]), int(images.shape[-1])]
        rescaled = []
        for detection, resized_size in zip(detections, image_sizes.tolist(), strict=True):
            out = dict(detection)
            out["boxes"] = resize_boxes(detection["boxes"], resized_size, original_size)
            if "masks" in detection:
                out["masks"] = paste_masks_in_image(detection["masks"], out["boxes"], original_size)
            rescaled.append(out)
        return rescaled
