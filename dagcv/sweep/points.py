"""Reading a sweep file and expanding it into points: each a label per axis, a seed, and the edits they imply.

Axes joined by ``zip_with`` step together (their values pair up in order); the groups that result are crossed;
``exclude`` drops the combinations it matches; every combination runs once per seed. A point's spec is the base
spec with the sweep's ``set:`` edits, the point's axis edits and ``train.seed`` applied, each value keeping the
position where the sweep file wrote it, so a spec error in a point names the sweep file's line. A point is keyed
by the hash of its resolved spec (the merged plain data, canonical JSON), stable across runs and machines.

>>> sweep = load_sweep("studies/backbone_ablation.yaml")  # from the repository's root
>>> [p.name for p in sweep.points()][:2]
['backbone=lenet,seed=0', 'backbone=lenet,seed=1']
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dagcv.errors import Diagnostic, Span, SpecError, did_you_mean
from dagcv.spec.ir import Spec
from dagcv.spec.overrides import Edit, apply_edit
from dagcv.spec.parse import plain_spec, read_spec_file, spec_from_data, validation_diagnostics
from dagcv.spec.sanitize import sanitize
from dagcv.spec.source import SourceMap
from dagcv.spec.yaml_loader import load_yaml
from dagcv.sweep.config import Axis, SweepConfig

SEED_PATH = "train.seed"
MAX_POINTS = 10_000  # a study that big is a mistake (crossed where zipped was meant), not a plan


@dataclass(frozen=True)
class Point:
    """One run of the study: the label of each axis (in the file's order) and the seed."""

    labels: tuple[tuple[str, str], ...]
    seed: int

    @property
    def config(self) -> str:
        """The point without its seed: what is averaged over seeds."""
        return ",".join(f"{a}={v}" for a, v in self.labels)

    @property
    def name(self) -> str:
        return f"{self.config},seed={self.seed}" if self.labels else f"seed={self.seed}"

    def label(self, axis: str) -> str:
        return dict(self.labels)[axis]


@dataclass
class Sweep:
    """A validated sweep file and its base spec's plain data."""

    path: Path
    text: str
    cfg: SweepConfig
    smap: SourceMap
    base_path: Path
    base_text: str
    base_data: dict
    base_smap: SourceMap
    extended: dict[str, str] = field(default_factory=dict)  # the texts of the specs the base extends
    _labels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cfg.name or self.path.stem

    @property
    def sources(self) -> dict[str, str]:
        return {str(self.path): self.text, str(self.base_path): self.base_text, **self.extended}

    def labels(self, axis: str) -> list[str]:
        return self._labels[axis]

    def with_zipped(self, labels: dict[str, str]) -> dict[str, str]:
        """``labels`` plus the labels of the axes zipped with them (``lr: 0.01`` brings its ``warmup``)."""
        out = dict(labels)
        for group in _zip_groups(self.cfg.axes):
            given = [a for a in group if a in labels]
            if given:
                i = self._labels[given[0]].index(labels[given[0]])
                out.update({a: self._labels[a][i] for a in group})
        return out

    # ---------------------------------------------------------------------------------------------------------
    # Expansion

    def points(self) -> list[Point]:
        """Every point, in a stable order: the axis groups crossed in file order, then the seeds."""
        groups = _zip_groups(self.cfg.axes)
        per_group = [
            [tuple((a, self._labels[a][i]) for a in group) for i in range(len(self._labels[group[0]]))]
            for group in groups
        ]
        order = list(self.cfg.axes)
        out = []
        for combo in itertools.product(*per_group):
            labels = dict(item for part in combo for item in part)
            ordered = tuple((a, labels[a]) for a in order)
            if any(all(labels[a] == _label(v) for a, v in ex.items()) for ex in self.cfg.exclude):
                continue
            out += [Point(ordered, seed) for seed in self.cfg.seeds]
        return out

    def edits(self, point: Point) -> list[Edit]:
        """The edits that make ``point``'s spec from the base: the sweep's ``set:``, each axis's, the seed."""
        out = [self._edit(("set", path), path, value) for path, value in self.cfg.set.items()]
        for axis_name, label in point.labels:
            axis = self.cfg.axes[axis_name]
            if axis.values is not None:
                i = self._labels[axis_name].index(label)
                out.append(self._edit(("axes", axis_name, "values", i), axis.at, axis.values[i], axis_name))
            elif axis.at is not None:
                out.append(self._edit(("axes", axis_name, "variants", label), axis.at, axis.variants[label], axis_name))
            else:
                for path, value in axis.variants[label].items():
                    out.append(self._edit(("axes", axis_name, "variants", label, path), path, value, None))
        if "train" in self.base_data:
            out.append(self._edit(("seeds", self.cfg.seeds.index(point.seed)), SEED_PATH, point.seed))
        return out

    def _edit(self, where: tuple, path: str, value: Any, axis: str | None = None) -> Edit:
        """An edit located in the sweep file: its path at ``at:`` (or at the key), its value where it is."""
        path_span = self.smap.values.get(("axes", axis, "at")) if axis else self.smap.keys.get(where)
        path_span = path_span or self.smap.value(*where) or Span(str(self.path), 1, 1)
        if where[0] == "seeds":  # train.seed is written by the `seeds:` key
            path_span = self.smap.key("seeds") or path_span
        n = len(where)
        positions = {p[n:]: s for p, s in self.smap.values.items() if p[:n] == where}
        keys = {p[n:]: s for p, s in self.smap.keys.items() if p[:n] == where and len(p) > n}
        path_span = _unquoted(path_span, path)
        return Edit(path, copy.deepcopy(value), path_span, positions or {(): path_span}, keys)

    def spec(self, point: Point) -> Spec:
        """The point's spec; raises :class:`SpecError` (positions in the base spec or the sweep file)."""
        return self.resolve(point)[0]

    def resolve(self, point: Point) -> tuple[Spec, str]:
        """The point's spec and its content hash (see :func:`content_hash`)."""
        data, smap = copy.deepcopy(self.base_data), copy.deepcopy(self.base_smap)
        try:
            for edit in self.edits(point):
                apply_edit(data, smap, edit)
            data, smap = sanitize(data, smap)
            spec = spec_from_data(data, smap)
        except SpecError as exc:
            raise exc.with_sources(self.sources) from None
        spec._overrides = {str(self.path): self.text, **self.extended}
        return spec, content_hash(data)


def content_hash(data: Any) -> str:
    """The content hash of a resolved spec: SHA-256 of its plain data as canonical JSON.

    >>> content_hash({"b": 1, "a": [1.5]})[:12]
    'be0f99d229ad'
    """
    text = json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


# -------------------------------------------------------------------------------------------------------------
# Loading and validation


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file and its base spec; every problem is a positioned :class:`SpecError`."""
    path = Path(path)
    if not path.is_file():
        raise SpecError.at(None, f"no such sweep file: {path}")
    text = read_spec_file(path)  # the same size limit as a spec's
    data, smap = load_yaml(text, str(path))
    try:
        data, smap = sanitize(data, smap)
        if not isinstance(data, dict):
            raise SpecError.at(smap.value(), "a sweep file must be a mapping", hint="start with 'sweep: 1'")
        try:
            cfg = SweepConfig.model_validate(data)
        except ValidationError as exc:
            raise SpecError(validation_diagnostics(exc, smap, SweepConfig, data=data)) from None
        try:
            base_path = (path.parent / cfg.base).resolve()
            is_file = base_path.is_file()
        except (OSError, ValueError) as exc:  # a NUL byte, a name longer than the file system allows
            raise SpecError.at(smap.value("base"), f"`base` names no usable path: {exc}") from None
        with contextlib.suppress(ValueError):  # shown relative to where dagcv runs, when it is below it
            base_path = base_path.relative_to(Path.cwd())
        if not is_file:
            raise SpecError.at(
                smap.value("base"), f"no such base spec: {base_path}", hint="`base:` is relative to the sweep file"
            )
        base_text = read_spec_file(base_path)
        try:  # the base itself must be a valid spec before anything is swept over it
            base_data, base_smap, bases = plain_spec(base_text, str(base_path))
            spec_from_data(*sanitize(copy.deepcopy(base_data), copy.deepcopy(base_smap)))
        except SpecError as exc:
            exc.sources.setdefault(str(base_path), base_text)
            raise
        sweep = Sweep(path, text, cfg, smap, base_path, base_text, base_data, base_smap, bases)
        _check_axes(sweep)
        return sweep
    except SpecError as exc:
        exc.sources.setdefault(str(path), text)
        raise


def _label(value: Any) -> str:
    """How a value names its point: ``0.01``, ``true``, ``[64, 64]`` (YAML-like, so exclude can be written alike)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": ")) if isinstance(value, list | dict) else repr(value)


