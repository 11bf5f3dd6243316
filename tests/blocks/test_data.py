"""Dataset blocks: samples match their declared contracts, files are parsed strictly, missing files are named.

Most tests write tiny data files of their own (IDX files, a fake ``MNIST/raw`` folder, fake CIFAR-10 pickle
batches) so the real loading code runs without any shipped data; the tests on the shipped MNIST test set skip
when it is absent.
"""

from __future__ import annotations

import doctest
import gzip
import hashlib
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2

import blocks.data  # registers every shipped block too
from blocks.data import (
    CIFAR10,
    MNIST,
    Digits,
    FakeData,
    GaussianMixture2D,
    IDXFormatError,
    ImageLabelTensors,
    MnistIDX,
    RolloutDataset,
    parse_idx,
    read_idx,
)
from blocks.image_pairs import MnistEdges, MnistUnpaired
from blocks.shapes import ShapesCoco, ShapesSegmentation
from dagcv.registry import iter_live, registry
from dagcv.types import KINDS, evaluate_dims, parse_port_type
from tests.conftest import ROOT

SHARED_MNIST = ROOT.parent / "shared" / "datasets" / "mnist-t10k"
SHARED_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
needs_shared_mnist = pytest.mark.skipif(
    not all((SHARED_MNIST / name).is_file() for name in SHARED_SHA256),
    reason=f"the shipped MNIST test set is not at {SHARED_MNIST} (see shared/datasets/README.md)",
)


# ---------------------------------------------------------------------------------------------------------------
# Writers for the files the loaders read

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if (path.suffix == ".gz" if compress is None else compress) else data)
    return path


