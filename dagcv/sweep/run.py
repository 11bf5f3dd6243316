"""``dagcv sweep run / resume / status``: training a study's points, and what survives a killed driver.

A sweep lives in its directory (``sweeps/<name>/`` by default)::

    sweep.json            where the sweep file and its base spec are (status, resume and report read it)
    plan.json             every point: labels, seed, hash, parameters, FLOPs, run directory, or its error
    plan_cache.json       parameters and FLOPs by model hash (planning again compiles only what changed)
    runs/<point>-<hash>/  each point's run directory: the usual run files, plus result.json once it ends

The state of a point is read from its run directory alone, never from a driver's memory: ``result.json`` says
done, failed or diverged; a checkpoint without it means interrupted (a resume continues from the checkpoint);
a lock held on ``.lock`` means a worker is training it now. Because the directory is named by the hash of the
point's resolved spec, a re-run never writes two runs into one folder, and an unchanged point that is done is
never trained again. Workers die with the driver (``PR_SET_PDEATHSIG``), and their lock dies with them.

The local executor is a pool of worker processes (``spawn``), each importing torch once and training one point
after another with ``threads`` torch threads, so ``workers × threads`` never oversubscribes the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from dagcv.errors import SpecError
from dagcv.files import read_jsonl, write_text_atomically
from dagcv.sweep.plan import PlannedPoint, plan, write_plan
from dagcv.sweep.points import Point, Sweep, load_sweep

RESULT = "result.json"
FINISHED = ("done", "failed", "diverged")


@dataclass
class SweepDir:
    """A sweep's directory and the state of its points, read from disk."""

    root: Path

    @classmethod
    def for_sweep(cls, sweep: Sweep, out: Path | None = None) -> SweepDir:
        return cls(Path(out) if out is not None else Path("sweeps") / sweep.name)

    def run_dir(self, pp: PlannedPoint) -> Path:
        return self.root / "runs" / pp.run_name

    def result(self, pp: PlannedPoint) -> dict[str, Any] | None:
        path = self.run_dir(pp) / RESULT
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def state(self, pp: PlannedPoint) -> str:
        """invalid, pending, running, interrupted, done, failed or diverged."""
        if not pp.ok:
            return "invalid"
        result = self.result(pp)
        if result is not None:
            return result["status"]
        run = self.run_dir(pp)
        if _locked(run / ".lock"):
            return "running"
        return "interrupted" if (run / "checkpoints" / "last.pt").exists() else "pending"

    def progress(self, pp: PlannedPoint) -> str:
        """Where a point's training stands: the last summary record's epoch or step."""
        last = _last_record(self.run_dir(pp) / "metrics.jsonl")
        if not last:
            return ""
        if last.get("kind") == "epoch":
            return f"epoch {last['epoch']} done, step {last.get('step', '?')}"
        return f"step {last.get('step', '?')}"

    def write_header(self, sweep: Sweep, planned: list[PlannedPoint]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        info = {"sweep": str(sweep.path.resolve()), "base": str(sweep.base_path.resolve()), "name": sweep.name}
        write_text_atomically(self.root / "sweep.json", json.dumps(info, indent=1))
        write_plan(self.root / "plan.json", planned)


def open_sweep(target: Path, out: Path | None = None) -> tuple[Sweep, SweepDir]:
    """A sweep from its file, or from its directory (which names the file it was run from)."""
    target = Path(target)
    if target.is_dir():
        info_path = target / "sweep.json"
        if not info_path.is_file():
            raise SpecError.at(None, f"{target} is no sweep directory (no sweep.json)")
        info = json.loads(info_path.read_text())
        return load_sweep(info["sweep"]), SweepDir(target)
    sweep = load_sweep(target)
    return sweep, SweepDir.for_sweep(sweep, out)


def plan_sweep(sweep: Sweep, sdir: SweepDir, workers: int = 1, pool: Executor | None = None) -> list[PlannedPoint]:
    sdir.root.mkdir(parents=True, exist_ok=True)
    planned = plan(sweep, workers=workers, cache=sdir.root / "plan_cache.json", pool=pool)
    sdir.write_header(sweep, planned)
    return planned


# -------------------------------------------------------------------------------------------------------------
# The driver


def run_sweep(
    sweep: Sweep,
    sdir: SweepDir,
    planned: list[PlannedPoint],
    *,
    workers: int | None = None,
    threads: int | None = None,
    retry_failed: bool = False,
    executor: str | None = None,
    on_update: Any = None,
    pool: Executor | None = None,
) -> dict[str, str]:
    """Train every valid point that is not finished; returns point name → final state.

    ``on_update()`` is called whenever something may have changed (for a live table of the local executor).
    ``pool`` is a :func:`local_pool` already started (by the plan, say); without one, one is started here.
    """
    workers = workers or sweep.cfg.executor.workers
    threads = threads or sweep.cfg.executor.threads
    todo = []
    for pp in planned:
        state = sdir.state(pp)
        if state in ("failed", "diverged") and retry_failed:
            shutil.rmtree(sdir.run_dir(pp), ignore_errors=True)
            state = "pending"
        if state in ("pending", "interrupted", "running"):
            todo.append(pp)
    if (executor or sweep.cfg.executor.type) == "ray":
        from dagcv.sweep.ray_executor import run_with_ray

        run_with_ray(sweep, sdir, todo, workers=workers, threads=threads, address=sweep.cfg.executor.address)
        return {pp.point.name: sdir.state(pp) for pp in planned}
    report = on_update or (lambda: None)
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(local_pool(min(workers, max(len(todo), 1)), threads))
        running: dict[Future, PlannedPoint] = {}
        queue = list(todo)
        try:
            while queue or running:
                while queue and len(running) < workers:
                    pp = queue.pop(0)
                    args = (str(sweep.path), pp.point.labels, pp.point.seed, str(sdir.run_dir(pp)), pp.hash)
                    running[pool.submit(train_point, *args)] = pp
                report()
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    pp = running.pop(future)
                    if future.result().get("status") == "busy":  # another process trains it: look again later
                        queue.append(pp)
                        time.sleep(0.5)
            report()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return {pp.point.name: sdir.state(pp) for pp in planned}


def local_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """The local executor's workers: ``spawn`` processes that import torch once, use ``threads`` torch threads,
    and die with the driver. The plan's compiles run in them too, so the driver never imports torch."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,))


def _worker_init(threads: int) -> None:
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the driver dies, so a killed sweep leaves no orphan training."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() == 1:  # the driver died before the call
        os._exit(1)


# -------------------------------------------------------------------------------------------------------------
# One point, in a worker


def train_point(sweep_path: str, labels: tuple, seed: int, run_dir: str, expected_hash: str) -> dict[str, Any]:
    """Train (or resume) one point into ``run_dir`` and write its ``result.json``; returns the result."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    with _lock(run / ".lock") as held:
        if not held:
            return {"status": "busy"}
        existing = run / RESULT
        if existing.exists():
            return json.loads(existing.read_text())
        start = time.perf_counter()
        result = _train(Path(sweep_path), Point(tuple(map(tuple, labels)), seed), run, expected_hash)
        result["wall_s"] = round(time.perf_counter() - start, 3)  # of the session that finished it
        write_text_atomically(existing, json.dumps(result, indent=1))
        return result


def _train(sweep_path: Path, point: Point, run: Path, expected_hash: str) -> dict[str, Any]:
    from dagcv.train.runner import Options, TrainingDiverged, resume_run, train_spec

    options = Options(quiet=True, run_dir=run, argv=["dagcv", "sweep", "run", str(sweep_path), point.name])
    try:
        spec, digest = load_sweep(sweep_path).resolve(point)
        if digest != expected_hash:
            return {
                "status": "failed",
                "error": f"the point's spec changed since it was planned "
                f"({expected_hash[:12]} → {digest[:12]}): plan the sweep again",
            }
        if (run / "checkpoints" / "last.pt").exists():
            outcome = resume_run(run, options)
        else:
            for child in run.iterdir():  # a start that died before its first checkpoint: start afresh
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            outcome = train_spec(spec, options)
    except TrainingDiverged as exc:
        return {"status": "diverged", "error": str(exc), **_summary(run)}
    except SpecError as exc:
        return {"status": "failed", "error": exc.format()}
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:])
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{tail}"}
    return {"status": "done", "final": outcome.final, **_summary(run)}


def _summary(run: Path) -> dict[str, Any]:
    """Throughput over the run's logged steps (samples/s, or env steps/s for RL) and the records' count."""
    rates = [
        r.get("samples_per_s", r.get("sps"))
        for r in read_jsonl(run / "metrics.jsonl")
        if r.get("kind") in ("step", "rollout")
    ]
    rates = [r for r in rates if isinstance(r, int | float)]
    return {"samples_per_s": sum(rates) / len(rates) if rates else None}


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of a metrics file, read from its tail (the live table polls it)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking ``flock`` on ``path``: yields whether it was taken. The OS drops it when the
    holder dies, so a killed worker never leaves a stale lock."""
    import fcntl

    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _locked(path: Path) -> bool:
    if not path.exists():
        return False
    with _lock(path) as held:
        return not held
