"""The image transforms a ``data:`` split may list: their parameters and what they do to an image's shape.

Each entry names a ``torchvision.transforms.v2`` class, a Pydantic model of the arguments a spec may give it
(checked by ``dagcv check`` with positions, like block parameters), and, when the transform changes the image's
shape, how: ``(params, [C, H, W]) -> [C, H, W]``. ``dagcv check`` follows a dataset's declared sample shape
through the split's transforms and compares the result with the spec input it feeds, so a 1-channel dataset
fed to a 3-channel trunk is a check error that names the transform to add. Nothing here imports torch.

>>> steps = [{"type": "resize", "size": 16}, {"type": "rgb"}]
>>> image_shape(steps, [1, 28, 56])
[3, 16, 32]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, MinLen
from pydantic import BaseModel, ConfigDict, model_validator

Side = Annotated[int, Gt(0)]
Sides = Side | Annotated[list[Side], MinLen(1)]
Probability = Annotated[float, Ge(0), Le(1)]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormalizeArgs(_Args):
    mean: list[float]
    std: list[Annotated[float, Gt(0)]]
    inplace: bool = False

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeArgs:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self


class ResizeArgs(_Args):
    size: Sides
    max_size: Side | None = None
    antialias: bool = True


class CropArgs(_Args):
    size: Sides


class RandomCropArgs(_Args):
    size: Sides
    padding: Annotated[int, Ge(0)] | list[Annotated[int, Ge(0)]] | None = None
    pad_if_needed: bool = False
    fill: float = 0.0
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant"


class RandomResizedCropArgs(_Args):
    size: Sides
    scale: tuple[Probability, Probability] = (0.08, 1.0)
    ratio: tuple[Annotated[float, Gt(0)], Annotated[float, Gt(0)]] = (3 / 4, 4 / 3)
    antialias: bool = True


class FlipArgs(_Args):
    p: Probability = 0.5


class RotationArgs(_Args):
    degrees: float | tuple[float, float]
    center: tuple[float, float] | None = None
    fill: float = 0.0  # no `expand`: it would change the size from sample to sample


class AffineArgs(_Args):
    degrees: float | tuple[float, float]
    translate: tuple[Probability, Probability] | None = None
    scale: tuple[Annotated[float, Gt(0)], Annotated[float, Gt(0)]] | None = None
    shear: float | tuple[float, float] | tuple[float, float, float, float] | None = None
    fill: float = 0.0


class ColorJitterArgs(_Args):
    brightness: Annotated[float, Ge(0)] | tuple[float, float] | None = None
    contrast: Annotated[float, Ge(0)] | tuple[float, float] | None = None
    saturation: Annotated[float, Ge(0)] | tuple[float, float] | None = None
    hue: Annotated[float, Ge(0), Le(0.5)] | tuple[float, float] | None = None


class BlurArgs(_Args):
    kernel_size: Side | tuple[Side, Side]
    sigma: Annotated[float, Gt(0)] | tuple[Annotated[float, Gt(0)], Annotated[float, Gt(0)]] = (0.1, 2.0)

    @model_validator(mode="after")
    def _odd(self) -> BlurArgs:
        sizes = [self.kernel_size] if isinstance(self.kernel_size, int) else list(self.kernel_size)
        if any(k % 2 == 0 for k in sizes):
            raise ValueError(f"kernel_size must be odd, found {self.kernel_size}")
        return self


class ErasingArgs(_Args):
    p: Probability = 0.5
    scale: tuple[Probability, Probability] = (0.02, 0.33)
    ratio: tuple[Annotated[float, Gt(0)], Annotated[float, Gt(0)]] = (0.3, 3.3)
    value: float = 0.0


class PadArgs(_Args):
    padding: Annotated[int, Ge(0)] | Annotated[list[Annotated[int, Ge(0)]], MinLen(1)]
    fill: float = 0.0
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant"


class GrayscaleArgs(_Args):
    num_output_channels: Literal[1, 3] = 1


class NoArgs(_Args):
    pass


Shape = list[int]


def _pair(size: int | list[int]) -> tuple[int, int] | None:
    """(height, width) of a fixed size; None for one number (the smaller edge, as Resize reads it)."""
    if isinstance(size, int):
        return None
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _resize(a: ResizeArgs, s: Shape) -> Shape:
    c, h, w = s
    fixed = _pair(a.size)
    if fixed is not None and not (isinstance(a.size, list) and len(a.size) == 1):
        return [c, *fixed]
    # torchvision: the smaller edge becomes `size`, the other keeps the aspect ratio (floored), capped by max_size.
    short, long = (w, h) if w <= h else (h, w)
    new_short = a.size if isinstance(a.size, int) else a.size[0]
    new_long = int(new_short * long / short)
    if a.max_size is not None and new_long > a.max_size:
        new_short, new_long = int(a.max_size * new_short / new_long), a.max_size
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return [c, new_h, new_w]


def _crop(a: CropArgs | RandomCropArgs | RandomResizedCropArgs, s: Shape) -> Shape:
    size = a.size if isinstance(a.size, list) else [a.size]
    return [s[0], size[0], size[-1]]


def _pad(a: PadArgs | RandomCropArgs, s: Shape) -> Shape:
    p = a.padding
    if p is None:
        return s
    p = [p] if isinstance(p, int) else p
    left, top, right, bottom = (p * 4)[:4] if len(p) == 1 else (p[0], p[1], p[0], p[1]) if len(p) == 2 else p[:4]
    return [s[0], s[1] + top + bottom, s[2] + left + right]


def _random_crop(a: RandomCropArgs, s: Shape) -> Shape:
    padded = _pad(a, s)
    size = _crop(a, padded)
    if not a.pad_if_needed and (padded[1] < size[1] or padded[2] < size[2]):
        raise ValueError(f"a {size[1]}×{size[2]} crop of a {padded[1]}×{padded[2]} image needs pad_if_needed: true")
    return size


@dataclass(frozen=True)
class Transform:
    """A transform a spec may name: the torchvision class, its arguments, its effect on ``[C, H, W]``."""

    cls: str
    args: type[BaseModel]
    shape: Callable[[Any, Shape], Shape] | None = None


TRANSFORMS: dict[str, Transform] = {
    "normalize": Transform("Normalize", NormalizeArgs),
    "resize": Transform("Resize", ResizeArgs, _resize),
    "center_crop": Transform("CenterCrop", CropArgs, _crop),
    "random_crop": Transform("RandomCrop", RandomCropArgs, _random_crop),
    "random_resized_crop": Transform("RandomResizedCrop", RandomResizedCropArgs, _crop),
    "random_horizontal_flip": Transform("RandomHorizontalFlip", FlipArgs),
    "random_vertical_flip": Transform("RandomVerticalFlip", FlipArgs),
    "random_rotation": Transform("RandomRotation", RotationArgs),
    "random_affine": Transform("RandomAffine", AffineArgs),
    "color_jitter": Transform("ColorJitter", ColorJitterArgs),
    "gaussian_blur": Transform("GaussianBlur", BlurArgs),
    "random_erasing": Transform("RandomErasing", ErasingArgs),
    "pad": Transform("Pad", PadArgs, _pad),
    "grayscale": Transform("Grayscale", GrayscaleArgs, lambda a, s: [a.num_output_channels, s[1], s[2]]),
    "rgb": Transform("RGB", NoArgs, lambda a, s: [3, s[1], s[2]]),
}


def channel_problem(name: str, args: BaseModel, channels: int) -> str | None:
    """Why a transform cannot take an image of ``channels`` channels (normalize's mean and std, say)."""
    if isinstance(args, NormalizeArgs) and len(args.mean) not in (1, channels):
        return f"normalize has {len(args.mean)} means for a {channels}-channel image"
    if name in ("grayscale", "rgb") and channels not in (1, 3):
        return f"{name} takes 1- or 3-channel images, found {channels} channels"
    return None


def image_shape(steps: list[dict[str, Any]], shape: Shape) -> Shape:
    """The ``[C, H, W]`` of an image after ``steps`` (validated transform entries); raises ValueError."""
    for step in steps:
        spec = TRANSFORMS[step["type"]]
        args = spec.args.model_validate({k: v for k, v in step.items() if k != "type"})
        problem = channel_problem(step["type"], args, shape[0])
        if problem is not None:
            raise ValueError(problem)
        if spec.shape is not None:
            shape = spec.shape(args, shape)
    return shape
