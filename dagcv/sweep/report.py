"""``dagcv sweep report``: the effect of each swap, over seeds, with its uncertainty.

For the sweep's metric (the final summary record's value of ``metric.name``, e.g. ``val/accuracy``), per
configuration (a point without its seed) and per axis value (pooled over the other axes):

- mean ± sample standard deviation over the points, and the 95% confidence interval of the mean (Student's t,
  ``scipy.stats.t``);
- the paired difference to the baseline: each point is paired with the point that differs only in the
  baseline's axes (same seed, same other axes), and the differences get their own mean and 95% interval;
- parameters, FLOPs per sample, wall time, samples/s and the status counts.

Failed, diverged and invalid points are listed with their errors, never dropped silently. Written as
``report.md`` and ``report.csv`` in the sweep directory, with ``plots/<axis>.png`` (metric per value with its
interval) and ``plots/curves.png`` (the metric per epoch or step, mean over seeds, per configuration).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagcv.files import read_jsonl, write_text_atomically
from dagcv.sweep.plan import PlannedPoint
from dagcv.sweep.points import Point, Sweep, _label
from dagcv.sweep.run import SweepDir


@dataclass
class Row:
    """One line of a table: a configuration, or one value of an axis."""

    name: str
    values: list[float] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    params: set[int] = field(default_factory=set)
    flops: set[int] = field(default_factory=set)
    wall: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    baseline: bool = False

    def cells(self) -> dict[str, str]:
        mean, std, half = mean_std_ci(self.values)
        dmean, _, dhalf = mean_std_ci(self.diffs)
        return {
            "variant": self.name,
            "n": str(len(self.values)),
            "mean ± std": "–" if mean is None else f"{mean:.4f} ± {std:.4f}",
            "95% CI": "–" if half is None else f"[{mean - half:.4f}, {mean + half:.4f}]",
            "Δ baseline (95% CI)": "baseline"
            if self.baseline
            else (
                "–"
                if dmean is None
                else f"{dmean:+.4f}" + ("" if dhalf is None else f" [{dmean - dhalf:+.4f}, {dmean + dhalf:+.4f}]")
            ),
            "params": _span_of(self.params, lambda n: f"{n:,}"),
            "FLOPs/sample": _span_of(self.flops, _si),
            "wall s": "–" if not self.wall else f"{statistics.fmean(self.wall):.1f}",
            "samples/s": "–" if not self.rates else f"{statistics.fmean(self.rates):,.0f}",
            "status": ", ".join(f"{n} {s}" for s, n in sorted(self.states.items())),
        }


def mean_std_ci(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean, sample standard deviation and the half-width of the mean's 95% t-interval (None where undefined).

    >>> [round(x, 4) for x in mean_std_ci([1.0, 2.0, 3.0])]
    [2.0, 1.0, 2.4841]
    """
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, None
    from scipy.stats import t

    std = statistics.stdev(values)
    return mean, std, float(t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))


def collect(sweep: Sweep, sdir: SweepDir, planned: list[PlannedPoint]) -> dict[str, Any]:
    """Per point: its state, metric value, result and plan figures (what every table is made from)."""
    metric = sweep.cfg.metric.name
    out = {}
    for pp in planned:
        result = sdir.result(pp) or {}
        final = result.get("final") or {}
        value = final.get(metric)
        out[pp.point.name] = {
            "pp": pp,
            "state": sdir.state(pp),
            "value": float(value) if isinstance(value, int | float) else None,
            "result": result,
        }
    return out


def _partner(sweep: Sweep, point: Point, axes: dict[str, str]) -> Point:
    labels = tuple((a, axes.get(a, v)) for a, v in point.labels)
    return Point(labels, point.seed)


def tables(sweep: Sweep, data: dict[str, Any]) -> dict[str, list[Row]]:
    """``{"study": rows per configuration, "<axis>": rows per value of that axis}``."""
    baseline = {a: _label(v) for a, v in (sweep.cfg.baseline or {}).items()}
    out: dict[str, list[Row]] = {}
    groupings = {"study": lambda p: p.config or "base"}
    for axis in sweep.cfg.axes:
        groupings[axis] = lambda p, axis=axis: p.label(axis)
    for table, key in groupings.items():
        rows: dict[str, Row] = {}
        for entry in data.values():
            pp: PlannedPoint = entry["pp"]
            row = rows.setdefault(key(pp.point), Row(key(pp.point)))
            row.states[entry["state"]] = row.states.get(entry["state"], 0) + 1
            row.params.update([pp.params] if pp.params is not None else [])
            row.flops.update([pp.flops] if pp.flops is not None else [])
            result = entry["result"]
            if entry["state"] != "done" or entry["value"] is None:
                continue
            row.values.append(entry["value"])
            if result.get("wall_s") is not None:
                row.wall.append(result["wall_s"])
            if result.get("samples_per_s") is not None:
                row.rates.append(result["samples_per_s"])
            ref_axes = baseline if table == "study" else ({table: baseline[table]} if table in baseline else None)
            if ref_axes is None:
                continue
            ref_axes = sweep.with_zipped(ref_axes)
            partner = _partner(sweep, pp.point, ref_axes)
            if partner == pp.point:
                row.baseline = True
                continue
            other = data.get(partner.name)
            if other and other["state"] == "done" and other["value"] is not None:
                row.diffs.append(entry["value"] - other["value"])
        out[table] = list(rows.values())
    return out