def _check_axes(sweep: Sweep) -> None:
    cfg, smap, errors = sweep.cfg, sweep.smap, []
    for name, axis in cfg.axes.items():
        where = ("axes", name)
        if (axis.values is None) == (axis.variants is None):
            errors.append(
                Diagnostic(
                    f"axis '{name}' needs exactly one of `values:` and `variants:`",
                    smap.key(*where),
                    hint="values: [0.1, 0.01] at a path, or variants: {name: value}",
                )
            )
            continue
        if axis.at is None and axis.values is not None:
            errors.append(
                Diagnostic(
                    f"axis '{name}' has values but no `at:` path",
                    smap.key(*where),
                    hint="at: train.optimizer.lr (a dotted path, as in --set)",
                )
            )
            continue
        if axis.at is None:
            for label, edits in axis.variants.items():
                if not isinstance(edits, dict):  # {} is the base spec as it is
                    errors.append(
                        Diagnostic(
                            f"variant '{label}' of axis '{name}' (no `at:`) must map dotted paths to values",
                            smap.value(*where, "variants", label),
                            hint="{blocks.features: {type: resnet18}, blocks.classifier.in: features.c5}",
                        )
                    )
        labels = list(axis.variants) if axis.variants is not None else [_label(v) for v in axis.values]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            errors.append(Diagnostic(f"axis '{name}' lists {dupes[0]} twice", smap.value(*where)))
        sweep._labels[name] = labels
    for name, axis in cfg.axes.items():
        if axis.zip_with is None or name not in sweep._labels:
            continue
        span = smap.value("axes", name, "zip_with")
        other = axis.zip_with
        if other not in cfg.axes or other == name:
            errors.append(
                Diagnostic(
                    f"axis '{name}' zips with unknown axis '{other}'",
                    span,
                    hint=did_you_mean(other, [a for a in cfg.axes if a != name]),
                )
            )
        elif other in sweep._labels and len(sweep._labels[other]) != len(sweep._labels[name]):
            errors.append(
                Diagnostic(
                    f"zipped axes must be as long: '{name}' has {len(sweep._labels[name])} values, "
                    f"'{other}' has {len(sweep._labels[other])}",
                    span,
                    hint="zip pairs the i-th values of both",
                )
            )
    for i, partial in enumerate(cfg.exclude):
        errors += _check_partial(sweep, partial, ("exclude", i))
    if cfg.baseline is not None:
        errors += _check_partial(sweep, cfg.baseline, ("baseline",))
    if errors:
        raise SpecError(errors)
    groups = [len(sweep._labels[g[0]]) for g in _zip_groups(cfg.axes)]
    count = math.prod(groups) * len(cfg.seeds)
    if count > MAX_POINTS:
        raise SpecError.at(
            smap.key("axes"),
            f"the study has {count:,} points (before exclusions); at most {MAX_POINTS:,} are allowed",
            hint="split it into several studies, or zip axes",
        )
    if not sweep.points():
        raise SpecError.at(smap.key("exclude"), "`exclude` leaves no point to run")


