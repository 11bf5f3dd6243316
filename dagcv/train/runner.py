"""Starting, resuming and evaluating runs: the spec's ``train.loop`` picks the loop, the run context serves it.

A run lives in a run directory (``runs/<name>/<timestamp>/`` by default)::

    spec.resolved.yaml   the spec as trained (overrides applied, every default and inferred value spelled out)
    env.json             versions, seed, device, command line
    metrics.jsonl        one record per logged step ("kind": "step") and per epoch or rollout (the summaries)
    metrics.csv          the summary records as a table
    checkpoints/last.pt  the latest state (atomic); best.pt when early stopping tracks a metric
    plots/*.png          loss and metric curves, written at the end

``train_spec`` starts a run, ``resume_run`` continues one from its last checkpoint with the same trajectory
as if it had never stopped, and ``evaluate_checkpoint`` computes the metrics of a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagcv.compiler import check_spec, compile_checked
from dagcv.errors import SpecError
from dagcv.spec import Spec, load_spec
from dagcv.train.checkpoint import load_checkpoint, state_dict_mismatch
from dagcv.train.context import (
    NonFiniteLoss,
    Options,
    RunContext,
    RunResult,
    TrainingDiverged,
    shutdown_distributed,
)

__all__ = ["Options", "RunResult", "TrainingDiverged", "evaluate_checkpoint", "make_loop", "resume_run", "train_spec"]


def make_loop(spec: Spec, options: Options, *, run_dir: Path | None = None) -> Any:
    """The spec's loop, built over its compiled model in a fresh run context (nothing written yet)."""
    train = spec.train
    if train is None:
        raise SpecError.at(spec.source.key(), "the spec has no `train:` section", hint="see README, Training")
    sg = check_spec(spec)
    cfg = sg.training.train  # type: ignore[attr-defined]
    ctx = RunContext(spec.name, options, seed=cfg.seed, threads=cfg.threads, device=cfg.device, run_dir=run_dir)
    compiled = compile_checked(sg)  # after seeding: parameter initialisation draws from the global RNG
    from dagcv.train.loops import loop_info

    return loop_info(cfg.loop).implementation()(ctx, compiled, cfg)


def _run(loop: Any) -> RunResult:
    try:
        return loop.run()
    except NonFiniteLoss as exc:
        loop.save()  # the parameters are still those of the last good step
        sg = loop.compiled.built.sg
        where = ", ".join(f"output '{o}' of node '{sg.outputs[o][0]}'" for o in exc.losses if o in sg.outputs)
        raise TrainingDiverged(
            f"non-finite {exc} ({where}); the last good state is in {loop.ctx.ckpt_dir / 'last.pt'}"
        ) from None
    finally:
        loop.ctx.finish()


def train_spec(spec: Spec, options: Options | None = None) -> RunResult:
    """Train a spec in a new run directory."""
    try:
        loop = make_loop(spec, options or Options())
        loop.ctx.write_header(loop.compiled.files()["spec.resolved.yaml"])
        return _run(loop)
    finally:
        shutdown_distributed()


def resume_run(run_dir: Path, options: Options | None = None) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint."""
    run_dir = Path(run_dir)
    spec = load_spec(run_dir / "spec.resolved.yaml")
    try:
        loop = make_loop(spec, options or Options(), run_dir=run_dir)
        loop.load_state_dict(loop.ctx.restore(loop.model))
        loop.ctx.truncate_logs(loop.step)
        return _run(loop)
    finally:
        shutdown_distributed()


def evaluate_checkpoint(spec: Spec, ckpt: Path, split: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights into the spec's model and compute the metrics of a split."""
    import os

    loop = make_loop(spec, Options(quiet=True), run_dir=Path(os.devnull))
    state = load_checkpoint(Path(ckpt))
    weights = state.get("model", state)
    mismatch = state_dict_mismatch(loop.model, weights)
    if mismatch:
        raise SpecError.at(
            None,
            f"{ckpt} does not fit the model of {spec.source.file}:\n  " + "\n  ".join(mismatch),
            hint="evaluate a checkpoint of a run of this spec (its run directory holds the spec it was trained with)",
        )
    loop.model.load_state_dict(weights, strict=True)
    if not hasattr(loop, "evaluate"):
        raise SpecError.at(spec.source.key("train"), f"the {loop.cfg.loop} loop has no evaluation split to score",
                           hint="`dagcv eval RUN` plays episodes for RL runs")  # fmt: skip
    if split is not None and split != loop.cfg.eval_split:
        loop.eval_loader = loop._loader(split, train=False)
        loop.cfg = loop.cfg.model_copy(update={"eval_split": split})
    if loop.eval_loader is None:
        raise SpecError.at(
            spec.source.key("train"), "no evaluation split to evaluate on", hint="set train.eval_split or pass --split"
        )
    return loop.evaluate()