def failures(sweep: Sweep, data: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name, entry in data.items():
        if entry["state"] in ("failed", "diverged", "invalid"):
            error = entry["pp"].error or entry["result"].get("error") or ""
            rows.append((name, entry["state"], error))
        elif entry["state"] == "done" and entry["value"] is None:
            rows.append((name, "no metric", f"the final record has no '{sweep.cfg.metric.name}'"))
    return rows


def markdown(sweep: Sweep, data: dict[str, Any]) -> str:
    m = sweep.cfg.metric
    lines = [
        f"# Study `{sweep.name}`",
        "",
        f"Base spec `{sweep.base_path}`, {len(data)} points ({len(sweep.cfg.seeds)} seeds each). "
        f"Metric: `{m.name}` (final record; {'higher' if m.mode == 'max' else 'lower'} is better). "
        "Mean ± sample std over the points of a row, the 95% t-interval of the mean, and the mean paired "
        "difference to the baseline (same seed and other axes) with its 95% interval.",
        "",
    ]
    for table, rows in tables(sweep, data).items():
        if table != "study" and len(sweep.cfg.axes) == 1:
            continue  # one axis: its table is the whole study's
        lines += [f"## {'Whole study' if table == 'study' else f'Axis `{table}`'}", ""]
        cells = [r.cells() for r in rows]
        header = list(cells[0]) if cells else []
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c[h] for h in header) + " |" for c in cells]
        lines.append("")
    failed = failures(sweep, data)
    lines += ["## Failed, diverged and invalid points", ""]
    if not failed:
        lines += ["None.", ""]
    for name, state, error in failed:
        first = error.strip().splitlines()[0] if error.strip() else ""
        lines += [f"- `{name}`: **{state}**: {first}"]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(sweep: Sweep, data: dict[str, Any]) -> str:
    """One line per point: labels, seed, state, metric, params, FLOPs, wall time, samples/s, error."""
    buf = io.StringIO()
    axes = list(sweep.cfg.axes)
    writer = csv.writer(buf)
    writer.writerow(
        [
            *axes,
            "seed",
            "state",
            sweep.cfg.metric.name,
            "params",
            "flops_per_sample",
            "wall_s",
            "samples_per_s",
            "hash",
            "error",
        ]
    )
    for entry in data.values():
        pp, result = entry["pp"], entry["result"]
        writer.writerow(
            [
                *(pp.point.label(a) for a in axes),
                pp.point.seed,
                entry["state"],
                entry["value"],
                pp.params,
                pp.flops,
                result.get("wall_s"),
                result.get("samples_per_s"),
                pp.hash,
                (pp.error or result.get("error") or "").strip().splitlines()[0:1],
            ]
        )
    return buf.getvalue()


def write_report(sweep: Sweep, sdir: SweepDir, planned: list[PlannedPoint], plots: bool = True) -> list[Path]:
    """``report.md``, ``report.csv`` and the plots, from the points' results read once."""
    data = collect(sweep, sdir, planned)
    written = [sdir.root / "report.md", sdir.root / "report.csv"]
    write_text_atomically(written[0], markdown(sweep, data))
    write_text_atomically(written[1], csv_text(sweep, data))
    if plots:
        written += draw_plots(sweep, sdir, data)
    return written


def draw_plots(sweep: Sweep, sdir: SweepDir, data: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = sdir.root / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    metric, out = sweep.cfg.metric.name, []
    for table, rows in tables(sweep, data).items():
        if table == "study" and len(sweep.cfg.axes) == 1:
            continue  # the one axis's plot says it all
        stats = [(r.name, *mean_std_ci(r.values)) for r in rows if r.values]
        if not stats:
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(stats)), 3.2))
        names = [s[0] for s in stats]
        ax.errorbar(range(len(stats)), [s[1] for s in stats], yerr=[s[3] or 0.0 for s in stats], fmt="o", capsize=4)
        ax.set_xticks(range(len(stats)), names, rotation=20 if table == "study" else 0, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(f"{sweep.name}: {metric} by {table} (mean, 95% CI)")
        fig.tight_layout()
        out.append(folder / f"{table}.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    curves = defaultdict(lambda: defaultdict(list))
    for pp in (entry["pp"] for entry in data.values()):
        for record in read_jsonl(sdir.run_dir(pp) / "metrics.jsonl"):
            if record.get("kind") != "step" and isinstance(record.get(metric), int | float):
                x = record.get("epoch", record.get("step"))
                curves[pp.point.config or "base"][x].append(record[metric])
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for config, points in curves.items():
            xs = sorted(points)
            ax.plot(xs, [statistics.fmean(points[x]) for x in xs], marker=".", label=config)
        ax.set_xlabel("epoch or step")
        ax.set_ylabel(metric)
        ax.set_title(f"{sweep.name}: learning curves (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append(folder / "curves.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out


def _span_of(values: set[int], fmt: Any) -> str:
    """One value, or the range of a row that pools several models."""
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
