"""Loaders from the ``data:`` section: dataset block → seeded subset → transforms → batches of spec inputs.

Shuffling comes from :class:`EpochSampler`, a permutation drawn from ``(seed, epoch)`` alone. So the order of an
epoch never depends on what ran before it, a run resumed mid-epoch skips exactly the batches it already saw,
and under DDP each rank takes every ``world``-th index of the same permutation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from dagcv.graph import SpecGraph
from dagcv.train.config import SplitConfig, SubsetConfig
from dagcv.train.transforms import TRANSFORMS


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation from ``(seed, epoch)`` (or in order), this rank's share, from ``start``."""

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch = 0
        self.start = 0  # indices of this rank to skip (a resumed epoch)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            indices = torch.randperm(self.size, generator=g).tolist()
        else:
            indices = list(range(self.size))
        return indices[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return max(0, len(range(self.rank, self.size, self.world)) - self.start)


class _Transformed(Dataset):
    def __init__(self, base: Dataset, transform: Any) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.transform(self.base[i])


def subset_indices(size: int, cfg: SubsetConfig) -> list[int]:
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    if cfg.range is not None:
        lo, hi = cfg.range
    else:
        lo, hi = (round(f * size) for f in cfg.fraction)  # type: ignore[union-attr]
    if hi > size:
        raise ValueError(f"subset range [{lo}, {hi}) is past the dataset's {size} samples")
    return perm[lo:hi]


def make_transform(steps: list[dict[str, Any]]) -> Any:
    from torchvision.transforms import v2

    return v2.Compose(
        [getattr(v2, TRANSFORMS[s["type"]].cls)(**{k: v for k, v in s.items() if k != "type"}) for s in steps]
    )


def build_dataset(sg: SpecGraph, split: SplitConfig) -> Dataset:
    """The split's dataset: the dataset block's ``dataset()``, its subset, its transforms."""
    params = {k: v for k, v in split.dataset.items() if k != "type"}
    block = sg.registry.implementation(split.dataset["type"])(**params)
    dataset: Dataset = block.dataset()
    if split.subset is not None:
        dataset = Subset(dataset, subset_indices(len(dataset), split.subset))  # type: ignore[arg-type]
    if split.transforms:
        dataset = _Transformed(dataset, make_transform(split.transforms))
    return dataset


def collate_fn_of(dataset: Dataset) -> Any:
    """The dataset's own ``collate_fn`` (detection data keeps targets as a list), looked up through subsets and
    transforms; None for torch's default stacking."""
    while True:
        if hasattr(dataset, "collate_fn"):
            return dataset.collate_fn
        inner = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
        if inner is None:
            return None
        dataset = inner


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor on ``device``, inside lists and dicts too (detection targets)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(move_to(v, device) for v in value)
    return value


def batch_size(batch: dict[str, Any]) -> int:
    """Samples in a batch: the first dim of its first tensor, or the length of its first list."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
        if isinstance(value, list):
            return len(value)
    return 0


class SplitLoader:
    """Batches of one split as dicts of spec inputs, with an :class:`EpochSampler` behind them."""

    def __init__(
        self,
        dataset: Dataset,
        split: SplitConfig,
        fields: dict[str, int],
        *,
        seed: int,
        rank: int,
        world: int,
        train: bool,
    ) -> None:
        self.fields = list(fields.items())
        self.sampler = EpochSampler(len(dataset), shuffle=split.shuffle and train, seed=seed, rank=rank, world=world)  # type: ignore[arg-type]
        # A generator of its own: creating an iterator would otherwise draw from the global RNG (and shift
        # dropout and augmentation randomness between a resumed run and an uninterrupted one).
        self.loader = DataLoader(
            dataset,
            batch_size=split.batch_size,
            sampler=self.sampler,
            num_workers=split.workers,
            drop_last=split.drop_last,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=split.workers > 0,
            collate_fn=collate_fn_of(dataset),
        )
        self.batch_size = split.batch_size

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.set_epoch(epoch, skip_batches * self.batch_size)
        for batch in self.loader:
            yield {name: batch[i] for name, i in self.fields}

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.sampler.order())


def open_split(sg: SpecGraph, split: str, *, seed: int, rank: int = 0, world: int = 1, train: bool) -> SplitLoader:
    """The loader of ``data.<split>`` for a loop; a dataset that cannot be read is a positioned spec error."""
    from dagcv.errors import SpecError

    plan = sg.training  # type: ignore[attr-defined]
    cfg = plan.data[split]
    try:
        dataset = build_dataset(sg, cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise SpecError.at(
            sg.spec.source.value("data", split, "dataset"),
            f"data.{split}: {exc}",
            hint="dataset paths are relative to the working directory; nothing is downloaded (`download: false`)",
        ) from None
    return SplitLoader(dataset, cfg, plan.fields[split], seed=seed, rank=rank, world=world, train=train)


class TensorLoader:
    """Batches of tensors held in memory (a later stage's cached inputs), with :class:`SplitLoader`'s interface:
    the same seeded permutation per epoch, so a resumed stage skips exactly the batches it already saw."""

    def __init__(self, tensors: dict[str, torch.Tensor], *, batch_size: int, shuffle: bool, seed: int) -> None:
        self.tensors, self.batch_size = tensors, batch_size
        size = len(next(iter(tensors.values())))
        self.sampler = EpochSampler(size, shuffle=shuffle, seed=seed)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(self.sampler.order(), dtype=torch.int64)
        for start in range(skip_batches * self.batch_size, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield {name: value[index] for name, value in self.tensors.items()}

    def __len__(self) -> int:
        return -(-len(self.sampler.order()) // self.batch_size)
