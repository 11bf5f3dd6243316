"""Synthetic shapes for detection and segmentation: squares, circles and triangles on a soft background.

``generate_shapes`` draws images in memory, deterministically by seed: each holds 1–4 filled shapes of random
colour, size and position, kept inside the image. Later shapes occlude earlier ones, and every instance mask is
the *visible* part of its shape; its box is the tight box of that mask. Classes are 1 square, 2 circle,
3 triangle (0 is the background of the semantic mask).

``write_coco`` writes them as a real COCO dataset; the ``shapes_coco`` block reads the instances back, and the
``shapes_segmentation`` block the semantic masks::

    root/<split>/images/000000.png          RGB images
    root/<split>/semantic/000000.png        class id per pixel (8-bit grey)
    root/<split>/annotations/instances.json COCO instances: bbox [x, y, w, h], area, iscrowd 0, RLE segmentation

Boxes use pixel-edge coordinates: a mask whose columns run ``x1..x2-1`` has ``x1, x2`` as its x extent, so a
COCO ``[x, y, w, h]`` is ``[x1, y1, x2 - x1, y2 - y1]`` and ``w`` counts pixels (as ``pycocotools`` computes it).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from dagcv.registry import register_block

CLASSES = ("square", "circle", "triangle")  # category ids 1, 2, 3; 0 is the background
MAX_OBJECTS = 4
MIN_VISIBLE_AREA = 10  # pixels; an object occluded below this is dropped
MIN_VISIBLE_FRACTION = 0.5  # a new shape is re-placed if it would hide more than half of an earlier one
PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class ShapesSample:
    """One generated image and its annotations (numpy arrays; ``N`` objects).

    Attributes:
        image: ``H×W×3`` uint8 RGB.
        masks: ``N×H×W`` uint8 visible instance masks (0/1), in drawing order.
        boxes: ``N×4`` int64 tight boxes of the masks, xyxy in pixel-edge coordinates.
        labels: ``N`` int64 class ids (1 square, 2 circle, 3 triangle).
        semantic: ``H×W`` uint8 class id per pixel, 0 for the background.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    semantic: np.ndarray


