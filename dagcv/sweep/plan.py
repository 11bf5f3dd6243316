"""``dagcv sweep plan``: every point checked and compiled before anything trains.

Each point's spec is checked (torch-free, fast); each distinct model among them (the points' ``inputs``, ``sizes``,
``blocks`` and ``outputs``: seeds and training keys do not change it) is compiled once, in worker processes when
there are several, and measured: parameters (``numel`` of the lowered module's parameters) and FLOPs per sample of
the eval forward on the spec's example inputs (``torch.utils.flop_counter``). Measurements are cached in the
sweep directory by the model's content hash, so planning again only compiles what changed.
"""

from __future__ import annotations

import json
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dagcv.errors import SpecError
from dagcv.files import write_text_atomically
from dagcv.sweep.points import Point, Sweep, content_hash, load_sweep

MODEL_KEYS = ("inputs", "sizes", "blocks", "outputs")


@dataclass
class PlannedPoint:
    point: Point
    hash: str | None = None  # of the resolved spec: names the point's run directory
    params: int | None = None
    flops: int | None = None  # per sample, eval forward
    error: str | None = None  # the formatted error that makes the point invalid

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def run_name(self) -> str:
        """The point's run directory: its name and the first 12 hex digits of its hash."""
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "=,.-_") else "_" for c in self.point.name)
        return f"{safe[:150]}-{(self.hash or 'invalid')[:12]}"  # the hash keeps names unique, 150 keeps them legal


def plan(
    sweep: Sweep, *, workers: int = 1, cache: Path | None = None, pool: Executor | None = None
) -> list[PlannedPoint]:
    """Resolve, check and measure every point of ``sweep`` (see the module docstring); the models compile in
    ``pool`` when one is given (the workers that will train them), else in a pool of their own or in-process."""
    from dagcv.compiler import check_spec

    planned, models = [], {}
    for point in sweep.points():
        pp = PlannedPoint(point)
        try:
            spec, pp.hash = sweep.resolve(point)
            check_spec(spec)
        except SpecError as exc:
            pp.error = exc.format()
        else:
            models.setdefault(_model_key(spec), []).append(pp)
        planned.append(pp)
    cached = _read_cache(cache)
    todo = [(key, pps[0].point) for key, pps in models.items() if key not in cached]
    if todo:
        args = [(str(sweep.path), point.labels, point.seed) for _, point in todo]
        if pool is not None:
            results = list(pool.map(_measure_point, *zip(*args, strict=True)))
        elif workers > 1 and len(todo) > 1:
            from dagcv.sweep.run import local_pool  # the executor's workers, one thread each

            with local_pool(min(workers, len(todo)), threads=1) as own:
                results = list(own.map(_measure_point, *zip(*args, strict=True)))
        else:
            results = [_measure_point(*a) for a in args]
        cached.update({key: r for (key, _), r in zip(todo, results, strict=True)})
        if cache is not None:
            write_text_atomically(cache, json.dumps(cached, indent=1, sort_keys=True))
    for key, pps in models.items():
        for pp in pps:
            pp.params, pp.flops, pp.error = (
                cached[key].get("params"),
                cached[key].get("flops"),
                cached[key].get("error"),
            )
    return planned


def _model_key(spec: Any) -> str:
    dumped = spec.model_dump(mode="json", include=set(MODEL_KEYS))
    return content_hash(dumped)


def _read_cache(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a cache is only a cache: a broken one is rebuilt


def _measure_point(sweep_path: str, labels: tuple, seed: int) -> dict[str, Any]:
    """Compile one point and count its parameters and FLOPs per sample (run in a worker process)."""
    sweep = load_sweep(sweep_path)
    try:
        from dagcv.compiler import compile_spec

        compiled = compile_spec(sweep.spec(Point(tuple(map(tuple, labels)), seed)))
        return measure(compiled)
    except SpecError as exc:
        return {"error": exc.format()}
    except Exception as exc:  # a bug in dagcv or a block: this point's error, not the end of the plan
        return {"error": f"internal error while compiling: {type(exc).__name__}: {exc}"}


def measure(compiled: Any) -> dict[str, Any]:
    """Parameters and FLOPs per sample of a compiled spec's eval forward on its example inputs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dagcv.lower import export_example_inputs

    model = compiled.module.eval()
    params = sum(p.numel() for p in model.parameters())
    inputs = export_example_inputs(compiled.built, "eval")
    batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() else 1
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*inputs)
        flops = counter.get_total_flops() // max(batch, 1)
    except Exception:
        flops = None
    return {"params": params, "flops": flops}


def plan_table(planned: list[PlannedPoint]) -> list[dict[str, Any]]:
    """Rows for the plan's table and JSON: one per point."""
    return [
        {
            "point": pp.point.name,
            "hash": (pp.hash or "")[:12],
            "params": pp.params,
            "flops": pp.flops,
            "status": "ok" if pp.ok else "invalid",
            "error": pp.error,
        }
        for pp in planned
    ]


def write_plan(path: Path, planned: list[PlannedPoint]) -> None:
    rows = [
        {
            **asdict(pp),
            "point": pp.point.name,
            "labels": dict(pp.point.labels),
            "seed": pp.point.seed,
            "run": pp.run_name,
        }
        for pp in planned
    ]
    write_text_atomically(path, json.dumps(rows, indent=1))
