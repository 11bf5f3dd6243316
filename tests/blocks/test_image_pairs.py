"""The image-to-image datasets: samples as declared, Sobel edges where the image steps, unpaired domains that are
really unpaired, the same for the same seed; and the shipped Pix2Pix and CycleGAN specs that read them check,
scale both image fields to [-1, 1] and train. Every test writes tiny IDX files of its own: no shared dataset."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import blocks.image_pairs
from blocks.image_pairs import MnistEdges, MnistUnpaired, cyclic_partners, sobel_edges
from dagcv.compiler import check_spec
from dagcv.registry import registry
from dagcv.spec import load_spec
from dagcv.train.data import build_dataset
from dagcv.train.runner import Options, train_spec
from dagcv.types import KINDS, evaluate_dims, parse_port_type
from tests.blocks.test_data import SHARED_MNIST, SHARED_SHA256, write_idx, write_mnist_pair
from tests.conftest import ROOT

PIX2PIX = ROOT / "specs" / "pix2pix_edges2digits.yaml"
CYCLEGAN = ROOT / "specs" / "cyclegan_digits.yaml"


def write_digits(folder: Path, images: np.ndarray) -> Path:
    """``images`` (N×28×28 uint8) as the IDX pair the blocks read by default, with labels 0, 1, 2, ..."""
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", (np.arange(len(images)) % 10).astype(np.uint8))
    return folder


def blocky_digits(n: int, seed: int = 0) -> np.ndarray:
    """White 4×4 cells on black, a quarter of them lit like a digit's strokes: edges a generator can fill in."""
    cells = (np.random.default_rng(seed).random((n, 7, 7)) < 0.25).astype(np.uint8) * 255
    return cells.repeat(4, 1).repeat(4, 2)


def vertical_step(column: int) -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[:, column:] = 200
    return image


# ---------------------------------------------------------------------------------------------------------------
# Contracts and ranges


@pytest.mark.parametrize("block", [MnistEdges, MnistUnpaired])
def test_samples_match_the_declared_contract(block: type, tmp_path: Path) -> None:
    write_mnist_pair(tmp_path, n=4)
    data = block(root=str(tmp_path)).dataset()
    contract = registry().get(block.block)
    assert contract is not None and contract.is_source and not contract.module and len(data) == 4
    batch = default_collate([data[0], data[1]])
    assert len(batch) == len(contract.outputs)
    for port, value in zip(contract.outputs, batch, strict=True):
        ptype = parse_port_type(port.type)
        assert list(value.shape) == [d.value for d in evaluate_dims(ptype.dims or (), {"B": 2})], port.name
        assert value.dtype == getattr(torch, KINDS[ptype.kind].dtype), port.name
        assert type(value) is torch.Tensor, f"{port.name}: batches are plain tensors, not {type(value).__name__}"


def test_edges_and_image_lie_in_unit_range_and_the_image_is_the_digit(tmp_path: Path) -> None:
    images, labels = write_mnist_pair(tmp_path, n=5)
    data = MnistEdges(root=str(tmp_path)).dataset()
    for i in range(5):
        edges, image, label = data[i]
        torch.testing.assert_close(image, torch.from_numpy(images[i]).float()[None] / 255, rtol=0, atol=1e-7)
        assert label == labels[i]
        assert edges.min() >= 0 and edges.max() == 1  # normalised per image: its strongest edge is 1


def test_a_blank_digit_has_no_edges() -> None:
    edges = sobel_edges(torch.zeros(2, 1, 28, 28))
    assert edges.shape == (2, 1, 28, 28) and not edges.isnan().any() and edges.eq(0).all()


def test_sobel_of_a_single_bright_pixel() -> None:
    """Golden numbers of the two kernels: 2 beside the pixel, √2 diagonally, 0 on it; then divided by 2."""
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 1.0
    s = 1 / math.sqrt(2)
    want = torch.tensor([[s, 1, s], [1, 0, 1], [s, 1, s]])
    torch.testing.assert_close(sobel_edges(dot)[0, 0, 1:4, 1:4], want)
    assert sobel_edges(dot)[0, 0, [0, 4]].eq(0).all()


def test_edges_of_a_vertical_step_are_strongest_at_the_step(tmp_path: Path) -> None:
    write_digits(tmp_path, np.stack([vertical_step(10), vertical_step(20)]))
    data = MnistEdges(root=str(tmp_path)).dataset()
    for i, column in enumerate([10, 20]):
        edges = data[i][0][0]
        assert edges[:, [column - 1, column]].eq(1).all()  # the two columns whose 3×3 window spans the step
        edges[:, [column - 1, column]] = 0
        assert edges.abs().max() < 1e-6  # nothing anywhere else (but rounding), not at the image's border either


def test_missing_files_name_the_block(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"mnist_unpaired: missing 2 file\(s\)"):
        MnistUnpaired(root=str(tmp_path)).dataset()


# ---------------------------------------------------------------------------------------------------------------
# Unpaired domains


