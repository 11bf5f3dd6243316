"""Sample-quality figures (FLD, precision/recall, class accuracy) in the feature space of DigitFeatureNet.

The net is trained for a few seconds on scikit-learn's bundled 8×8 digits, upsampled to 28×28; nothing is read
from ../shared/datasets. FLD is checked against a direct float64 scipy computation on the same features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from dagcv.train.sample_quality import (
    DigitFeatureNet,
    check_images,
    class_accuracy,
    embed,
    fingerprint,
    frechet_distance,
    frechet_distance_of_features,
    load_feature_net,
    per_class_accuracy,
    precision_recall,
    sample_quality,
    save_feature_net,
)

TRAIN = 1400  # of the 1,797 digits; the rest are held out


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    small = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    images = F.interpolate(small, size=28, mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.tensor(data.target)


@pytest.fixture(scope="module")
def net(digits: tuple[Tensor, Tensor]) -> DigitFeatureNet:
    """The default architecture after 2 epochs on the training digits (about 1.5 s on one thread)."""
    images, labels = digits
    torch.manual_seed(0)
    net = DigitFeatureNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in torch.randperm(TRAIN, generator=generator).split(64):
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def features(net: DigitFeatureNet, digits: tuple[Tensor, Tensor]) -> Tensor:
    """Features of every digit, computed once."""
    return embed(digits[0], net)[0]


def scipy_frechet(real: Tensor, fake: Tensor) -> float:
    """FID's formula written directly in float64 numpy, with scipy's matrix square root."""
    a, b = real.double().numpy(), fake.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def shifted(images: Tensor, pixels: int) -> Tensor:
    """Images moved right by ``pixels``, zeros coming in on the left."""
    return F.pad(images, (pixels, 0))[..., :28]


# ---------------------------------------------------------------------------------------------------------------
# The net


def test_trained_net_reads_held_out_digits(net: DigitFeatureNet, digits: tuple[Tensor, Tensor]) -> None:
    images, labels = digits
    assert class_accuracy(net, images[TRAIN:], labels[TRAIN:]) > 0.8
    each = per_class_accuracy(net, images[TRAIN:], labels[TRAIN:])
    assert sorted(each) == list(range(10))
    only_threes = labels[TRAIN:] == 3
    assert list(per_class_accuracy(net, images[TRAIN:][only_threes], labels[TRAIN:][only_threes])) == [3]


def test_embedding_leaves_the_training_flag_as_it_was() -> None:
    net = DigitFeatureNet().train()
    features, logits = embed(torch.rand(5, 1, 28, 28), net, batch_size=2)
    assert features.shape == (5, 128) and logits.shape == (5, 10) and not features.requires_grad
    assert net.training


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_of_a_set_to_itself_is_zero(net: DigitFeatureNet, digits: tuple[Tensor, Tensor]) -> None:
    images = digits[0][:300]
    assert frechet_distance(images, images, net) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_grows_with_the_shift(net: DigitFeatureNet, digits: tuple[Tensor, Tensor]) -> None:
    images = digits[0][:300]
    real = embed(images, net)[0]
    distances = [frechet_distance_of_features(real, embed(shifted(images, s), net)[0]) for s in (1, 2, 4)]
    assert 1 < distances[0] < distances[1] < distances[2]


def test_frechet_distance_of_features_shifted_by_c_is_c_squared_per_dim() -> None:
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance_of_features(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-9)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # ReLU units dead on every digit: rank-deficient covariances
def test_frechet_distance_equals_scipy_in_float64(features: Tensor) -> None:
    real, fake = features[:TRAIN], features[TRAIN:]
    ours = frechet_distance_of_features(real, fake)
    assert isinstance(ours, float) and ours > 1
    assert ours == pytest.approx(scipy_frechet(real, fake), rel=1e-6)  # agrees to 1e-12 on x86 with OpenBLAS


def test_frechet_distance_of_images_is_that_of_their_features(
    net: DigitFeatureNet, digits: tuple[Tensor, Tensor], features: Tensor
) -> None:
    images = digits[0]
    ours = frechet_distance(images[:TRAIN], images[TRAIN:], net, batch_size=256)
    assert ours == pytest.approx(frechet_distance_of_features(features[:TRAIN], features[TRAIN:]), rel=1e-9)


def test_held_out_digits_are_far_closer_than_noise(net: DigitFeatureNet, features: Tensor) -> None:
    noise = embed(torch.rand(397, 1, 28, 28, generator=torch.Generator().manual_seed(0)), net)[0]
    same_kind = frechet_distance_of_features(features[:TRAIN], features[TRAIN:])
    assert frechet_distance_of_features(features[:TRAIN], noise) > 20 * same_kind


# ---------------------------------------------------------------------------------------------------------------
# Precision and recall


def test_precision_recall_of_a_set_against_itself_is_one(features: Tensor) -> None:
    assert precision_recall(features, features, chunk_size=128) == (1.0, 1.0)


def test_precision_recall_of_held_out_digits_is_high_and_of_noise_zero(net: DigitFeatureNet, features: Tensor) -> None:
    noise = embed(torch.rand(397, 1, 28, 28, generator=torch.Generator().manual_seed(0)), net)[0]
    precision, recall = precision_recall(features[:TRAIN], features[TRAIN:])
    assert precision > 0.8 and recall > 0.6
    # A net trained for seconds maps a few noise images near some digits' features; none of the digits near noise.
    precision, recall = precision_recall(features[:TRAIN], noise)
    assert precision < 0.2 and recall == 0.0


def test_precision_recall_of_far_apart_clusters_is_zero() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 8, generator=g), torch.randn(300, 8, generator=g) + 50
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_by_hand() -> None:
    # k=1: every real point's ball has radius 1; the two fake points are 9.5 apart, so their balls cover 0..3.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_precision_recall_needs_more_points_than_k() -> None:
    with pytest.raises(ValueError, match="N > k = 3"):
        precision_recall(torch.zeros(3, 4), torch.zeros(10, 4))


# ---------------------------------------------------------------------------------------------------------------
# All figures at once


def test_sample_quality_writes_every_figure_with_its_seed_and_size(
    net: DigitFeatureNet, digits: tuple[Tensor, Tensor]
) -> None:
    images, labels = digits
    out = sample_quality(images[TRAIN:], images[:TRAIN], net, labels=labels[TRAIN:], seed=7, num_samples=300)
    assert out["num_samples"] == 300 and out["seed"] == 7 and out["k"] == 3
    assert out["feature_net"] == fingerprint(net)
    noise = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert 0 < out["fld"] < sample_quality(noise, images[:TRAIN], net, seed=7, num_samples=300)["fld"] / 10
    assert out["precision"] > 0.5 and out["recall"] > 0.5
    assert out["class_accuracy"] > 0.8
    assert {f"class_accuracy_{c}" for c in range(10)} <= set(out)
    assert all(type(v) in (int, float, str) for v in out.values())
    again = sample_quality(images[TRAIN:], images[:TRAIN], net, labels=labels[TRAIN:], seed=7, num_samples=300)
    assert again == out
    other_seed = sample_quality(images[TRAIN:], images[:TRAIN], net, seed=8, num_samples=300)
    assert other_seed["fld"] != out["fld"] and "class_accuracy" not in other_seed


def test_sample_quality_needs_enough_samples(digits: tuple[Tensor, Tensor]) -> None:
    images = digits[0]
    with pytest.raises(ValueError, match="num_samples is 500 but only 100 images"):
        sample_quality(images[:100], images, DigitFeatureNet(), seed=0, num_samples=500)
    with pytest.raises(ValueError, match="at least 2"):
        sample_quality(images, images, DigitFeatureNet(), seed=0, num_samples=1)


# ---------------------------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(4, 28, 28), "expected N×1×28×28 images, found 4×28×28"),
        (torch.rand(4, 3, 28, 28), "found 4×3×28×28"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), r"found torch.uint8 \(divide 8-bit pixels by 255\)"),
        (torch.rand(1, 1, 28, 28), "at least 2 images"),
        (torch.rand(4, 1, 28, 28) * 2 - 1, r"values must lie in \[0, 1\].*pass \(x \+ 1\) / 2"),
        (torch.full((4, 1, 28, 28), 1.002), r"found \[1.002, 1.002\]"),
        (torch.full((4, 1, 28, 28), float("nan")), "values must lie in"),
    ],
)
def test_bad_images_are_clear_errors(images: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frechet_distance(images, torch.rand(4, 1, 28, 28), DigitFeatureNet())


def test_rounding_outside_the_range_is_clamped() -> None:
    images = torch.rand(4, 1, 28, 28)
    images[0, 0, 0, 0], images[1, 0, 0, 0] = -5e-4, 1 + 5e-4
    checked = check_images(images)
    assert checked.min() == 0 and checked.max() == 1


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def test_save_load_round_trip(net: DigitFeatureNet, tmp_path: Path) -> None:
    path = tmp_path / "fld_net.pt"
    meta = {"val_accuracy": 0.99, "split": {"seed": 0, "range": [0, 8000]}}
    save_feature_net(net, path, meta=meta)
    loaded = load_feature_net(path)
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.features(images), net.features(images))
    assert torch.equal(loaded(images), net(images))
    assert loaded.meta == meta and not loaded.training and fingerprint(loaded) == fingerprint(net)
    assert sorted(torch.load(path, weights_only=True)) == ["architecture", "format", "meta", "state_dict", "version"]


def test_other_architectures_round_trip(tmp_path: Path) -> None:
    net = DigitFeatureNet(channels=(4, 8), num_features=16)
    save_feature_net(net, tmp_path / "small.pt", meta={})
    assert load_feature_net(tmp_path / "small.pt").architecture() == net.architecture()


def test_metadata_must_be_plain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"meta.root is a PosixPath"):
        save_feature_net(DigitFeatureNet(), tmp_path / "x.pt", meta={"root": tmp_path})
    with pytest.raises(ValueError, match=r"meta.accuracy is a float64"):
        save_feature_net(DigitFeatureNet(), tmp_path / "x.pt", meta={"accuracy": np.float64(0.9)})
    assert not (tmp_path / "x.pt").exists()


def test_missing_checkpoint_says_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "nothing.pt"
    with pytest.raises(ValueError, match=r"no such file: .*nothing\.pt.*python tools/train_fld_net\.py"):
        load_feature_net(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", "is not a torch checkpoint"),
        ({"conv.weight": torch.zeros(3)}, r"not an FLD feature net checkpoint \(expected format 'dagcv.fld_net'"),
        ([1, 2, 3], "found a list"),
        ("wrong_weights", "the weights do not fit its architecture"),
    ],
)
def test_bogus_checkpoint_is_a_clear_error(content: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bogus.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "wrong_weights":
        save_feature_net(DigitFeatureNet(), path, meta={})
        state = torch.load(path, weights_only=True)
        state["architecture"]["num_features"] = 64
        torch.save(state, path)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message) as info:
        load_feature_net(path)
    assert str(path) in str(info.value) and "python tools/train_fld_net.py" in str(info.value)
