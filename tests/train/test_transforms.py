"""The transforms a data split may name: torchvision's own classes, and shapes predicted as torchvision makes them."""

from __future__ import annotations

import inspect

import pytest
import torch
from torchvision.transforms import v2

from dagcv.train.data import make_transform
from dagcv.train.transforms import TRANSFORMS, image_shape


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_is_a_v2_class_taking_the_arguments_a_spec_may_give(name: str) -> None:
    cls = getattr(v2, TRANSFORMS[name].cls)
    accepted = set(inspect.signature(cls).parameters)
    assert set(TRANSFORMS[name].args.model_fields) <= accepted


@pytest.mark.parametrize(
    ("steps", "shape"),
    [
        ([{"type": "resize", "size": 16}], [3, 20, 45]),
        ([{"type": "resize", "size": 16}], [3, 45, 20]),
        ([{"type": "resize", "size": [16]}], [1, 30, 40]),
        ([{"type": "resize", "size": 16, "max_size": 20}], [3, 20, 45]),
        ([{"type": "resize", "size": [12, 7]}], [3, 20, 45]),
        ([{"type": "center_crop", "size": 10}], [3, 20, 45]),
        ([{"type": "center_crop", "size": [30, 8]}], [3, 20, 45]),
        ([{"type": "random_crop", "size": 24, "padding": 4}], [1, 28, 28]),
        ([{"type": "random_crop", "size": [40, 50], "pad_if_needed": True}], [3, 20, 45]),
        ([{"type": "random_resized_crop", "size": [9, 11]}], [3, 20, 45]),
        ([{"type": "pad", "padding": [1, 2, 3, 4]}], [3, 20, 45]),
        ([{"type": "pad", "padding": [1, 2]}], [3, 20, 45]),
        (
            [
                {"type": "grayscale", "num_output_channels": 3},
                {"type": "normalize", "mean": [0.5] * 3, "std": [0.2] * 3},
            ],
            [3, 8, 8],
        ),
        ([{"type": "rgb"}, {"type": "random_horizontal_flip"}, {"type": "random_rotation", "degrees": 10}], [1, 9, 7]),
    ],
)
def test_predicted_shapes_are_torchvisions(steps: list[dict], shape: list[int]) -> None:
    image = torch.rand(*shape)
    assert list(make_transform(steps)(image).shape) == image_shape(steps, shape)


def test_impossible_steps_are_errors_before_any_data_is_read() -> None:
    with pytest.raises(ValueError, match="needs pad_if_needed"):
        image_shape([{"type": "random_crop", "size": 32}], [1, 28, 28])
    with pytest.raises(ValueError, match="3 means for a 1-channel image"):
        image_shape([{"type": "normalize", "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}], [1, 28, 28])