@pytest.mark.parametrize(
    ("transform", "apply"),
    [("invert", lambda x: 1 - x), ("rotate", lambda x: x.rot90(1, dims=(-2, -1)))],
)
def test_each_b_is_the_transform_of_another_digit(tmp_path: Path, transform: str, apply) -> None:
    write_mnist_pair(tmp_path, n=9)  # random pixels: no two digits alike
    data = MnistUnpaired(root=str(tmp_path), transform=transform, seed=3).dataset()
    a, b = (torch.stack(field) for field in zip(*(data[i] for i in range(9)), strict=True))
    partners = cyclic_partners(9, seed=3)
    torch.testing.assert_close(b, apply(a[partners]), rtol=0, atol=1e-6)
    for i in range(9):
        assert not torch.allclose(b[i], apply(a[i])), f"sample {i} is a pair"


def test_rotate_turns_counter_clockwise(tmp_path: Path) -> None:
    corner = np.zeros((2, 28, 28), np.uint8)
    corner[:, 0, 27] = 255  # top right
    write_digits(tmp_path, corner)
    _, b = MnistUnpaired(root=str(tmp_path), transform="rotate").dataset()[0]
    assert b[0, 0, 0] == 1 and b.sum() == 1  # to the top left


def test_partners_are_a_derangement_fixed_by_the_seed() -> None:
    first, again, other = cyclic_partners(50, 0), cyclic_partners(50, 0), cyclic_partners(50, 1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(50)) and (first != torch.arange(50)).all()
    assert first[:6].tolist() == [46, 13, 24, 25, 3, 4]  # golden: torch's generator is pinned with torch


def test_unpaired_samples_are_deterministic_per_seed(tmp_path: Path) -> None:
    write_mnist_pair(tmp_path, n=12)

    def b_of(seed: int) -> torch.Tensor:
        data = MnistUnpaired(root=str(tmp_path), seed=seed).dataset()
        return torch.stack([data[i][1] for i in range(12)])

    assert torch.equal(b_of(5), b_of(5)) and not torch.equal(b_of(5), b_of(6))


# ---------------------------------------------------------------------------------------------------------------
# The shipped specs


def on_tiny_digits(root: Path) -> list[str]:
    return [f"data.train.dataset.root={root}", "data.train.subset=null", "data.train.batch_size=16",
            "train.threads=1"]  # fmt: skip


@pytest.mark.parametrize("path", [PIX2PIX, CYCLEGAN, PIX2PIX.with_suffix(".dagcv"), CYCLEGAN.with_suffix(".dagcv")],
                         ids=lambda p: p.name)  # fmt: skip
def test_shipped_spec_checks(path: Path) -> None:
    sg = check_spec(load_spec(path))
    assert sg.training.train.loop == "gan"


@pytest.mark.parametrize(("path", "block"), [(PIX2PIX, "mnist_edges"), (CYCLEGAN, "mnist_unpaired")])
def test_shipped_spec_scales_every_image_field_to_signed_range(path: Path, block: str, tmp_path: Path) -> None:
    """The split's one normalize step reaches both image fields: a black pixel is -1 in each, white is 1."""
    images = blocky_digits(4)
    images[:, 0, 0] = 0
    write_digits(tmp_path, images)
    sg = check_spec(load_spec(path, on_tiny_digits(tmp_path)))
    split = sg.training.data["train"]
    assert split.dataset["type"] == block
    first, second = build_dataset(sg, split)[0][:2]
    assert first.min() == second.min() == -1 and second.max() == 1
    assert first[0, 0, 0] == -1 and second[0, 0, 0] in (-1, 1)  # blank, or white after inversion


def losses_of(run: Path) -> dict[str, list[float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [r for line in lines if (r := json.loads(line))["kind"] == "step"]
    return {k: [r[k] for r in steps] for k in steps[0] if k.startswith("train/")}


@pytest.mark.slow
@pytest.mark.parametrize(("path", "falls"), [(PIX2PIX, "train/l1"), (CYCLEGAN, "train/cycle_a")],
                         ids=["pix2pix", "cyclegan"])  # fmt: skip
def test_shipped_spec_trains_on_tiny_digits(path: Path, falls: str, tmp_path: Path) -> None:
    """20 steps of the spec's own gan loop: every loss finite, the reconstruction loss down by 15% (0.91 → 0.54
    for Pix2Pix's L1, 0.98 → 0.72 for CycleGAN's cycle loss when written; a player that does not learn stays
    near 1, the L1 distance of a blank tanh output to black and white cells)."""
    write_digits(tmp_path / "digits", blocky_digits(32))
    budget = ["train.epochs=null", "train.steps=20", "train.log_every=5"]
    spec = load_spec(path, on_tiny_digits(tmp_path / "digits") + budget)
    train_spec(spec, Options(run_dir=tmp_path / "run", quiet=True))
    losses = losses_of(tmp_path / "run")
    assert all(math.isfinite(v) for values in losses.values() for v in values), losses
    assert losses[falls][-1] < 0.85 * losses[falls][0], losses[falls]


def test_docstring_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the block examples read the shipped digits relative to the project root
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    shared = all((SHARED_MNIST / name).is_file() for name in SHARED_SHA256)
    needs_data = {"blocks.image_pairs.MnistEdges", "blocks.image_pairs.MnistUnpaired"}
    for test in finder.find(blocks.image_pairs):
        if test.examples and (shared or test.name not in needs_data):
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5
