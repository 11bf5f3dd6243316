"""Paired and unpaired image datasets for image-to-image translation (Pix2Pix, CycleGAN).

Both blocks read MNIST-format IDX files through ``mnist_idx``'s reader and derive a second image domain from the
digits once, in ``dataset()``, so that a sample only indexes and rescales stored tensors:

- ``mnist_edges``: *paired* samples ``(edges, image, label)``, the Sobel edge map of a digit beside the digit
  (Pix2Pix learns edges → digit, as Isola et al. 2017 learn edges → photo);
- ``mnist_unpaired``: *unpaired* samples ``(a, b)``, a digit and a transformed *other* digit (CycleGAN).

Image fields are returned as ``torchvision.tv_tensors.Image``: torchvision's v2 transforms then apply to every
image of a sample, not only to the first plain tensor, so ``transforms: [{type: normalize, mean: [0.5],
std: [0.5]}]`` scales both fields to [-1, 1] and a random flip or crop moves a pair together. Batching stacks
them into plain tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from blocks.data import ImageLabelTensors, MnistIDX, _DatasetBlock, require_files
from dagcv.registry import register_block

IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"

# Sobel's derivative along x (columns) smoothed along y; its transpose is the derivative along y.
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_edges(images: Tensor) -> Tensor:
    """The Sobel gradient magnitude of each image, divided by that image's largest magnitude.

    ``sqrt(gx² + gy²)`` with the 3×3 Sobel kernels, on the image padded by repeating its border pixels (so the map
    keeps the image's size and the border itself is no edge), then scaled per image so its strongest edge is
    exactly 1: edges lie in [0, 1] whatever the contrast of the digit, and a blank image has no edges (zeros).

    Args:
        images: ``N×1×H×W`` float images.

    Returns:
        ``N×1×H×W`` edge maps in [0, 1].

    Example:
        >>> step = torch.zeros(1, 1, 4, 6)
        >>> step[..., 3:] = 1.0  # dark left half, bright right half
        >>> sobel_edges(step)[0, 0, 1]
        tensor([0., 0., 1., 1., 0., 0.])
    """
    kernels = torch.stack([SOBEL_X, SOBEL_X.T]).unsqueeze(1).to(images)  # 2×1×3×3: gx, gy
    gradient = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradient.pow(2).sum(1, keepdim=True).sqrt()
    # tiny, not zero, in the denominator: a blank image divides 0 by it and stays 0.
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    return magnitude / peak


def cyclic_partners(size: int, seed: int) -> Tensor:
    """For each index, another index: a random permutation taken as one cycle, so no index is its own partner.

    Following the cycle ``p[0] → p[1] → … → p[size-1] → p[0]`` of a permutation drawn from ``seed`` gives a
    derangement (for ``size ≥ 2``; a single sample can only partner itself).

    Example:
        >>> partners = cyclic_partners(6, seed=0)
        >>> sorted(partners.tolist()) == list(range(6)), bool((partners != torch.arange(6)).all())
        (True, True)
    """
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    partners = torch.empty(size, dtype=torch.int64)
    partners[order] = order.roll(-1)
    return partners


TRANSFORMS = {
    "invert": lambda images: 255 - images,  # 1 - x in [0, 1], exact on 8-bit pixels
    "rotate": lambda images: images.rot90(1, dims=(-2, -1)),  # 90° counter-clockwise
}


class _MnistFiles(_DatasetBlock):
    """Reads the digits of an IDX image/label pair with ``mnist_idx``'s reader, naming this block on errors."""

    block = ""

    def __init__(self, *, root: str, images: str = IMAGES, labels: str = LABELS) -> None:
        self.root = root
        self.images = images
        self.labels = labels

    def digits(self) -> ImageLabelTensors:
        reader = MnistIDX(root=self.root, images=self.images, labels=self.labels)
        require_files(self.block, list(reader.paths()), f" {self.block} only reads local IDX files.")
        return reader.dataset()


class EdgeImageTensors(Dataset[tuple[Tensor, Tensor, int]]):
    """Paired samples ``(edges, image, label)``: both images float32 ``1×H×W`` in [0, 1], the label an int."""

    def __init__(self, edges: Tensor, digits: ImageLabelTensors) -> None:
        self.edges, self.digits = edges, digits
        self.num_classes = digits.num_classes

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image, label = self.digits[index]
        return tv_tensors.Image(self.edges[index]), tv_tensors.Image(image), label

    def __repr__(self) -> str:
        return f"EdgeImageTensors({len(self)} × {tuple(self.edges.shape[1:])})"


@register_block(
    "mnist_edges",
    family="data",
    module=False,
    outputs={"edges": "Image[B, 1, 28, 28]", "image": "Image[B, 1, 28, 28]", "label": "Labels[B]"},
)
class MnistEdges(_MnistFiles):
    """MNIST digits paired with their Sobel edge maps, for edges → digit translation (Pix2Pix).

    A sample is ``(edges, image, label)``: ``image`` the digit in [0, 1], ``edges`` its Sobel gradient magnitude
    normalised per image to [0, 1] (:func:`sobel_edges`: the strongest edge of each digit is 1), ``label`` its
    class. The edge maps are computed once, for every digit, when ``dataset()`` is called (4 bytes a pixel:
    31 MB for the 10,000 test digits).

    Args:
        root: folder holding the two IDX files.
        images: the ``N×28×28`` uint8 image file inside ``root``.
        labels: the ``N`` uint8 label file inside ``root``.

    Example:
        >>> data = MnistEdges(root="../shared/datasets/mnist-t10k").dataset()
        >>> edges, image, label = data[0]
        >>> len(data), edges.shape, label, edges.max().item()
        (10000, torch.Size([1, 28, 28]), 7, 1.0)
    """

    block = "mnist_edges"
    num_classes = 10

    def dataset(self) -> EdgeImageTensors:
        """Decode both files and compute every digit's edge map."""
        digits = self.digits()
        edges = sobel_edges(digits.images.to(torch.float32) * digits.scale)
        return EdgeImageTensors(edges, digits)


class UnpairedTensors(Dataset[tuple[Tensor, Tensor]]):
    """Unpaired samples ``(a, b)`` from two ``N×C×H×W`` uint8 stacks: ``b[i]`` is not the counterpart of ``a[i]``."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        if a.shape != b.shape or a.dtype != torch.uint8:
            raise ValueError(
                f"expected two uint8 stacks of one shape, got {a.dtype} {tuple(a.shape)} and {tuple(b.shape)}"
            )
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        a, b = (x[index].to(torch.float32) / 255 for x in (self.a, self.b))
        return tv_tensors.Image(a), tv_tensors.Image(b)

    def __repr__(self) -> str:
        return f"UnpairedTensors({len(self)} × {tuple(self.a.shape[1:])})"


@register_block(
    "mnist_unpaired",
    family="data",
    module=False,
    outputs={"a": "Image[B, 1, 28, 28]", "b": "Image[B, 1, 28, 28]"},
)
class MnistUnpaired(_MnistFiles):
    """Two unpaired domains of MNIST digits, for CycleGAN: domain A the digits, domain B transformed digits.

    Sample ``i`` is ``(a, b)``: ``a`` digit ``i`` in [0, 1]; ``b`` the transform of *another* digit, ``partner[i]``,
    where the partners follow one cycle of a random permutation drawn from ``seed`` (:func:`cyclic_partners`), so
    no ``b`` is the transform of its own ``a``, the same for the same seed. The partner is fixed per sample while
    the loader shuffles ``i``. A ``subset:`` selects samples by ``i``, so its ``b`` images come from the
    partners' digits, which may lie outside the subset.

    Args:
        root: folder holding the two IDX files.
        images: the ``N×28×28`` uint8 image file inside ``root``.
        labels: the ``N`` uint8 label file inside ``root`` (read and checked; the samples carry no label).
        transform: domain B: ``invert`` (``1 - x``, white digits on black become black on white) or ``rotate``
            (a 90° counter-clockwise rotation).
        seed: seed of the permutation that partners each ``a`` with a ``b``.

    Example:
        >>> data = MnistUnpaired(root="../shared/datasets/mnist-t10k").dataset()
        >>> a, b = data[0]
        >>> len(data), b.shape, a[0, 0, 0].item(), b[0, 0, 0].item()  # a black corner, a white one
        (10000, torch.Size([1, 28, 28]), 0.0, 1.0)
    """

    block = "mnist_unpaired"

    def __init__(
        self,
        *,
        root: str,
        images: str = IMAGES,
        labels: str = LABELS,
        transform: Literal["invert", "rotate"] = "invert",
        seed: int = 0,
    ) -> None:
        super().__init__(root=root, images=images, labels=labels)
        self.transform = transform
        self.seed = seed

    def dataset(self) -> UnpairedTensors:
        """Decode the digits and transform each one's partner once."""
        images = self.digits().images
        partners = cyclic_partners(len(images), self.seed)
        return UnpairedTensors(images, TRANSFORMS[self.transform](images[partners]).contiguous())
