"""Static checks of the ``data:`` and ``train:`` sections against the graph (part of ``dagcv check``; no torch).

Names are checked where they point: dataset blocks exist and belong to the ``data`` family, their outputs
feed every run-time spec input with a compatible kind, optimizers name real blocks and real Loss outputs,
metrics name real outputs and inputs, splits exist. The validated sections land on the graph as
``sg.training`` (a :class:`TrainingPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from dagcv.errors import did_you_mean
from dagcv.graph import SpecGraph, validate_params
from dagcv.spec.parse import validation_diagnostics
from dagcv.train.config import DataConfig, RunConfig, SplitConfig, SupervisedConfig
from dagcv.train.transforms import TRANSFORMS, image_shape
from dagcv.types import KINDS, Dim, ShapeError, bind_shape, evaluate_dims, format_shape, is_subkind


@dataclass
class TrainingPlan:
    data: dict[str, SplitConfig]
    train: RunConfig | None  # the loop's own config (SupervisedConfig, PPOConfig, ...)
    fields: dict[str, dict[str, int]]  # split → spec input → index of the sample field feeding it
    loss_outputs: list[str]  # spec outputs of kind Loss


def _validate(sg: SpecGraph, model: type[BaseModel], value: Any, prefix: tuple) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        found = validation_diagnostics(exc, sg.spec.source, model, prefix, data=value)
        for d in found:
            d.message = f"{'.'.join(map(str, prefix))}: {d.message}"
            sg.diagnostics.append(d)
        if not found:  # never an invalid section that nobody reports: check would say ok and training fail
            sg.error(f"{'.'.join(map(str, prefix))}: {exc.errors()[0]['msg']}", sg.spec.source.key(*prefix))
        return None


def check_training(sg: SpecGraph) -> None:
    spec = sg.spec
    if spec.data is None and spec.train is None:
        return
    data_cfg = _validate(sg, DataConfig, spec.data or {}, ("data",))
    splits: dict[str, SplitConfig] = data_cfg.root if data_cfg else {}
    fields = {name: f for name, split in splits.items() if (f := _check_split(sg, name, split)) is not None}
    losses = [o for o, (n, p) in sg.outputs.items() if _kind(sg, n, p) == "Loss"]
    train_cfg = None
    if spec.train is not None:
        info = _loop(sg, spec.train)
        if info is not None:
            train_cfg = _validate(sg, info.config, spec.train, ("train",))
            _explain_foreign_keys(sg, info.name)
        if train_cfg is not None:
            info.static_check()(sg, train_cfg, splits if data_cfg is not None else None)
    sg.training = TrainingPlan(splits, train_cfg, fields, losses)  # type: ignore[attr-defined]


def _loop(sg: SpecGraph, train: Any) -> Any:
    """The loop a ``train:`` section names (``supervised`` when it names none), or None after an error."""
    from dagcv.train.loops import PLANNED, loop_info, loop_names

    name = train.get("loop", "supervised") if isinstance(train, dict) else "supervised"
    info = loop_info(name) if isinstance(name, str) else None
    if info is None:
        planned = name in PLANNED
        sg.error(
            f"train.loop: {name!r} is {'planned but not implemented yet' if planned else 'not a training loop'}",
            sg.spec.source.value("train", "loop"),
            hint=did_you_mean(str(name), loop_names()) or f"loops: {', '.join(loop_names())} (`dagcv loops`)",
        )
    return info


def _explain_foreign_keys(sg: SpecGraph, loop: str) -> None:
    """An unknown key that another loop takes says so ("'minibatches' is a key of the ppo loop")."""
    from dagcv.train.loops import LOOPS

    for d in sg.diagnostics:
        if not d.message.startswith("train: unknown key '") or (d.hint or "").startswith("did you mean"):
            continue
        key = d.message.split("'")[1]
        owners = [name for name, info in LOOPS.items() if name != loop and key in info.config.model_fields]
        if owners:
            names = owners[0] if len(owners) == 1 else ", ".join(owners[:-1]) + " and " + owners[-1]
            d.hint = f"'{key}' is a key of the {names} loop{'s' if len(owners) > 1 else ''}, not of {loop}"


def _kind(sg: SpecGraph, node: str, port: str) -> str | None:
    t = sg.out_type(node, port)
    return t.kind if t else None


def _check_split(sg: SpecGraph, name: str, split: SplitConfig) -> dict[str, int] | None:
    smap = sg.spec.source
    where = ("data", name, "dataset")
    block = split.dataset.get("type")
    contract = sg.registry.get(block) if isinstance(block, str) else None
    if contract is None or contract.family != "data":
        data_blocks = [n for n in sg.registry.names() if sg.registry.contracts[n].family == "data"]
        sg.error(
            f"data.{name}: unknown dataset block {block!r}",
            smap.value(*where, "type"),
            hint=did_you_mean(str(block), data_blocks) or f"dataset blocks: {', '.join(data_blocks)}",
        )
        return None
    params = {k: v for k, v in split.dataset.items() if k != "type"}
    sg.g.add_node(f"data.{name}", kind="dataset", span=smap.key(*where), mode="both")  # for validate_params' errors
    params = validate_params(sg, f"data.{name}", contract, params, path=where)
    valid_params = "poisoned" not in sg.node(f"data.{name}")
    sg.g.remove_node(f"data.{name}")
    transforms_ok = _check_transforms(sg, name, split)
    outputs = [p.name for p in contract.outputs]
    wanted = [n for n in sg.spec.inputs if not KINDS[sg.node(n)["type"].kind].static] if _inputs_ok(sg) else []
    mapping: dict[str, int] = {}
    for i, inp in enumerate(wanted):
        src = (split.fields or {}).get(inp) or (inp if inp in outputs else (outputs[i] if i < len(outputs) else None))
        if src not in outputs:
            span = (
                smap.value("data", name, "fields", inp)
                if split.fields and inp in split.fields
                else smap.key("data", name)
            )
            sg.error(
                f"data.{name}: no dataset field feeds spec input '{inp}'",
                span,
                hint=f"'{block}' yields {', '.join(outputs)}; map them with `fields: {{{inp}: <field>}}`",
            )
            continue
        have, need = contract.output(src).parsed.kind, sg.node(inp)["type"].kind
        if not is_subkind(have, need):
            sg.error(
                f"data.{name}: field '{src}' of '{block}' is {have} but spec input '{inp}' is {need}",
                smap.key("data", name),
                hint=f"map another field with `fields: {{{inp}: ...}}`",
            )
            continue
        if valid_params and transforms_ok:
            _check_field_shape(sg, name, split, contract, src, inp, params)
        mapping[inp] = outputs.index(src)
    return mapping


def _check_transforms(sg: SpecGraph, name: str, split: SplitConfig) -> bool:
    """Each transform is known and its arguments valid; True when all are."""
    ok = True
    for i, step in enumerate(split.transforms):
        kind = step.get("type")
        path = ("data", name, "transforms", i)
        if not isinstance(kind, str) or kind not in TRANSFORMS:
            sg.error(
                f"data.{name}: unknown transform {kind!r}",
                sg.spec.source.value(*path, "type"),
                hint=did_you_mean(str(kind), TRANSFORMS) or f"transforms: {', '.join(TRANSFORMS)}",
            )
            ok = False
        elif _validate(sg, TRANSFORMS[kind].args, {k: v for k, v in step.items() if k != "type"}, path) is None:
            ok = False
    return ok


def _check_field_shape(
    sg: SpecGraph, name: str, split: SplitConfig, contract: Any, field: str, inp: str, params: dict
) -> None:
    """The field's declared shape, through the split's image transforms, fits the spec input's pattern."""
    declared = contract.output(field).parsed
    wanted = sg.node(inp)["type"]
    if declared.dims is None or wanted.dims is None or any(not (d.symbol or d.expr.isdigit()) for d in wanted.dims):
        return  # a pattern with expressions is checked at the example sizes only
    env = {"B": Dim.symbol("B", split.batch_size), **{k: v for k, v in params.items() if type(v) is int}}
    try:
        dims = evaluate_dims(declared.dims, env)
        if is_subkind(declared.kind, "Image") and len(dims) == 4 and split.transforms:
            chw = image_shape(split.transforms, [d.value for d in dims[1:]])
            dims = [dims[0], *(Dim.const(v) for v in chw)]
    except (ShapeError, ValueError) as exc:
        sg.error(f"data.{name}: {exc}", sg.spec.source.key("data", name, "transforms"))
        return
    mismatch = bind_shape(wanted.dims, dims, {}, lambda _: False)
    if mismatch is None:
        return
    after = " after its transforms" if split.transforms else ""
    sg.error(
        f"data.{name}: '{contract.name}' yields {field} {declared.kind}[{format_shape(dims).replace('×', ', ')}]"
        f"{after}, but spec input '{inp}' is {wanted}: {mismatch.message}",
        sg.spec.source.key("data", name, "dataset"),
        hint=_adapt_hint(name, dims, wanted, mismatch.index),
    )


