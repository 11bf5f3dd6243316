"""Datasets: sources of ``(image, label)`` samples that the training loop feeds into a graph.

A dataset block is not part of the model (``module=False``) and has no inputs. Its outputs declare the *batched*
kinds of the sample fields in sample order (``image: Image[B, 1, 28, 28]``, ``label: Labels[B]``); the training
loop calls ``dataset()`` and batches its samples with a ``DataLoader``. Constructing a block only stores its
parameters, so a spec compiles without the data; the files are read when ``dataset()`` is called.

Every sample is ``(image, label)``: the image a float32 ``C×H×W`` tensor scaled to ``[0, 1]`` (not normalised),
the label a Python ``int`` (the default collate makes it int64). The data is decoded once into compact integer
tensors, so ``__getitem__`` only indexes and rescales.

Nothing is downloaded: these machines have no network. Missing files raise ``FileNotFoundError`` naming every
path that was expected. The torchvision-backed blocks keep torchvision's ``download`` flag, which only works
where the network is reachable.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset

from dagcv.registry import Size, register_block

OFFLINE = "downloading is disabled (download: false): these machines have no network, so the files must be local"


class ImageLabelTensors(Dataset[tuple[Tensor, int]]):
    """Images and labels decoded once into tensors; a sample is ``(image in [0, 1], int label)``.

    Args:
        images: ``N×C×H×W`` integer pixel values in ``[0, max_value]`` (``uint8`` keeps memory 4× smaller).
        labels: ``N`` class indices.
        max_value: the pixel value that maps to 1.0 (255 for 8-bit images).
        num_classes: the number of classes the labels index.

    Example:
        >>> data = ImageLabelTensors(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), torch.tensor([3]),
        ...                          max_value=255, num_classes=10)
        >>> data[0]
        (tensor([[[0., 1.]]]), 3)
    """

    def __init__(self, images: Tensor, labels: Tensor, *, max_value: float, num_classes: int) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected N×C×H×W images and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.scale = 1.0 / max_value
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        # Same arithmetic as torchvision's ToDtype(float32, scale=True): convert, then multiply by 1/max. Not in
        # place: for float32 images `.to` returns the stored tensor itself.
        return self.images[index].to(torch.float32) * self.scale, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageLabelTensors({len(self)} × {tuple(self.images.shape[1:])}, num_classes={self.num_classes})"


class _DatasetBlock:
    """What every dataset block offers: ``dataset()`` and a readable repr of its parameters."""

    def dataset(self) -> Dataset[tuple[Tensor, int]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def require_files(block: str, paths: list[Path], hint: str = "") -> None:
    """Raise ``FileNotFoundError`` naming every missing path (and where a relative one was looked for)."""
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return
    where = "" if missing[0].is_absolute() else f" (relative to the working directory {Path.cwd()})"
    listing = "\n".join(f"  {p}" for p in missing)
    raise FileNotFoundError(f"{block}: missing {len(missing)} file(s){where}:\n{listing}\n{OFFLINE}.{hint}")


# ---------------------------------------------------------------------------------------------------------------
# IDX files: the format of the original MNIST distribution


IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}  # fmt: skip
IDX_TYPE_NAMES = "0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (bad magic number, unknown type code, truncated data)."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes: a magic number ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the data.

    Args:
        data: the whole (uncompressed) file.
        source: how to name the data in error messages.

    Returns:
        A native-endian array of the declared shape and type.

    Example:
        >>> parse_idx(bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
        array([[1, 2, 3],
               [4, 5, 6]], dtype=uint8)
    """
    if len(data) < 4:
        raise IDXFormatError(f"{source}: {len(data)} bytes, too short for an IDX magic number (4 bytes)")
    if data[:2] != b"\0\0":
        raise IDXFormatError(
            f"{source}: not an IDX file: magic number 0x{data[:4].hex()} should start with 0x0000 "
            "(a compressed file other than gzip, or another format?)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise IDXFormatError(f"{source}: unknown IDX type code 0x{code:02X} (known: {IDX_TYPE_NAMES})")
    if ndim == 0:
        raise IDXFormatError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{source}: truncated header: {ndim} dims need {header} bytes, the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    count = math.prod(dims)
    expected, found = count * dtype.itemsize, len(data) - header
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise IDXFormatError(
            f"{source}: {problem}: shape {'×'.join(map(str, dims))} of {dtype.name} needs {expected} data bytes "
            f"after the {header}-byte header, found {found}"
        )
    return np.frombuffer(data, dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not (recognised by its gzip magic bytes, not by its name).

    Example:
        >>> read_idx("../shared/datasets/mnist-t10k/t10k-labels-idx1-ubyte.gz")[:10]
        array([7, 2, 1, 0, 4, 1, 4, 9, 5, 9], dtype=uint8)
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return parse_idx(raw, str(path))


@register_block(
    "mnist_idx",
    family="data",
    module=False,
    outputs={"image": "Image[B, 1, 28, 28]", "label": "Labels[B]"},
)
class MnistIDX(_DatasetBlock):
    """MNIST-format digits read straight from a pair of IDX files (gzipped or not), with dagcv's own parser.

    Reads the files torchvision's MNIST cannot take alone, such as the shipped 10,000-image test set
    (``../shared/datasets/mnist-t10k`` from the project root). Relative paths are relative to the working
    directory. Never downloads.

    Args:
        root: folder holding the two files.
        images: the ``N×28×28`` uint8 image file inside ``root``.
        labels: the ``N`` uint8 label file inside ``root``.

    Example:
        >>> data = MnistIDX(root="../shared/datasets/mnist-t10k").dataset()
        >>> len(data), data[0][0].shape, data[0][1]
        (10000, torch.Size([1, 28, 28]), 7)
    """

    num_classes = 10

    def __init__(
        self, *, root: str, images: str = "t10k-images-idx3-ubyte.gz", labels: str = "t10k-labels-idx1-ubyte.gz"
    ) -> None:
        self.root = root
        self.images = images
        self.labels = labels

    def paths(self) -> tuple[Path, Path]:
        """The image and label files this block reads."""
        return Path(self.root) / self.images, Path(self.root) / self.labels

    def dataset(self) -> ImageLabelTensors:
        """Decode both files (on every call) into an in-memory dataset."""
        image_path, label_path = self.paths()
        require_files("mnist_idx", [image_path, label_path], " mnist_idx only reads local IDX files.")
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise IDXFormatError(
                f"{image_path}: expected N×28×28 uint8 images (the block's output Image[B, 1, 28, 28]), "
                f"found {'×'.join(map(str, images.shape))} {images.dtype}"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise IDXFormatError(f"{label_path}: expected N integer labels, found {labels.shape} {labels.dtype}")
        if len(labels) != len(images):
            raise IDXFormatError(f"{label_path}: {len(labels)} labels for the {len(images)} images of {image_path}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < self.num_classes:
            raise IDXFormatError(f"{label_path}: labels must lie in 0..{self.num_classes - 1}, found {labels.max()}")
        return ImageLabelTensors(
            torch.from_numpy(images).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            max_value=255,
            num_classes=self.num_classes,
        )


# ---------------------------------------------------------------------------------------------------------------
# torchvision datasets: torchvision's own file layout and loading code


def load_torchvision(
    block: str, make: Callable[[], Any], *, download: bool, expected: list[Path], root: str, hint: str = "",
    rejected_hint: str = "",
) -> Any:  # fmt: skip
    """Call ``make()`` (a torchvision dataset constructor), turning its errors into ones that name the files."""
    try:
        return make()
    except (RuntimeError, OSError, AssertionError) as exc:  # torchvision asserts on malformed IDX files
        if download:
            raise RuntimeError(
                f"{block}: download: true, but downloading into '{root}' failed ({exc}). These machines have no "
                f"network: put the files there yourself and set download: false. Expected files:\n"
                + "\n".join(f"  {p}" for p in expected)
            ) from exc
        require_files(block, expected, hint)
        raise RuntimeError(f"{block}: torchvision rejected the files under '{root}': {exc}.{rejected_hint}") from exc


@register_block(
    "mnist",
    family="data",
    module=False,
    outputs={"image": "Image[B, 1, 28, 28]", "label": "Labels[B]"},
)
class MNIST(_DatasetBlock):
    """MNIST through ``torchvision.datasets.MNIST``: 60,000 training or 10,000 test digits.

    torchvision reads four uncompressed IDX files from ``<root>/MNIST/raw/`` (both splits, whichever ``train``
    asks for). For the shipped gzipped test set alone, use ``mnist_idx``.

    Args:
        root: the folder that holds ``MNIST/raw/``.
        train: the 60,000-image training split, else the 10,000-image test split.
        download: let torchvision download missing files; needs a network these machines do not have.

    Example:
        >>> MNIST(root="data").expected_files()[0]
        PosixPath('data/MNIST/raw/train-images-idx3-ubyte')
    """

    num_classes = 10

    def __init__(self, *, root: str, train: bool = True, download: bool = False) -> None:
        self.root = root
        self.train = train
        self.download = download

    def expected_files(self) -> list[Path]:
        """The files torchvision needs, whichever split is asked for."""
        raw = Path(self.root) / "MNIST" / "raw"
        return [raw / Path(name).stem for name, _ in torchvision.datasets.MNIST.resources]

    def dataset(self) -> ImageLabelTensors:
        """Load the split with torchvision, then keep its decoded uint8 tensors."""
        gzipped = [p for p in self.expected_files() if not p.exists() and p.with_suffix(".gz").exists()]
        hint = f" torchvision reads uncompressed files: gunzip {gzipped[0]}.gz." if gzipped else ""
        tv = load_torchvision(
            "mnist",
            lambda: torchvision.datasets.MNIST(self.root, train=self.train, download=self.download),
            download=self.download, expected=self.expected_files(), root=self.root, hint=hint,
        )  # fmt: skip
        return ImageLabelTensors(tv.data.unsqueeze(1), tv.targets, max_value=255, num_classes=self.num_classes)


@register_block(
    "cifar10",
    family="data",
    module=False,
    outputs={"image": "Image[B, 3, 32, 32]", "label": "Labels[B]"},
)
class CIFAR10(_DatasetBlock):
    """CIFAR-10 through ``torchvision.datasets.CIFAR10``: 50,000 training or 10,000 test 32×32 colour images.

    torchvision reads the python-pickle batches from ``<root>/cifar-10-batches-py/`` and checks their md5 sums.

    Args:
        root: the folder that holds ``cifar-10-batches-py/``.
        train: the 50,000-image training split, else the 10,000-image test split.
        download: let torchvision download missing files; needs a network these machines do not have.

    Example:
        >>> CIFAR10(root="data").expected_files()[-1]
        PosixPath('data/cifar-10-batches-py/batches.meta')
    """

    num_classes = 10

    def __init__(self, *, root: str, train: bool = True, download: bool = False) -> None:
        self.root = root
        self.train = train
        self.download = download

    def expected_files(self) -> list[Path]:
        """The files torchvision checks, whichever split is asked for."""
        tv = torchvision.datasets.CIFAR10
        folder = Path(self.root) / tv.base_folder
        return [folder / name for name, _ in tv.train_list + tv.test_list] + [folder / tv.meta["filename"]]

    def dataset(self) -> ImageLabelTensors:
        """Load the split with torchvision, then keep its pixels as one uint8 ``N×3×32×32`` tensor."""
        tv = load_torchvision(
            "cifar10",
            lambda: torchvision.datasets.CIFAR10(self.root, train=self.train, download=self.download),
            download=self.download, expected=self.expected_files(), root=self.root,
            rejected_hint=" Are they the original CIFAR-10 python batches? torchvision checks their md5 sums.",
        )  # fmt: skip
        images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()  # torchvision keeps N×H×W×C
        return ImageLabelTensors(images, torch.tensor(tv.targets), max_value=255, num_classes=self.num_classes)


# ---------------------------------------------------------------------------------------------------------------
# Data that ships with a library, and data made up on the spot


@register_block(
    "digits",
    family="data",
    module=False,
    outputs={"image": "Image[B, 1, 8, 8]", "label": "Labels[B]"},
)
class Digits(_DatasetBlock):
    """scikit-learn's bundled handwritten digits: 1,797 8×8 images with values 0–16, scaled to ``[0, 1]``.

    Example:
        >>> data = Digits().dataset()
        >>> len(data), data[0][0].shape, data[0][1]
        (1797, torch.Size([1, 8, 8]), 0)
    """

    num_classes = 10

    def __init__(self) -> None:
        pass

    def dataset(self) -> ImageLabelTensors:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise ImportError("digits needs scikit-learn (`pip install scikit-learn`)") from exc
        bunch = load_digits()
        images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # exact: the values are 0..16
        return ImageLabelTensors(images, torch.from_numpy(bunch.target), max_value=16, num_classes=self.num_classes)


@register_block(
    "fake_data",
    family="data",
    module=False,
    outputs={"image": "Image[B, channels, height, width]", "label": "Labels[B]"},
)
class FakeData(_DatasetBlock):
    """Uniformly random 8-bit images and labels for smoke tests, the same for the same ``seed``.

    Args:
        size: number of samples.
        channels: image channels.
        height: image height.
        width: image width.
        num_classes: labels are drawn from ``0..num_classes-1``.
        seed: seed of the generator that draws the images, then the labels.

    Example:
        >>> data = FakeData(size=4, channels=1, height=2, width=3).dataset()
        >>> len(data), data[0][0].shape, [label for _, label in data]
        (4, torch.Size([1, 2, 3]), [4, 1, 9, 9])
    """

    def __init__(
        self, *, size: Size = 64, channels: Size = 3, height: Size = 32, width: Size = 32, num_classes: Size = 10,
        seed: int = 0,
    ) -> None:  # fmt: skip
        for name, value in [("size", size), ("channels", channels), ("height", height), ("width", width),
                            ("num_classes", num_classes)]:  # fmt: skip
            if value < 1:
                raise ValueError(f"fake_data: {name} must be at least 1, got {value}")
        self.size = size
        self.channels = channels
        self.height = height
        self.width = width
        self.num_classes = num_classes
        self.seed = seed

    def dataset(self) -> ImageLabelTensors:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.size, self.channels, self.height, self.width)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, self.num_classes, (self.size,), generator=generator)
        return ImageLabelTensors(images, labels, max_value=255, num_classes=self.num_classes)


# ---------------------------------------------------------------------------------------------------------------
# Steps recorded from a trained policy (behavioural cloning)


class StepTensors(Dataset[tuple[Tensor, int]]):
    """``(observation, action)`` pairs held as tensors."""

    def __init__(self, observations: Tensor, actions: Tensor) -> None:
        self.observations, self.actions = observations, actions

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.observations[i], int(self.actions[i])


@register_block(
    "rollout_dataset",
    family="data",
    module=False,
    outputs={"observation": "Observation[B, observation_size]", "label": "Labels[B]"},
)
class RolloutDataset(_DatasetBlock):
    """The steps of a policy's episodes, written by ``dagcv rollout RUN -o ROOT``: observation → discrete action.

    ``ROOT/episodes.npz`` holds ``observation`` (steps × size), ``action``, ``reward`` and ``episode`` arrays;
    it is read without pickle. A supervised spec that reads it clones the policy (``specs/bc_cartpole.yaml``).

    Args:
        root: the folder ``dagcv rollout`` wrote.
        observation_size: the size of an observation (4 for CartPole); checked against the file.

    Example:
        >>> import tempfile, numpy as np
        >>> root = tempfile.mkdtemp()
        >>> np.savez(f"{root}/episodes.npz", observation=np.zeros((3, 4), np.float32), action=np.array([0, 1, 1]))
        >>> data = RolloutDataset(root=root, observation_size=4).dataset()
        >>> len(data), data[2][1]
        (3, 1)
    """

    def __init__(self, *, root: str, observation_size: Size) -> None:
        self.root, self.observation_size = root, observation_size

    def dataset(self) -> StepTensors:
        path = Path(self.root) / "episodes.npz"
        require_files("rollout_dataset", [path], " Record one with `dagcv rollout RUN -o ROOT`.")
        with np.load(path, allow_pickle=False) as data:
            observations, actions = data["observation"], data["action"]
        if (
            observations.ndim != 2
            or observations.shape[1] != self.observation_size
            or len(actions) != len(observations)
        ):
            raise ValueError(
                f"rollout_dataset: {path} holds observations of shape {observations.shape} and {len(actions)} "
                f"actions; expected (steps, {self.observation_size}) and one action each"
            )
        return StepTensors(
            torch.from_numpy(observations.astype(np.float32)), torch.from_numpy(actions.astype(np.int64))
        )


# ---------------------------------------------------------------------------------------------------------------
# Toy distributions for generative models


@register_block(
    "gaussian_mixture_2d",
    family="data",
    module=False,
    outputs={"point": "Embedding[B, 2]", "label": "Labels[B]"},
    requires={"modes >= 1": "a mixture has at least one mode", "std > 0": "each mode has a positive spread"},
)
class GaussianMixture2D(_DatasetBlock):
    """Points from ``modes`` Gaussians evenly spaced on a circle: the classic 8-Gaussians test of GAN mode collapse.

    Mode ``k`` is centred at ``radius·(cos 2πk/modes, sin 2πk/modes)`` with standard deviation ``std`` on each
    axis (Metz et al. 2017 and Gulrajani et al. 2017 use 8 modes, radius 2, std 0.02); a point's label is its
    mode. Drawn once from ``seed``.

    Args:
        size: number of points.
        modes: number of Gaussians on the circle.
        radius: the circle's radius.
        std: standard deviation of each Gaussian.
        seed: seed of the draw.

    Example:
        >>> data = GaussianMixture2D(size=4, modes=4, std=0.01).dataset()
        >>> len(data), data[0][0].shape, [label for _, label in data]
        (4, torch.Size([2]), [0, 3, 1, 0])
    """

    def __init__(self, *, size: Size = 10000, modes: Size = 8, radius: float = 2.0, std: float = 0.02,
                 seed: int = 0) -> None:  # fmt: skip
        self.size, self.modes, self.radius, self.std, self.seed = size, modes, radius, std, seed

    def centres(self) -> Tensor:
        """The ``modes × 2`` means."""
        angles = torch.arange(self.modes, dtype=torch.float64) * (2 * math.pi / self.modes)
        return (self.radius * torch.stack([angles.cos(), angles.sin()], 1)).float()

    def dataset(self) -> StepTensors:
        generator = torch.Generator().manual_seed(self.seed)
        labels = torch.randint(0, self.modes, (self.size,), generator=generator)
        points = self.centres()[labels] + self.std * torch.randn(self.size, 2, generator=generator)
        return StepTensors(points, labels)
