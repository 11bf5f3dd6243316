"""Synthetic shapes: the generator's invariants, the COCO round trip, and the ``shapes_coco`` dataset block."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

import blocks.shapes
from blocks.shapes import CocoInstances, ShapesCoco, generate_shapes, tight_box, write_coco
from dagcv.registry import registry
from dagcv.types import evaluate_dims, parse_port_type

SIZE = {"height": 40, "width": 56}


@pytest.fixture(scope="module")
def samples() -> list[blocks.shapes.ShapesSample]:
    return generate_shapes(40, seed=3, **SIZE)


@pytest.fixture(scope="module")
def coco_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("shapes"), 12, seed=3, **SIZE)


# ---------------------------------------------------------------------------------------------------------------
# The generator


def test_the_same_seed_gives_the_same_images_and_a_longer_run_extends_a_shorter_one() -> None:
    a, b = generate_shapes(6, seed=5, **SIZE), generate_shapes(9, seed=5, **SIZE)
    for x, y in zip(a, b[:6], strict=True):
        for field in ("image", "masks", "boxes", "labels", "semantic"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
    other = generate_shapes(6, seed=6, **SIZE)
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, other, strict=True))


def test_samples_have_one_to_four_objects_of_the_three_classes(samples: list) -> None:
    counts = {len(s.labels) for s in samples}
    assert counts <= {1, 2, 3, 4} and len(counts) > 1
    assert set(np.concatenate([s.labels for s in samples]).tolist()) == {1, 2, 3}
    for s in samples:
        n = len(s.labels)
        assert s.image.shape == (40, 56, 3) and s.image.dtype == np.uint8
        assert s.masks.shape == (n, 40, 56) and s.masks.dtype == np.uint8 and set(np.unique(s.masks)) <= {0, 1}
        assert s.boxes.shape == (n, 4) and s.labels.dtype == np.int64
        assert (s.masks.sum(axis=(1, 2)) >= blocks.shapes.MIN_VISIBLE_AREA).all()


def test_boxes_are_the_tight_boxes_of_the_visible_masks(samples: list) -> None:
    for s in samples:
        for mask, box in zip(s.masks, s.boxes, strict=True):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 40
            assert mask[y1:y2, x1:x2].sum() == mask.sum()  # the box holds the whole mask...
            edges = mask[y1, x1:x2], mask[y2 - 1, x1:x2], mask[y1:y2, x1], mask[y1:y2, x2 - 1]
            assert all(edge.any() for edge in edges)  # ...and each of its edges touches it


def test_visible_masks_are_disjoint_and_later_shapes_occlude_earlier_ones(samples: list) -> None:
    assert all(s.masks.sum(axis=0).max() <= 1 for s in samples)  # one owner per pixel
    # Some earlier shape lost pixels to a later one: its visible mask is not its full (convex) shape, so a
    # pixel between two of its pixels on a row belongs to another object.
    occluded = 0
    for s in samples:
        for k, mask in enumerate(s.masks):
            later = s.masks[k + 1 :].sum(axis=0)
            for row, cover in zip(mask, later, strict=True):
                xs = np.nonzero(row)[0]
                if len(xs) and cover[xs.min() : xs.max() + 1].any():
                    occluded += 1
    assert occluded > 0


def test_the_semantic_mask_agrees_with_the_instances(samples: list) -> None:
    for s in samples:
        expected = (s.masks * s.labels[:, None, None]).sum(axis=0)
        np.testing.assert_array_equal(s.semantic, expected)
        assert s.semantic.dtype == np.uint8


def test_tiny_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least 6"):
        generate_shapes(1, height=5, width=32)


# ---------------------------------------------------------------------------------------------------------------
# COCO files


def test_write_coco_round_trips_through_pycocotools(coco_split: Path) -> None:
    expected = generate_shapes(12, seed=3, **SIZE)
    data = CocoInstances(coco_split)
    coco = data.coco
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["square", "circle", "triangle"]
    assert sorted(coco.imgs) == list(range(12))
    for i, sample in enumerate(expected):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=i))
        assert [a["category_id"] for a in anns] == sample.labels.tolist()
        for ann, mask, (x1, y1, x2, y2) in zip(anns, sample.masks, sample.boxes, strict=True):
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["iscrowd"] == 0
            assert ann["area"] == mask.sum()
            np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]), mask)
            np.testing.assert_array_equal(mask_utils.toBbox(ann["segmentation"]), ann["bbox"])
        name = coco.imgs[i]["file_name"]
        np.testing.assert_array_equal(np.asarray(Image.open(coco_split / "images" / name)), sample.image)
        np.testing.assert_array_equal(np.asarray(Image.open(coco_split / "semantic" / name)), sample.semantic)
    ids = [a["id"] for a in coco.anns.values()]
    assert len(set(ids)) == len(ids)


def test_write_coco_leaves_no_partial_folder_and_never_overwrites(tmp_path: Path, coco_split: Path) -> None:
    write_coco(tmp_path, 2, height=16, width=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    with pytest.raises(FileExistsError, match=str(tmp_path / "train")):
        write_coco(tmp_path, 2, height=16, width=16)


def test_an_interrupted_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(blocks.shapes.json, "dumps", fail)
    with pytest.raises(KeyboardInterrupt):
        write_coco(tmp_path, 3, height=16, width=16)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# The dataset block


def test_samples_have_the_documented_types_and_the_contract_shapes(coco_split: Path) -> None:
    block = ShapesCoco(root=str(coco_split.parent), **SIZE)
    data = block.dataset()
    contract = registry().get("shapes_coco")
    assert contract is not None and contract.is_source and not contract.module
    assert [p.name for p in contract.outputs] == ["image", "targets"]
    images, targets = CocoInstances.collate_fn([data[0], data[1]])
    want = [d.value for d in evaluate_dims(parse_port_type(contract.outputs[0].type).dims, {"B": 2, **SIZE})]
    assert list(images.shape) == want and images.dtype == torch.float32
    assert isinstance(targets, list) and len(targets) == 2
    expected = generate_shapes(2, seed=3, **SIZE)
    for (image, target), sample in zip([data[0], data[1]], expected, strict=True):
        assert image.min() >= 0 and image.max() <= 1
        torch.testing.assert_close(image, torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255)
        boxes, masks = target["boxes"], target["masks"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
        assert tuple(boxes.canvas_size) == (40, 56)
        assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
        assert target["labels"].dtype == torch.int64
        torch.testing.assert_close(boxes.as_subclass(torch.Tensor), torch.from_numpy(sample.boxes).float())
        torch.testing.assert_close(masks.as_subclass(torch.Tensor), torch.from_numpy(sample.masks))
        torch.testing.assert_close(target["labels"], torch.from_numpy(sample.labels))
    assert [data[i][1]["image_id"] for i in range(3)] == [0, 1, 2]


def test_generate_writes_a_missing_split_once(tmp_path: Path) -> None:
    block = ShapesCoco(root=str(tmp_path), split="val", generate=3, height=24, width=24, seed=1)
    assert len(block.dataset()) == 3
    stamp = (tmp_path / "val" / "annotations" / "instances.json").stat().st_mtime_ns
    assert len(block.dataset()) == 3  # read as it is
    assert (tmp_path / "val" / "annotations" / "instances.json").stat().st_mtime_ns == stamp


def test_a_missing_split_names_the_expected_file(tmp_path: Path) -> None:
    expected = tmp_path / "train" / "annotations" / "instances.json"
    with pytest.raises(FileNotFoundError, match=f"{expected}.*generate"):
        ShapesCoco(root=str(tmp_path)).dataset()


def test_images_of_another_size_are_reported(coco_split: Path) -> None:
    with pytest.raises(ValueError, match="40×56 images but the block declares height=64, width=64"):
        ShapesCoco(root=str(coco_split.parent)).dataset()


def test_instances_json_is_plain_coco(coco_split: Path) -> None:
    instances = json.loads((coco_split / "annotations" / "instances.json").read_text())
    assert set(instances) == {"info", "images", "annotations", "categories"}
    assert set(instances["annotations"][0]) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd",
                                                "segmentation"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# torchvision v2 transforms keep boxes and masks together


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.from_numpy(tight_box(m.numpy())) for m in masks]).float()


def test_a_horizontal_flip_keeps_each_box_the_tight_box_of_its_mask(coco_split: Path) -> None:
    data = CocoInstances(coco_split)
    for index in range(len(data)):
        image, target = v2.RandomHorizontalFlip(p=1)(data[index])
        torch.testing.assert_close(image.as_subclass(torch.Tensor), data[index][0].flip(-1).as_subclass(torch.Tensor))
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), mask_boxes(target["masks"]))


def test_a_random_resized_crop_keeps_boxes_on_their_masks(coco_split: Path) -> None:
    torch.manual_seed(0)
    data = CocoInstances(coco_split)
    # The aspect ratio is kept, so each axis is scaled by at most 1/sqrt(0.7) < 1.2.
    crop = v2.RandomResizedCrop((40, 56), scale=(0.7, 1.0), ratio=(56 / 40, 56 / 40), antialias=True)
    transform = v2.Compose([crop, v2.SanitizeBoundingBoxes(min_size=2)])
    whole = 0
    for index in range(len(data)):
        image, target = transform(data[index])
        assert image.shape == (3, 40, 56)
        boxes, masks = target["boxes"].as_subclass(torch.Tensor), target["masks"]
        assert len(boxes) == len(masks) == len(target["labels"])
        for box, mask in zip(boxes, masks, strict=True):
            if mask.sum() < 4:  # a sliver of an object the crop cut: nearest-neighbour resizing may drop it
                continue
            # Boxes are scaled exactly, masks by nearest neighbour: they agree to within about one source pixel.
            mask_box = torch.from_numpy(tight_box(mask.numpy())).float()
            inside = mask_box[:2] >= box[:2] - 1.5, mask_box[2:] <= box[2:] + 1.5
            assert all(side.all() for side in inside), f"{mask_box} not inside {box}"
            if box[0] > 0 and box[1] > 0 and box[2] < 56 and box[3] < 40:  # not cut by the crop
                torch.testing.assert_close(box, mask_box, atol=2.2, rtol=0)
                whole += 1
    assert whole > 10


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.shapes, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# ---------------------------------------------------------------------------------------------------------------
# The semantic-segmentation dataset block


def test_segmentation_samples_are_the_images_and_their_semantic_masks(coco_split: Path) -> None:
    from torch.utils.data import default_collate

    from blocks.shapes import SemanticMasks, ShapesSegmentation

    data = ShapesSegmentation(root=str(coco_split.parent), **SIZE).dataset()
    assert isinstance(data, SemanticMasks) and len(data) == 12
    contract = registry().get("shapes_segmentation")
    assert contract is not None and contract.is_source and not contract.module
    assert [p.name for p in contract.outputs] == ["image", "mask"]
    expected = generate_shapes(12, seed=3, **SIZE)
    for (image, mask), sample in zip([data[i] for i in range(12)], expected, strict=True):
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (40, 56)
        pixels = torch.from_numpy(sample.image).permute(2, 0, 1) / 255
        torch.testing.assert_close(image.as_subclass(torch.Tensor), pixels)
        np.testing.assert_array_equal(mask.numpy(), sample.semantic)
    assert set(torch.cat([data[i][1].flatten() for i in range(12)]).unique().tolist()) == {0, 1, 2, 3}
    images, masks = default_collate([data[0], data[1], data[2]])
    env = {"B": 3, **SIZE}
    for port, batch in zip(contract.outputs, (images, masks), strict=True):
        assert list(batch.shape) == [d.value for d in evaluate_dims(parse_port_type(port.type).dims, env)]
    assert images.dtype == torch.float32 and masks.dtype == torch.int64


def test_segmentation_block_generates_the_split_that_shapes_coco_reads(tmp_path: Path) -> None:
    from blocks.shapes import ShapesSegmentation

    masks = ShapesSegmentation(root=str(tmp_path), split="val", generate=3, height=24, width=32, seed=1).dataset()
    instances = ShapesCoco(root=str(tmp_path), split="val", height=24, width=32).dataset()
    assert len(masks) == len(instances) == 3
    for (_, mask), (_, target) in zip([masks[i] for i in range(3)], [instances[i] for i in range(3)], strict=True):
        painted = (target["masks"].as_subclass(torch.Tensor).long() * target["labels"][:, None, None]).sum(0)
        torch.testing.assert_close(mask.as_subclass(torch.Tensor), painted)


def test_segmentation_block_errors_name_the_problem(tmp_path: Path, coco_split: Path) -> None:
    from blocks.shapes import ShapesSegmentation

    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'train' / 'semantic'}.*generate"):
        ShapesSegmentation(root=str(tmp_path)).dataset()
    with pytest.raises(ValueError, match="40×56 images but the block declares height=64, width=64"):
        ShapesSegmentation(root=str(coco_split.parent)).dataset()


def test_v2_transforms_move_the_mask_with_the_image(coco_split: Path) -> None:
    """Geometric transforms draw their parameters once per sample: an image channel holding the mask ends up
    exactly where the mask does (nearest-neighbour resampling for both)."""
    from blocks.shapes import SemanticMasks

    torch.manual_seed(0)
    nearest = v2.InterpolationMode.NEAREST
    transform = v2.Compose([
        v2.RandomResizedCrop((40, 56), scale=(0.5, 1.0), interpolation=nearest),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(20, interpolation=nearest),
        v2.RandomCrop((40, 56), padding=4),
    ])  # fmt: skip
    data = SemanticMasks(coco_split)
    for index in range(len(data)):
        image, mask = data[index]
        tagged = image.clone()
        tagged[0] = mask / 3  # a tv_tensors.Image still
        out_image, out_mask = transform((tagged, mask))
        assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.int64 and out_mask.shape == (40, 56)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3}
        torch.testing.assert_close(out_image[0].as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor) / 3)
    # A horizontal flip flips the mask exactly.
    image, mask = data[0]
    _, flipped_mask = v2.RandomHorizontalFlip(p=1)((image, mask))
    torch.testing.assert_close(flipped_mask.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).flip(-1))


def test_a_split_written_for_another_count_is_refused_not_reused(tmp_path: Path) -> None:
    from blocks.shapes import ShapesSegmentation

    assert len(ShapesCoco(root=str(tmp_path), generate=3, height=32, width=32).dataset()) == 3
    assert len(ShapesCoco(root=str(tmp_path), generate=0, height=32, width=32).dataset()) == 3  # 0: any count
    with pytest.raises(ValueError, match="holds 3 images but the block asks to generate 5"):
        ShapesCoco(root=str(tmp_path), generate=5, height=32, width=32).dataset()
    ShapesSegmentation(root=str(tmp_path / "seg"), generate=2, height=32, width=32).dataset()
    with pytest.raises(ValueError, match="holds 2 images but the block asks to generate 4"):
        ShapesSegmentation(root=str(tmp_path / "seg"), generate=4, height=32, width=32).dataset()
