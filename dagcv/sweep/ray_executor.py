"""The Ray executor: Ray Tune schedules a study's points, dagcv still expands, checks and trains them.

Each valid, unfinished point is one Tune trial of a grid over the points' names, asking for ``threads`` CPUs;
``max_concurrent_trials`` is the executor's ``workers``. A trial calls the same :func:`~dagcv.sweep.run.train_point`
as the local executor, so a point trains (or resumes) into the same hash-keyed run directory, writes the same
``result.json``, and a study can be started with one executor and finished with the other. Tune's own files go
to ``<sweep dir>/ray/``. Trials run in the driver's working directory (dataset roots in specs are relative to
it), not in Tune's trial folders.

Install with ``pip install 'dagcv[ray]'``. With ``executor.address`` the points go to an existing Ray cluster
(``ray start --head`` on one machine, ``ray start --address ...`` on the others; every machine needs the same
files at the same paths); without it, a local Ray instance is started for the sweep and stopped after it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagcv.errors import SpecError
from dagcv.sweep.plan import PlannedPoint
from dagcv.sweep.points import Sweep
from dagcv.sweep.run import SweepDir, train_point


def run_with_ray(
    sweep: Sweep, sdir: SweepDir, todo: list[PlannedPoint], *, workers: int, threads: int, address: str | None
) -> None:
    """Train ``todo`` as Ray Tune trials (see the module docstring); returns when every trial has ended."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SpecError.at(
            sweep.smap.value("executor", "type"),
            "the ray executor needs Ray Tune, which is not installed",
            hint="pip install 'dagcv[ray]' (or run with --executor local)",
        ).with_sources(sweep.sources) from None
    if not todo:
        return
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
    cwd = os.getcwd()
    points = {
        pp.run_name: (str(sweep.path.resolve()), pp.point.labels, pp.point.seed, str(sdir.run_dir(pp).resolve()),
                      pp.hash)
        for pp in todo
    }  # fmt: skip

    def trainable(config: dict[str, Any]) -> None:
        os.chdir(cwd)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
        result = train_point(*points[config["point"]])
        final = result.get("final") or {}
        tune.report({"status": result.get("status"), **{k: v for k, v in final.items() if _number(v)}})

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": threads}),
            param_space={"point": tune.grid_search(list(points))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=workers,
                reuse_actors=True,  # one process per worker slot, importing torch once
                trial_dirname_creator=lambda trial: _short(trial.config["point"]),
            ),
            run_config=tune.RunConfig(name=sweep.name, storage_path=str((sdir.root / "ray").resolve()), verbose=0),
        )
        tuner.fit()
    finally:
        if started:
            ray.shutdown()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(name: str) -> str:
    return Path(name).name[:120]
