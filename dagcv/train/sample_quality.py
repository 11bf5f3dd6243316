"""Sample quality of generated digits, offline: figures in the feature space of a small MNIST classifier.

FID needs Inception weights, which cannot be downloaded here, and Inception features of 28×28 digits mean
little anyway. So the figures are taken in the 128-d penultimate layer of :class:`DigitFeatureNet`, a small
convnet trained on the shipped specs' MNIST training split by ``python tools/train_fld_net.py``:

- **FLD**: the Fréchet distance between Gaussians fitted to real and generated features (FID's formula, our
  feature net), computed in float64 by torchmetrics' ``FrechetInceptionDistance``;
- **precision / recall**: the improved precision and recall of Kynkäänniemi et al. 2019, from k-NN balls;
- **class accuracy**: for class-conditional samples, how often the classifier reads the class asked for.

Figures from different feature nets, sample counts or seeds are not comparable (FLD is biased upward for small
sets): :func:`sample_quality` writes ``num_samples``, ``seed`` and the feature net's fingerprint beside them.

Example:
    >>> net = load_feature_net("runs/fld_net.pt")  # doctest: +SKIP
    >>> sample_quality(samples, real, net, seed=0, num_samples=2000)  # doctest: +SKIP
    {'num_samples': 2000, 'seed': 0, 'feature_net': '3f9a…', 'fld': 1.83, 'precision': 0.81, 'recall': 0.77, 'k': 3}
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dagcv.files import atomic_file, checkpoint_problem

DEFAULT_PATH = "runs/fld_net.pt"
MAKE_ONE = "make one with `python tools/train_fld_net.py` (it writes runs/fld_net.pt)"
FORMAT = "dagcv.fld_net"
VERSION = 1
RANGE_TOLERANCE = 1e-3  # generators with a sigmoid or a clamp overshoot [0, 1] by rounding only


class DigitFeatureNet(nn.Module):
    """A small convnet classifier of 1×28×28 digits in ``[0, 1]``, whose penultimate layer is the feature space.

    Two 3×3 conv + ReLU + 2×2 max-pool stages, a fully connected layer with ReLU (the features), dropout and a
    linear classifier. Inputs are normalised inside with MNIST's mean and standard deviation, so callers pass
    images as generators produce them.

    Args:
        channels: output channels of the two conv stages.
        num_features: size of the feature layer (torchmetrics reads this attribute).
        num_classes: number of classes of the logits.
        dropout: dropout before the classifier (training only; features never see it).

    Example:
        >>> net = DigitFeatureNet()
        >>> images = torch.rand(4, 1, 28, 28)
        >>> net.features(images).shape, net(images).shape
        (torch.Size([4, 128]), torch.Size([4, 10]))
    """

    MEAN, STD = 0.1307, 0.3081  # of the 60,000 MNIST training digits

    def __init__(
        self, *, channels: tuple[int, int] = (32, 64), num_features: int = 128, num_classes: int = 10,
        dropout: float = 0.3,
    ) -> None:  # fmt: skip
        super().__init__()
        c1, c2 = channels
        self.channels, self.num_features, self.num_classes = (c1, c2), num_features, num_classes
        self.dropout_p = dropout
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, num_features), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)
        self.meta: dict[str, Any] = {}  # what load_feature_net read beside the weights

    def architecture(self) -> dict[str, Any]:
        """The constructor's arguments, as plain data (what a checkpoint stores to rebuild the net)."""
        return {
            "channels": list(self.channels),
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "dropout": self.dropout_p,
        }

    def features(self, x: Tensor) -> Tensor:
        """``B×num_features`` penultimate activations of ``B×1×28×28`` images in ``[0, 1]``."""
        return self.body((x - self.MEAN) / self.STD)

    def head(self, features: Tensor) -> Tensor:
        """Class logits of features."""
        return self.classifier(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        """``B×num_classes`` logits."""
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_feature_net(net: DigitFeatureNet, path: str | Path, *, meta: dict[str, Any]) -> None:
    """Write ``net`` atomically: its state_dict, its architecture and ``meta`` (plain data: the split it was
    trained on, its held-out accuracy, ...), readable with ``torch.load(weights_only=True)``.

    Example:
        >>> save_feature_net(DigitFeatureNet(), "runs/fld_net.pt", meta={"val_accuracy": 0.99})  # doctest: +SKIP
    """
    _check_plain(meta, "meta")
    state = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": net.architecture(),
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    with atomic_file(Path(path)) as f:
        torch.save(state, f)


def load_feature_net(path: str | Path = DEFAULT_PATH) -> DigitFeatureNet:
    """The net saved at ``path``, in eval mode on the CPU, with its metadata in ``net.meta``.

    Raises:
        ValueError: the file is missing, or is not a checkpoint that :func:`save_feature_net` wrote; the message
            names the path and how to make one.

    Example:
        >>> net = load_feature_net("runs/fld_net.pt")  # doctest: +SKIP
        >>> net.meta["val_accuracy"]  # doctest: +SKIP
        0.9905
    """
    problem = checkpoint_problem(str(path))
    if problem is not None:
        raise ValueError(f"cannot load the FLD feature net: {problem}; {MAKE_ONE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an archive torch.save did not write, or a pickle weights_only refuses
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path} cannot be read as a checkpoint ({detail}); {MAKE_ONE}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = f"format {state.get('format')!r}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ValueError(f"{path} is not an FLD feature net checkpoint (expected format {FORMAT!r}, found {found}); "
                         f"{MAKE_ONE}")  # fmt: skip
    if state.get("version") != VERSION:
        raise ValueError(f"{path} is an FLD feature net of version {state.get('version')!r}, this dagcv reads "
                         f"version {VERSION}; {MAKE_ONE}")  # fmt: skip
    arch = state.get("architecture")
    try:
        net = DigitFeatureNet(**{**arch, "channels": tuple(arch["channels"])})
        net.load_state_dict(state["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"{path}: the weights do not fit its architecture {arch} ({detail}); {MAKE_ONE}") from None
    net.meta = state.get("meta") or {}
    return net.eval()


def fingerprint(net: nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 of the net's weights: FLD figures compare only under equal ones.

    Example:
        >>> len(fingerprint(DigitFeatureNet()))
        16
    """
    digest = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse later (a Path, a numpy scalar, ...)."""
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"{where}: keys must be strings, found {key!r}")
            _check_plain(item, f"{where}.{key}")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif type(value) not in (str, int, float, bool, type(None)):  # not subclasses: numpy.float64, TorchVersion
        raise ValueError(f"{where} is a {type(value).__name__}; metadata must be plain (str, int, float, bool, "
                         "None, lists and dicts of them)")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Features


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """``images`` clamped to ``[0, 1]`` after checking they are ``N×1×28×28`` floats (N ≥ 2) within
    ``RANGE_TOLERANCE`` of that range; anything else is a ValueError that says what was found.

    Example:
        >>> check_images(torch.full((2, 1, 28, 28), 1.0005)).max()
        tensor(1.)
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"{name}: expected a tensor of N×1×28×28 images, found a {type(images).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        shape = "×".join(map(str, images.shape)) or "a scalar"
        raise ValueError(f"{name}: expected N×1×28×28 images, found {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected float images in [0, 1], found {images.dtype} (divide 8-bit pixels by 255)")
    if len(images) < 2:
        raise ValueError(f"{name}: at least 2 images are needed (a covariance of one sample is undefined)")
    lo, hi = images.min().item(), images.max().item()
    if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):  # NaN fails both comparisons
        hint = " (images in [-1, 1]? pass (x + 1) / 2)" if lo >= -1 - RANGE_TOLERANCE and lo < -0.5 else ""
        raise ValueError(f"{name}: values must lie in [0, 1] (± {RANGE_TOLERANCE:g}), found [{lo:.4g}, {hi:.4g}]{hint}")
    return images.clamp(0, 1)


@contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode without autograd for the block; its training flag is restored after."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield net
    finally:
        net.train(was_training)


def embed(images: Tensor, net: DigitFeatureNet, *, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Features ``N×num_features`` and logits ``N×num_classes`` of checked images, in batches, on the net's device.

    Example:
        >>> features, logits = embed(torch.rand(3, 1, 28, 28), DigitFeatureNet())
        >>> features.shape, logits.shape
        (torch.Size([3, 128]), torch.Size([3, 10]))
    """
    device = next(net.parameters()).device
    features, logits = [], []
    with evaluating(net):
        for batch in images.split(batch_size):
            f = net.features(batch.to(device))
            features.append(f)
            logits.append(net.head(f))
    return torch.cat(features), torch.cat(logits)


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance


class _Float64(nn.Module):
    """The "feature extractor" torchmetrics' FID gets: features already computed, in float64.

    The metric accumulates in float64 but casts its result back to the extractor's output dtype; float64
    output keeps the distance in float64 to the end.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.double()


def frechet_distance_of_features(real_features: Tensor, fake_features: Tensor) -> float:
    """The Fréchet distance ``‖μr − μf‖² + Tr(Σr + Σf − 2(ΣrΣf)^½)`` between Gaussians fitted to two feature sets
    ``N×D`` (torchmetrics' ``FrechetInceptionDistance`` with a custom extractor, in float64).

    Example:
        >>> x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
        >>> round(frechet_distance_of_features(x, x + 1), 3)  # 8 dims shifted by 1
        8.0
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, f in (("real_features", real_features), ("fake_features", fake_features)):
        if f.dim() != 2 or len(f) < 2:
            raise ValueError(f"{name}: expected N×D features with N ≥ 2, found {'×'.join(map(str, f.shape))}")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"feature sizes differ: {real_features.shape[1]} real, {fake_features.shape[1]} fake")
    metric = FrechetInceptionDistance(feature=_Float64(real_features.shape[1]), normalize=True)
    metric = metric.to(real_features.device)
    metric.update(real_features, real=True)
    metric.update(fake_features.to(real_features.device), real=False)
    # Rounding makes the distance of a set to itself about -1e-12 at times; a distance is never negative.
    return max(0.0, metric.compute().item())


def frechet_distance(real: Tensor, fake: Tensor, net: DigitFeatureNet, *, batch_size: int = 500) -> float:
    """FLD: the Fréchet distance between real and generated ``N×1×28×28`` images in ``[0, 1]``, in the feature
    space of ``net`` (FID's formula with our own feature net). Lower is better; 0 for identical statistics.

    Example:
        >>> net = load_feature_net("runs/fld_net.pt")  # doctest: +SKIP
        >>> frechet_distance(real_digits, torch.rand(2000, 1, 28, 28), net)  # doctest: +SKIP
        412.7
    """
    real_features, _ = embed(check_images(real, "real"), net, batch_size=batch_size)
    fake_features, _ = embed(check_images(fake, "fake"), net, batch_size=batch_size)
    return frechet_distance_of_features(real_features, fake_features)


# ---------------------------------------------------------------------------------------------------------------
# Precision and recall


def precision_recall(
    real_features: Tensor, fake_features: Tensor, *, k: int = 3, chunk_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake against real features ``N×D``.

    Each set stands for its manifold: the union of balls around its points, each ball reaching the point's k-th
    nearest neighbour in the same set. Precision is the fraction of fake points inside the real manifold (are
    samples realistic?), recall the fraction of real points inside the fake manifold (is the variety covered?).
    Distances are float64, ``chunk_size`` rows at a time.

    Example:
        >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
        >>> precision_recall(x, x), precision_recall(x, x + 100)
        ((1.0, 1.0), (0.0, 0.0))
    """
    for name, f in (("real_features", real_features), ("fake_features", fake_features)):
        if f.dim() != 2 or len(f) <= k:
            raise ValueError(f"{name}: expected N×D features with N > k = {k}, found {'×'.join(map(str, f.shape))}")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"feature sizes differ: {real_features.shape[1]} real, {fake_features.shape[1]} fake")
    real, fake = real_features.double(), fake_features.to(real_features.device).double()
    precision = _covered(fake, real, _knn_radii(real, k, chunk_size), chunk_size)
    recall = _covered(real, fake, _knn_radii(fake, k, chunk_size), chunk_size)
    return precision, recall


def _knn_radii(points: Tensor, k: int, chunk_size: int) -> Tensor:
    # The (k+1)-th smallest distance: the smallest is the point's distance to itself.
    return torch.cat([torch.cdist(part, points).kthvalue(k + 1, dim=1).values for part in points.split(chunk_size)])


def _covered(points: Tensor, centres: Tensor, radii: Tensor, chunk_size: int) -> float:
    """The fraction of ``points`` inside at least one ball (``centres``, ``radii``)."""
    inside = [(torch.cdist(part, centres) <= radii).any(dim=1) for part in points.split(chunk_size)]
    return torch.cat(inside).double().mean().item()


# ---------------------------------------------------------------------------------------------------------------
# Class accuracy


def class_accuracy(net: DigitFeatureNet, images: Tensor, labels: Tensor, *, batch_size: int = 500) -> float:
    """The fraction of images the classifier reads as their label (class-conditional samples: the class asked for).

    Example:
        >>> net = load_feature_net("runs/fld_net.pt")  # doctest: +SKIP
        >>> class_accuracy(net, samples, requested_labels)  # doctest: +SKIP
        0.962
    """
    _, logits = embed(check_images(images), net, batch_size=batch_size)
    return _accuracies(logits, labels)[0]


def per_class_accuracy(
    net: DigitFeatureNet, images: Tensor, labels: Tensor, *, batch_size: int = 500
) -> dict[int, float]:
    """The accuracy of each class present in ``labels``, by class index (absent classes have no entry).

    Example:
        >>> net = load_feature_net("runs/fld_net.pt")  # doctest: +SKIP
        >>> per_class_accuracy(net, samples, requested_labels)  # doctest: +SKIP
        {0: 0.99, 1: 0.995, 2: 0.94, ...}
    """
    _, logits = embed(check_images(images), net, batch_size=batch_size)
    return _accuracies(logits, labels)[1]


def _accuracies(logits: Tensor, labels: Tensor) -> tuple[float, dict[int, float]]:
    from torchmetrics.functional.classification import multiclass_accuracy

    num_classes = logits.shape[1]
    labels = torch.as_tensor(labels).to(logits.device)
    if labels.shape != logits.shape[:1] or labels.is_floating_point():
        raise ValueError(f"labels: expected {len(logits)} integer class indices, found {labels.dtype} "
                         f"{'×'.join(map(str, labels.shape)) or 'scalar'}")  # fmt: skip
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {labels.min().item()}..{labels.max().item()}")
    preds = logits.argmax(dim=1)
    overall = multiclass_accuracy(preds, labels, num_classes=num_classes, average="micro").item()
    each = multiclass_accuracy(preds, labels, num_classes=num_classes, average="none")
    present = torch.bincount(labels, minlength=num_classes) > 0  # torchmetrics scores absent classes 0
    return overall, {c: each[c].item() for c in range(num_classes) if present[c]}


# ---------------------------------------------------------------------------------------------------------------
# Everything at once


def sample_quality(
    samples: Tensor,
    real: Tensor,
    net: DigitFeatureNet,
    *,
    labels: Tensor | None = None,
    seed: int,
    num_samples: int,
    k: int = 3,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Every figure of generated digits against real ones, in one flat dict of plain values.

    The first ``num_samples`` samples are compared with ``num_samples`` real images (a permutation drawn from
    ``seed`` picks them when ``real`` has more), so both sets have the size that FLD's bias depends on. ``seed``
    is the seed the samples were drawn with; it is written beside ``num_samples`` and the feature net's
    fingerprint, without which FLD figures cannot be compared.

    Args:
        samples: generated images ``N×1×28×28`` in ``[0, 1]``, N ≥ ``num_samples``.
        real: real images, as many or more.
        net: the feature net (:func:`load_feature_net`).
        labels: the classes the samples were conditioned on; adds ``class_accuracy`` and ``class_accuracy_<c>``.
        seed: the sampling seed (recorded; also picks the real subset).
        num_samples: how many images of each set to compare.
        k: the neighbourhood size of precision and recall.
        batch_size: images per forward pass of the net.

    Returns:
        ``num_samples``, ``seed``, ``feature_net`` (fingerprint), ``fld``, ``precision``, ``recall``, ``k``, and
        with labels ``class_accuracy`` and one ``class_accuracy_<c>`` per class present.

    Example:
        >>> sample_quality(samples, real, net, labels=labels, seed=0, num_samples=2000)  # doctest: +SKIP
        {'num_samples': 2000, 'seed': 0, 'feature_net': '3f9a…', 'fld': 1.83, ..., 'class_accuracy_9': 0.95}
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (a covariance of one sample is undefined), got {num_samples}")
    for name, images in (("samples", samples), ("real", real)):
        if len(images) < num_samples:
            raise ValueError(f"{name}: num_samples is {num_samples} but only {len(images)} images were given")
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:num_samples]
    fake_features, fake_logits = embed(check_images(samples[:num_samples], "samples"), net, batch_size=batch_size)
    real_features, _ = embed(check_images(real[pick], "real"), net, batch_size=batch_size)
    precision, recall = precision_recall(real_features, fake_features, k=k)
    out: dict[str, Any] = {
        "num_samples": num_samples,
        "seed": seed,
        "feature_net": fingerprint(net),
        "fld": frechet_distance_of_features(real_features, fake_features),
        "precision": precision,
        "recall": recall,
        "k": k,
    }
    if labels is not None:
        overall, each = _accuracies(fake_logits, torch.as_tensor(labels)[:num_samples])
        out["class_accuracy"] = overall
        out.update({f"class_accuracy_{c}": acc for c, acc in each.items()})
    return out