def _adapt_hint(split: str, dims: list, wanted: Any, index: int | None) -> str:
    """The transform that would make the data fit (a channel conversion or a resize)."""
    where = f"data.{split}.transforms"
    if index == 1 and len(dims) == 4:
        have, want = dims[1].value, wanted.dims[1].expr
        if have == 1 and want == "3":
            return f"add {{type: rgb}} to {where}: it repeats the grey channel three times"
        if have == 3 and want == "1":
            return f"add {{type: grayscale}} to {where}"
    if index in (2, 3) and len(wanted.dims) == 4 and all(d.expr.isdigit() for d in wanted.dims[2:]):
        return f"add {{type: resize, size: [{wanted.dims[2].expr}, {wanted.dims[3].expr}]}} to {where}"
    return "use a dataset that yields this shape, or change the spec input"


def _inputs_ok(sg: SpecGraph) -> bool:
    return all(sg.node(n).get("type") is not None for n in sg.spec.inputs)


def check_supervised(sg: SpecGraph, cfg: SupervisedConfig, splits: dict | None) -> None:
    """The supervised loop's static check: splits, Loss outputs, optimizer groups, metrics, early stopping.

    ``splits`` is None when ``data:`` itself was invalid (its errors are reported; no cascade here).
    """
    smap = sg.spec.source
    losses = [o for o, (n, p) in sg.outputs.items() if _kind(sg, n, p) == "Loss"]
    for key in ("train_split", "eval_split") if splits is not None else ():
        split = getattr(cfg, key)
        explicit = key in (sg.spec.train or {})
        if split is not None and split not in splits and (key == "train_split" or explicit or cfg.metrics):
            sg.error(
                f"train.{key}: no split '{split}' in data",
                smap.value("train", key),
                hint=did_you_mean(split, splits) or f"data splits: {', '.join(splits) or 'none'}",
            )
    if not losses:
        sg.error(
            "train: the spec has no output of kind Loss to minimise",
            smap.key("train"),
            hint="add the loss node to `outputs:`",
        )
    for name in cfg.losses or {}:
        if name not in losses:
            sg.error(
                f"train.losses: '{name}' is not a Loss output",
                smap.key("train", "losses", name),
                hint=did_you_mean(name, losses) or f"Loss outputs: {', '.join(losses)}",
            )
    blocks = set(sg.blocks())
    for i, opt in enumerate(cfg.optimizers):
        base = ("train", "optimizer", i) if isinstance(cfg.optimizer, list) else ("train", "optimizer")
        for j, b in enumerate(opt.blocks or []):
            if b not in blocks:
                sg.error(
                    f"train.optimizer: unknown block '{b}'",
                    smap.value(*base, "blocks", j),
                    hint=did_you_mean(b, blocks),
                )
        for j, loss in enumerate(opt.losses or []):
            if loss not in losses:
                sg.error(
                    f"train.optimizer: '{loss}' is not a Loss output",
                    smap.value(*base, "losses", j),
                    hint=did_you_mean(loss, losses),
                )
    for i, m in enumerate(cfg.metrics):
        if m.output not in sg.outputs:
            sg.error(
                f"train.metrics: unknown output '{m.output}'",
                smap.value("train", "metrics", i, "output"),
                hint=did_you_mean(m.output, sg.outputs),
            )
        if m.target is None:
            if m.output in sg.outputs and _kind(sg, *sg.outputs[m.output]) != "Metric":
                sg.error(f"train.metrics: mean averages a Metric output, but '{m.output}' is "
                         f"{_kind(sg, *sg.outputs[m.output])}", smap.value("train", "metrics", i, "output"),
                         hint="an evaluation block (importance_weighted_nll) outputs a Metric")  # fmt: skip
        elif m.target not in sg.spec.inputs:
            sg.error(
                f"train.metrics: unknown input '{m.target}'",
                smap.value("train", "metrics", i, "target"),
                hint=did_you_mean(m.target, sg.spec.inputs),
            )
        elif m.output in sg.outputs:
            _check_metric_kinds(sg, m, i)
    if cfg.early_stopping is not None:
        names = [f"{cfg.eval_split}/{name}" for m in cfg.metrics for name in m.logged]
        if cfg.early_stopping.metric not in names:
            sg.error(
                f"train.early_stopping: no metric '{cfg.early_stopping.metric}'",
                smap.value("train", "early_stopping", "metric"),
                hint=did_you_mean(cfg.early_stopping.metric, names) or f"metrics: {', '.join(names) or 'none'}",
            )


# What each structured metric reads: (kind of the output, kind of the target input).
METRIC_KINDS = {"map": ("Detections", "Targets"), "mean_iou": ("Logits", "Labels"), "dice": ("Logits", "Labels")}


def _check_metric_kinds(sg: SpecGraph, m: Any, i: int) -> None:
    if m.type not in METRIC_KINDS:
        return
    want_out, want_target = METRIC_KINDS[m.type]
    have_out = _kind(sg, *sg.outputs[m.output])
    target_type = sg.node(m.target).get("type")
    for what, have, want in (("output", have_out, want_out), ("target", target_type and target_type.kind, want_target)):
        if have is not None and not is_subkind(have, want):
            sg.error(
                f"train.metrics: {m.type} needs a {want} {what}, but '{getattr(m, what)}' is {have}",
                sg.spec.source.value("train", "metrics", i, what),
                hint=f"{m.type} compares a {want_out} output with a {want_target} input",
            )