def digits_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_mnist_pair(folder: Path, n: int = 5, seed: int = 0, suffix: str = ".gz") -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits_like(n, seed)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def write_mnist_raw(root: Path, n_train: int = 3, n_test: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four uncompressed files torchvision's MNIST reads from ``root/MNIST/raw``."""
    raw, out = root / "MNIST" / "raw", {}
    for split, n, seed in [("train", n_train, 1), ("t10k", n_test, 2)]:
        images, labels = out[split] = digits_like(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return out


def write_cifar(root: Path, per_batch: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10's python batches (rows of 1024 red, 1024 green, 1024 blue bytes) and its meta file."""
    folder, rng, out = root / "cifar-10-batches-py", np.random.default_rng(0), {}
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist()
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "data": data, "labels": labels}))
        out[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return out


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A fake CIFAR-10 folder, with torchvision's expected md5 sums pointed at the fake files."""
    batches = write_cifar(tmp_path)
    folder, tv = tmp_path / "cifar-10-batches-py", torchvision.datasets.CIFAR10

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(tv, "train_list", [[name, md5(name)] for name, _ in tv.train_list])
    monkeypatch.setattr(tv, "test_list", [[name, md5(name)] for name, _ in tv.test_list])
    monkeypatch.setattr(tv, "meta", {**tv.meta, "md5": md5(tv.meta["filename"])})
    return tmp_path, batches


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every torchvision download fail the way it does offline, without touching the network."""

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise URLError(f"no network for {url}")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)


# ---------------------------------------------------------------------------------------------------------------
# The declared contract of every dataset block


def sample_cases(tmp: Path) -> dict[str, Callable[[], object]]:
    """A block instance per shipped dataset block, its files written under ``tmp`` where it needs some."""

    def mnist_idx() -> MnistIDX:
        write_mnist_pair(tmp / "idx")
        return MnistIDX(root=str(tmp / "idx"))

    def mnist() -> MNIST:
        write_mnist_raw(tmp / "tv")
        return MNIST(root=str(tmp / "tv"))

    def rollout_dataset() -> RolloutDataset:
        (tmp / "rollouts").mkdir(exist_ok=True)
        obs = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.savez(tmp / "rollouts" / "episodes.npz", observation=obs, action=np.array([0, 1, 1]))
        return RolloutDataset(root=str(tmp / "rollouts"), observation_size=4)

    return {
        "mnist_idx": mnist_idx,
        "mnist": mnist,
        "cifar10": lambda: CIFAR10(root=str(tmp)),  # written by the fake_cifar fixture
        "digits": Digits,
        "fake_data": lambda: FakeData(size=5, channels=2, height=7, width=3, num_classes=4),
        "gaussian_mixture_2d": lambda: GaussianMixture2D(size=6, modes=3, std=0.1),
        "mnist_edges": lambda: (mnist_idx(), MnistEdges(root=str(tmp / "idx")))[1],
        "mnist_unpaired": lambda: (mnist_idx(), MnistUnpaired(root=str(tmp / "idx")))[1],
        # Detection samples (image, targets) are checked in test_shapes.py, not by the classification collate.
        "shapes_coco": lambda: ShapesCoco(root=str(tmp / "shapes"), generate=2, height=16, width=16),
        "shapes_segmentation": lambda: ShapesSegmentation(root=str(tmp / "shapes"), generate=2, height=16, width=16),
        "rollout_dataset": rollout_dataset,
    }


def test_every_dataset_block_has_a_contract_case(tmp_path: Path) -> None:
    shipped = {c.name for c, _ in iter_live() if c.family == "data" and c.target.startswith("blocks.")}
    assert shipped == set(sample_cases(tmp_path)), "add a case for the new dataset block to sample_cases()"
    for name in shipped:
        contract = registry().get(name)
        assert contract is not None and contract.is_source and not contract.module


@pytest.mark.parametrize("name", ["mnist_idx", "mnist", "cifar10", "digits", "fake_data", "rollout_dataset"])
def test_samples_match_the_declared_contract(name: str, tmp_path: Path, fake_cifar: tuple[Path, dict]) -> None:
    block = sample_cases(tmp_path)[name]()
    data = block.dataset()
    contract = registry().get(name)
    assert contract is not None and len(data) > 0
    sample = data[0]
    assert isinstance(sample, tuple) and len(sample) == len(contract.outputs)
    batch = default_collate([sample])  # B=1
    ints = {k: v for k, v in vars(block).items() if type(v) is int}
    for port, value in zip(contract.outputs, batch, strict=True):
        ptype = parse_port_type(port.type)
        want = [d.value for d in evaluate_dims(ptype.dims or (), {"B": 1, **ints})]
        assert list(value.shape) == want, f"{name}.{port.name}: {list(value.shape)} != {port.type} = {want}"
        assert value.dtype == getattr(torch, KINDS[ptype.kind].dtype), f"{name}.{port.name}: {value.dtype}"
    if name == "rollout_dataset":  # an observation and the action taken, as recorded
        assert torch.equal(sample[0], torch.arange(4.0)) and sample[1] == 0
        return
    image, label = sample
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert type(label) is int and 0 <= label < block.num_classes == data.num_classes


def test_a_dataloader_batches_samples_as_declared() -> None:
    image, label = next(iter(DataLoader(FakeData(size=10).dataset(), batch_size=4)))
    assert image.shape == (4, 3, 32, 32) and image.dtype == torch.float32
    assert label.shape == (4,) and label.dtype == torch.int64


def test_a_spec_sizes_its_model_from_dataset_params(write_spec: Callable[..., Path]) -> None:
    from dagcv.compiler import compile_file

    spec = write_spec(
        "dagcv: 1\nname: fake_lenet\nblocks:\n"
        "  data: {type: fake_data, channels: 1, height: 28, width: 28}\n"
        "  features: {type: lenet_features, in: data.image}\n"
        "  classifier: {type: mlp_head, in: features, hidden: [8], num_classes: 10}\n"
        "  loss: {type: cross_entropy, in: {logits: classifier, target: data.label}}\n"
        "outputs: {loss: loss}\n"
    )
    built = compile_file(spec).built
    assert built.shapes[("data", "image")][1:] == (1, 28, 28)
    assert built.kwargs("features")["in_channels"] == 1


# ---------------------------------------------------------------------------------------------------------------
# IDX parsing


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trips(tmp_path: Path, dtype: type, compress: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    got = read_idx(write_idx(tmp_path / "x.idx", array, compress=compress))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


GOOD = idx_bytes(np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\0\0\x08", "3 bytes, too short for an IDX magic number"),
        (b"\x50\x4b\x03\x04" + GOOD[4:], "not an IDX file: magic number 0x504b0304"),
        (b"\0\0\x07\x02" + GOOD[4:], "unknown IDX type code 0x07"),
        (b"\0\0\x08\x00", "IDX header declares 0 dimensions"),
        (GOOD[:9], "truncated header: 2 dims need 12 bytes, the file has 9"),
        (GOOD[:-1], "truncated: shape 2×3 of uint8 needs 6 data bytes after the 12-byte header, found 5"),
        (GOOD + b"\0", "trailing bytes: shape 2×3 of uint8 needs 6 data bytes"),
        (idx_bytes(np.zeros(3, np.int32))[:-2],
         "truncated: shape 3 of int32 needs 12 data bytes after the 8-byte header, found 10"),
    ],
    ids=["short", "magic", "type", "0-dims", "header", "truncated", "trailing", "int32"],
)  # fmt: skip
def test_malformed_idx_is_rejected_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(IDXFormatError, match=re.escape(f"bad.idx: {message}")):
        parse_idx(data, "bad.idx")


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(GOOD)[:-6])
    with pytest.raises(IDXFormatError, match=f"{path}: corrupt or truncated gzip data"):
        read_idx(path)


# ---------------------------------------------------------------------------------------------------------------
# mnist_idx


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_mnist_idx_reads_gzipped_or_plain_files(tmp_path: Path, suffix: str) -> None:
    images, labels = write_mnist_pair(tmp_path, n=4, suffix=suffix)
    block = MnistIDX(root=str(tmp_path), images=f"t10k-images-idx3-ubyte{suffix}",
                     labels=f"t10k-labels-idx1-ubyte{suffix}")  # fmt: skip
    data = block.dataset()
    assert len(data) == 4
    for i in range(4):
        image, label = data[i]
        torch.testing.assert_close(image, torch.from_numpy(images[i]).float()[None] / 255, rtol=0, atol=1e-7)
        assert label == labels[i]


def test_mnist_idx_missing_files_are_named(tmp_path: Path) -> None:
    block = MnistIDX(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        block.dataset()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "t10k-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "nowhere" / "t10k-labels-idx1-ubyte.gz") in message
    assert "download: false" in message


def test_mnist_idx_relative_root_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"relative to the working directory {tmp_path}"):
        MnistIDX(root="data").dataset()


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.uint8), "expected N×28×28 uint8 images .*found 2×8×8 uint8"),
        (np.zeros((2, 28, 28), np.float32), np.zeros(2, np.uint8), "found 2×28×28 float32"),
        (np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8), "2 labels for the 3 images"),
        (np.zeros((2, 28, 28), np.uint8), np.array([1, 10], np.uint8), "labels must lie in 0..9, found 10"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1), np.uint8), "expected N integer labels"),
    ],
)  # fmt: skip
def test_mnist_idx_rejects_files_that_do_not_fit_the_contract(
    tmp_path: Path, images: np.ndarray, labels: np.ndarray, message: str
) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(IDXFormatError, match=message):
        MnistIDX(root=str(tmp_path)).dataset()


@needs_shared_mnist
def test_shipped_mnist_files_are_the_published_ones() -> None:
    for name, digest in SHARED_SHA256.items():
        assert hashlib.sha256((SHARED_MNIST / name).read_bytes()).hexdigest() == digest, name


@needs_shared_mnist
def test_mnist_idx_reads_the_shipped_test_set() -> None:
    data = MnistIDX(root=str(SHARED_MNIST)).dataset()
    assert len(data) == 10_000 and data.images.shape == (10_000, 1, 28, 28)
    # The published per-class counts of the MNIST test set.
    assert data.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert [data[i][1] for i in range(5)] == [7, 2, 1, 0, 4]
    image = data[0][0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert image.min() == 0 and image.max() == 1


# ---------------------------------------------------------------------------------------------------------------
# torchvision's MNIST and CIFAR-10


@pytest.mark.parametrize(("train", "split"), [(True, "train"), (False, "t10k")])
def test_mnist_loads_torchvision_raw_files(tmp_path: Path, train: bool, split: str) -> None:
    images, labels = write_mnist_raw(tmp_path)[split]
    data = MNIST(root=str(tmp_path), train=train).dataset()
    assert len(data) == len(labels)
    image, label = data[len(data) - 1]
    want = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])(images[-1][:, :, None])
    torch.testing.assert_close(image, want, rtol=0, atol=0)  # the same numbers as torchvision's transforms
    assert label == labels[-1]


def test_mnist_missing_files_name_the_folder_torchvision_reads(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        MNIST(root=str(tmp_path)).dataset()
    message = str(info.value)
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]:
        assert str(tmp_path / "MNIST" / "raw" / name) in message
    assert "missing 4 file(s)" in message and "download: false" in message


def test_mnist_hints_at_gzipped_files(tmp_path: Path) -> None:
    write_mnist_pair(tmp_path / "MNIST" / "raw")
    with pytest.raises(FileNotFoundError, match=r"torchvision reads uncompressed files: gunzip .*t10k-images"):
        MNIST(root=str(tmp_path), train=False).dataset()


def test_cifar10_loads_torchvision_pickle_batches(fake_cifar: tuple[Path, dict]) -> None:
    root, batches = fake_cifar
    train, test = CIFAR10(root=str(root)).dataset(), CIFAR10(root=str(root), train=False).dataset()
    assert len(train) == 10 and len(test) == 2
    rows, labels = batches["test_batch"]
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label == labels[1]
    # A row holds the red plane, then green, then blue, each row-major.
    torch.testing.assert_close(image, torch.from_numpy(rows[1]).reshape(3, 32, 32).float() / 255, rtol=0, atol=1e-7)
    assert train[9][1] == batches["data_batch_5"][1][1]


def test_cifar10_missing_files_name_the_folder_torchvision_reads(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10(root=str(tmp_path)).dataset()
    message = str(info.value)
    for name in ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]:
        assert str(tmp_path / "cifar-10-batches-py" / name) in message
    assert "download: false" in message


def test_cifar10_files_that_fail_the_md5_check_are_reported(tmp_path: Path) -> None:
    write_cifar(tmp_path)  # not the published files, and no md5 override
    with pytest.raises(RuntimeError, match=r"torchvision rejected the files under .*md5"):
        CIFAR10(root=str(tmp_path)).dataset()


def test_download_true_uses_local_files_without_the_network(fake_cifar: tuple[Path, dict], no_network: None) -> None:
    assert len(CIFAR10(root=str(fake_cifar[0]), download=True).dataset()) == 10


@pytest.mark.parametrize("block", [MNIST, CIFAR10])
def test_download_true_offline_says_why_it_failed(tmp_path: Path, no_network: None, block: type) -> None:
    with pytest.raises(
        RuntimeError, match=r"(?s)download: true, but downloading into .* failed .*These machines have no network"
    ):
        block(root=str(tmp_path), download=True).dataset()


# ---------------------------------------------------------------------------------------------------------------
# digits and fake_data


def test_digits_scales_sklearn_values_to_unit_range() -> None:
    from sklearn.datasets import load_digits

    bunch, data = load_digits(), Digits().dataset()
    assert len(data) == 1797 and data.images.dtype == torch.uint8
    image, label = data[5]
    torch.testing.assert_close(image[0], torch.from_numpy(bunch.images[5]).float() / 16, rtol=0, atol=1e-7)
    assert label == bunch.target[5]
    assert data.images.max() == 16 and data.labels.unique().tolist() == list(range(10))


def test_fake_data_is_deterministic_by_seed() -> None:
    def all_of(block: FakeData) -> tuple[torch.Tensor, list[int]]:
        images, labels = zip(*block.dataset(), strict=True)
        return torch.stack(images), list(labels)

    first, again, other = all_of(FakeData(size=8)), all_of(FakeData(size=8)), all_of(FakeData(size=8, seed=1))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert not torch.equal(first[0], other[0])
    assert first[1] == [9, 7, 5, 3, 6, 7, 6, 2]  # golden: torch's generator is pinned with torch


def test_fake_data_rejects_empty_shapes() -> None:
    with pytest.raises(ValueError, match="fake_data: height must be at least 1, got 0"):
        FakeData(height=0)


def test_image_label_tensors_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="expected N×C×H×W images and N labels"):
        ImageLabelTensors(torch.zeros(2, 8, 8), torch.zeros(2), max_value=1, num_classes=2)


def test_image_label_tensors_never_changes_its_images() -> None:
    data = ImageLabelTensors(torch.full((1, 1, 2, 2), 8.0), torch.zeros(1), max_value=16, num_classes=2)
    assert data[0][0].eq(0.5).all() and data[0][0].eq(0.5).all() and data.images.eq(8).all()


def test_docstring_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples name the shipped data relative to the project root
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    needs_data = {"blocks.data.MnistIDX", "blocks.data.read_idx"}
    shared = all((SHARED_MNIST / name).is_file() for name in SHARED_SHA256)
    for test in finder.find(blocks.data):
        if test.examples and (shared or test.name not in needs_data):
            runner.run(test)
    assert runner.failures == 0 and runner.tries > 5