def _check_partial(sweep: Sweep, partial: dict, where: tuple) -> list[Diagnostic]:
    out = []
    for axis, value in partial.items():
        if axis not in sweep._labels:
            out.append(
                Diagnostic(
                    f"unknown axis '{axis}'",
                    sweep.smap.key(*where, axis),
                    hint=did_you_mean(axis, sweep._labels) or f"axes: {', '.join(sweep._labels)}",
                )
            )
        elif _label(value) not in sweep._labels[axis]:
            out.append(
                Diagnostic(
                    f"axis '{axis}' has no value {_label(value)}",
                    sweep.smap.value(*where, axis),
                    hint=did_you_mean(_label(value), sweep._labels[axis])
                    or f"{axis}: {', '.join(sweep._labels[axis])}",
                )
            )
    return out


def _zip_groups(axes: dict[str, Axis]) -> list[list[str]]:
    """Axes joined by ``zip_with`` (transitively), each group in file order, groups in order of first axis."""
    parent = {a: a for a in axes}

    def root(a: str) -> str:
        while parent[a] != a:
            a = parent[a]
        return a

    for name, axis in axes.items():
        if axis.zip_with in parent:
            parent[root(name)] = root(axis.zip_with)
    groups: dict[str, list[str]] = {}
    for a in axes:
        groups.setdefault(root(a), []).append(a)
    return list(groups.values())


def _unquoted(span: Span, path: str) -> Span:
    """The span of ``path``'s own characters when the file wrote it in quotes."""
    if span.end_col is not None and span.end_line in (None, span.line) and span.end_col - span.col == len(path) + 2:
        return span.shifted(1, len(path))
    return span