def tight_box(mask: np.ndarray) -> np.ndarray:
    """The xyxy box (pixel edges) around the nonzero pixels of a non-empty ``H×W`` mask.

    Example:
        >>> tight_box(np.array([[0, 0, 0], [0, 1, 1]]))
        array([1, 1, 3, 2])
    """
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.int64)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient between two random colours along a random direction, plus faint noise."""
    start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    image = start + (end - start) * ramp[..., None] + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """A filled shape of class ``label`` inside an ``s×s`` cell placed fully inside the image (pixel-centre test)."""
    short = min(height, width)
    size = int(rng.integers(max(6, short // 6), max(7, short // 2) + 1))
    size = min(size, short)
    x0, y0 = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    u, v = (xs - x0) / size, (ys - y0) / size  # cell coordinates in [0, 1]
    if label == 1:
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    elif label == 2:
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    else:  # an isosceles triangle pointing up or down
        if rng.integers(2):
            v = 1 - v
        inside = (v <= 1) & (np.abs(u - 0.5) <= v / 2)
    return inside


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background under the shape (redrawn a few times if too close)."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(10):
        if np.abs(colour - background).mean() > 60:
            break
        colour = rng.integers(0, 256, size=3)
    return colour.astype(np.uint8)


def generate_sample(rng: np.random.Generator, *, height: int, width: int) -> ShapesSample:
    """Draw one image with ``rng``: a background, then 1–4 shapes painted in order, each occluding the last."""
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int64)  # index of the shape that shows at each pixel
    labels: list[int] = []
    areas: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(1, len(CLASSES) + 1))
        for _ in range(PLACEMENT_TRIES):
            shape = _shape_mask(rng, label, height, width)
            # Overlap only slightly: every earlier shape must keep at least half of its own area visible.
            if all(((owner == k) & ~shape).sum() >= MIN_VISIBLE_FRACTION * area for k, area in enumerate(areas)):
                break
        else:
            continue  # no room for this shape
        image[shape] = _colour(rng, image[shape].mean(axis=0))
        owner[shape] = len(labels)
        labels.append(label)
        areas.append(int(shape.sum()))
    kept = [k for k in range(len(labels)) if (owner == k).sum() >= MIN_VISIBLE_AREA]
    masks = np.stack([owner == k for k in kept]).astype(np.uint8)
    class_of = np.array([0, *labels], dtype=np.uint8)
    semantic = class_of[owner + 1] * np.isin(owner, kept)
    return ShapesSample(
        image=image,
        masks=masks,
        boxes=np.stack([tight_box(m) for m in masks]),
        labels=np.array([labels[k] for k in kept], dtype=np.int64),
        semantic=semantic.astype(np.uint8),
    )


def generate_shapes(n: int, *, height: int = 64, width: int = 64, seed: int = 0) -> list[ShapesSample]:
    """``n`` shape images; image ``i`` depends only on ``(seed, i)``, so a longer run extends a shorter one.

    Example:
        >>> samples = generate_shapes(3, height=32, width=48, seed=0)
        >>> samples[0].image.shape, [len(s.labels) for s in samples]
        ((32, 48, 3), [3, 2, 4])
    """
    if height < 6 or width < 6:
        raise ValueError(f"generate_shapes: height and width must be at least 6, got {height}×{width}")
    return [generate_sample(np.random.default_rng([seed, i]), height=height, width=width) for i in range(n)]


def _coco_annotations(sample: ShapesSample, image_id: int, first_id: int) -> list[dict[str, Any]]:
    annotations = []
    for k, (mask, box, label) in enumerate(zip(sample.masks, sample.boxes, sample.labels, strict=True)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = (int(c) for c in box)
        annotations.append({
            "id": first_id + k, "image_id": image_id, "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()), "iscrowd": 0, "segmentation": rle,
        })  # fmt: skip
    return annotations


def write_coco(root: str | Path, n: int, *, height: int = 64, width: int = 64, seed: int = 0,
               split: str = "train") -> Path:  # fmt: skip
    """Generate ``n`` images and write them as the COCO dataset ``root/<split>``; returns that folder.

    The split is written into a temporary sibling folder and renamed into place at the end, so an interrupted
    run leaves no half dataset. An existing split is never overwritten (``FileExistsError``).

    Example:
        >>> import tempfile
        >>> folder = write_coco(tempfile.mkdtemp(), 2, height=32, width=32, seed=1)
        >>> sorted(p.name for p in folder.iterdir())
        ['annotations', 'images', 'semantic']
    """
    target = Path(root) / split
    if target.exists():
        raise FileExistsError(f"write_coco: {target} already exists; remove it or pick another root or split")
    temp = Path(root) / f".{split}.partial-{uuid.uuid4().hex}"
    try:
        for sub in ("images", "semantic", "annotations"):
            (temp / sub).mkdir(parents=True)
        images, annotations = [], []
        for i, sample in enumerate(generate_shapes(n, height=height, width=width, seed=seed)):
            name = f"{i:06d}.png"
            Image.fromarray(sample.image).save(temp / "images" / name)
            Image.fromarray(sample.semantic).save(temp / "semantic" / name)
            images.append({"id": i, "file_name": name, "height": height, "width": width})
            annotations += _coco_annotations(sample, i, first_id=len(annotations) + 1)
        instances = {
            "info": {"description": "dagcv synthetic shapes", "seed": seed, "height": height, "width": width},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES, 1)],
        }
        (temp / "annotations" / "instances.json").write_text(json.dumps(instances))
        temp.rename(target)  # fails if another writer got there first; that split is whole too
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


class CocoInstances(Dataset[tuple[Tensor, dict[str, Any]]]):
    """A COCO instances split as ``(image, target)`` samples in torchvision's v2 detection layout.

    The image is float32 ``3×H×W`` in ``[0, 1]``; the target holds ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY),
    ``labels`` (int64 category ids), ``masks`` (``tv_tensors.Mask``, ``N×H×W`` uint8) and ``image_id``. The
    ``v2`` transforms move boxes and masks together with the image.

    Args:
        folder: the split folder holding ``images/`` and ``annotations/instances.json``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(str(self.folder / "annotations" / "instances.json"))
        self.ids = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        info = self.coco.imgs[self.ids[index]]
        height, width = info["height"], info["width"]
        pixels = np.asarray(Image.open(self.folder / "images" / info["file_name"]).convert("RGB"))
        image = tv_tensors.Image(torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32) / 255)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"]))
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = [self.coco.annToMask(a) for a in anns]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(
                torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
            ),
            "image_id": info["id"],
        }
        return image, target

    @staticmethod
    def collate_fn(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
        """Stack the images (all the same size) and keep the targets as a list: objects per image differ."""
        return torch.stack([image for image, _ in batch]), [target for _, target in batch]


class _ShapesSplit:
    """What both shapes dataset blocks share: their parameters, writing a missing split, and checking it."""

    block = ""  # the registered name, for messages
    num_classes = len(CLASSES) + 1  # with the background

    def __init__(
        self, *, root: str, split: str = "train", generate: int = 0, height: int = 64, width: int = 64, seed: int = 0
    ) -> None:
        self.root = root
        self.split = split
        self.generate = generate
        self.height = height
        self.width = width
        self.seed = seed

    def _generated_split(self) -> Path:
        """The split folder, written by ``write_coco`` first when it is missing and ``generate > 0``."""
        folder = Path(self.root) / self.split
        if not folder.exists() and self.generate > 0:
            try:
                write_coco(self.root, self.generate, height=self.height, width=self.width, seed=self.seed,
                           split=self.split)  # fmt: skip
            except OSError:
                if not folder.exists():  # not a concurrent writer that finished first
                    raise
        return folder

    def _missing(self, what: str) -> None:
        raise FileNotFoundError(f"{self.block}: {what}. Set generate: N (N > 0) to write N synthetic images there.")

    def _check_count(self, count: int, where: Path) -> None:
        """A split written for another ``generate`` is not silently reused (a sweep over it would compare nothing)."""
        if self.generate > 0 and count != self.generate:
            raise ValueError(
                f"{self.block}: {where} holds {count} images but the block asks to generate {self.generate}; "
                "delete the folder to write it again, or use another root"
            )

    def _check_sizes(self, sizes: set[tuple[int, int]], where: Path) -> None:
        if sizes - {(self.height, self.width)}:
            found = ", ".join(f"{h}×{w}" for h, w in sorted(sizes))
            raise ValueError(
                f"{self.block}: {where} holds {found} images but the block declares height={self.height}, "
                f"width={self.width}; set them to match or use another root"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _located(path: Path) -> str:
    """``path``, saying what a relative path is relative to."""
    return str(path) if path.is_absolute() else f"{path} (relative to the working directory {Path.cwd()})"


@register_block(
    "shapes_coco",
    family="data",
    module=False,
    outputs={"image": "Image[B, 3, height, width]", "targets": "Targets"},
)
class ShapesCoco(_ShapesSplit):
    """Synthetic squares, circles and triangles (classes 1–3) from a COCO folder, generated on demand.

    Reads ``<root>/<split>/annotations/instances.json`` and its images with ``pycocotools``; samples are
    ``(image, target)`` as ``CocoInstances`` describes. With ``generate > 0`` a missing split is first written
    by ``write_coco`` from ``height``, ``width`` and ``seed``, so a spec or test needs no shipped files; an
    existing split is read as it is. Batch with ``CocoInstances.collate_fn``: targets stay a list.

    Args:
        root: folder holding the split folders.
        split: the split folder to read (``train``, ``val``, ...).
        generate: number of images to generate when the split is missing; 0 never generates (and accepts any
            number of images), N > 0 also refuses a split that holds another number.
        height: image height (checked against the files).
        width: image width (checked against the files).
        seed: seed of the generated images.

    Example:
        >>> import tempfile
        >>> data = ShapesCoco(root=tempfile.mkdtemp(), generate=4, height=32, width=48).dataset()
        >>> image, target = data[0]
        >>> len(data), image.shape, target["labels"].tolist(), target["masks"].shape
        (4, torch.Size([3, 32, 48]), [3, 2, 3], torch.Size([3, 32, 48]))
    """

    block = "shapes_coco"

    def annotation_file(self) -> Path:
        return Path(self.root) / self.split / "annotations" / "instances.json"

    def dataset(self) -> CocoInstances:
        """Generate the split if asked and missing, then index it (images are decoded per sample)."""
        folder = self._generated_split()
        path = self.annotation_file()
        if not path.is_file():
            self._missing(f"missing {_located(path)}")
        data = CocoInstances(folder)
        self._check_sizes({(img["height"], img["width"]) for img in data.coco.imgs.values()}, path)
        self._check_count(len(data.coco.imgs), path)
        return data


class SemanticMasks(Dataset[tuple[Tensor, Tensor]]):
    """The ``images/`` and ``semantic/`` PNGs of a split as ``(image, mask)`` samples, decoded once.

    The image is a ``tv_tensors.Image``, float32 ``3×H×W`` in ``[0, 1]``; the mask a ``tv_tensors.Mask``, int64
    ``H×W`` class ids (0 the background). The ``v2`` transforms move the mask with the image (nearest neighbour
    for the mask), and the default collate stacks both.

    Args:
        folder: the split folder holding ``images/*.png`` and ``semantic/*.png`` of the same names.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.names = sorted(p.name for p in (self.folder / "semantic").glob("*.png"))
        missing = [n for n in self.names if not (self.folder / "images" / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.folder / 'images'}: no image for the masks {', '.join(missing[:5])}")
        images = [np.asarray(Image.open(self.folder / "images" / n).convert("RGB")) for n in self.names]
        masks = [np.asarray(Image.open(self.folder / "semantic" / n)) for n in self.names]
        for name, image, mask in zip(self.names, images, masks, strict=True):
            if mask.ndim != 2 or mask.shape != image.shape[:2]:
                raise ValueError(f"{self.folder}: mask {name} is {mask.shape}, its image {image.shape[:2]}")
        self.sizes = sorted({mask.shape for mask in masks})
        if len(self.sizes) > 1:
            found = ", ".join(f"{h}×{w}" for h, w in self.sizes)
            raise ValueError(f"{self.folder}: images of several sizes ({found}); a batch needs one size")
        # uint8 in memory (4 bytes a pixel instead of 16); each sample converts its own.
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) if images else torch.zeros(0, 3, 0, 0)
        self.masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, 0, 0, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        # Same arithmetic as CocoInstances: to float32, then divide by 255.
        image = tv_tensors.Image(self.images[index].to(torch.float32) / 255)
        return image, tv_tensors.Mask(self.masks[index].to(torch.int64))


@register_block(
    "shapes_segmentation",
    family="data",
    module=False,
    outputs={"image": "Image[B, 3, height, width]", "mask": "Labels[B, height, width]"},
)
class ShapesSegmentation(_ShapesSplit):
    """Synthetic shapes for semantic segmentation: images and their class-id masks, generated on demand.

    Reads ``<root>/<split>/images/*.png`` and ``<root>/<split>/semantic/*.png`` as ``SemanticMasks`` describes:
    masks hold 0 for the background, 1 square, 2 circle, 3 triangle (``num_classes = 4``). With ``generate > 0``
    a missing split is first written by ``write_coco`` from ``height``, ``width`` and ``seed`` (the same files
    ``shapes_coco`` reads, so both blocks can share a root); an existing split is read as it is.

    Args:
        root: folder holding the split folders.
        split: the split folder to read (``train``, ``val``, ...).
        generate: number of images to generate when the split is missing; 0 never generates (and accepts any
            number of images), N > 0 also refuses a split that holds another number.
        height: image height (checked against the files).
        width: image width (checked against the files).
        seed: seed of the generated images.

    Example:
        >>> import tempfile
        >>> data = ShapesSegmentation(root=tempfile.mkdtemp(), generate=4, height=32, width=48).dataset()
        >>> image, mask = data[0]
        >>> len(data), image.shape, mask.shape, mask.dtype, mask.unique().tolist()
        (4, torch.Size([3, 32, 48]), torch.Size([32, 48]), torch.int64, [0, 2, 3])
    """

    block = "shapes_segmentation"

    def dataset(self) -> SemanticMasks:
        """Generate the split if asked and missing, then decode every image and mask of it."""
        folder = self._generated_split()
        semantic = folder / "semantic"
        if not semantic.is_dir() or not any(semantic.glob("*.png")):
            self._missing(f"no masks in {_located(semantic)}")
        data = SemanticMasks(folder)
        self._check_sizes(set(data.sizes), folder)
        self._check_count(len(data), folder)
        return data
