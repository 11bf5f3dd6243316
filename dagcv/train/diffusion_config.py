"""The ``train:`` section of the ``diffusion`` loop, the sampler settings, and the static check of a diffusion graph
(part of ``dagcv check``; no torch).

A diffusion spec is a graph ``x_0 -> schedule -> denoiser -> diffusion_loss``: one noise-schedule block (the
forward process) noises the data it reads, a denoiser reads the schedule's ``x_t`` and ``t`` (and, for a
class-conditional model, labels through ``condition_dropout``), the loss compares the denoiser's output with the
schedule's target. :func:`diffusion_parts` finds those pieces from the graph alone, so neither the loop nor
``dagcv sample`` needs them named twice. A ``samples`` output computed from the schedule's input in ``mode:
sample`` (``unit_range`` of the data, or a frozen decoder of latents) turns a sampler's x_0 into images::

    train:
      loop: diffusion
      epochs: 20
      optimizer: {type: adam, lr: 2.0e-4}
      ema: {decay: 0.999}                       # averaged denoiser weights, used for sampling
      sampler: {type: ddim, steps: 50}          # the per-epoch grids and `dagcv sample`'s default

>>> DiffusionConfig.model_validate({"loop": "diffusion", "steps": 10, "optimizer": {"type": "adam", "lr": 1e-3},
...     "sampler": {"type": "ddim", "steps": 20, "eta": 1.0}}).sampler.steps
20
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from dagcv.train.config import _STRICT, SAMPLES, SupervisedConfig


class EmaConfig(BaseModel):
    """An exponential moving average of the trained weights (Polyak averaging), used for sampling."""

    model_config = _STRICT
    decay: float = Field(default=0.999, gt=0, lt=1, description="the average's decay per step")
    warmup: bool = Field(
        default=True, description="decay min(decay, (1 + n) / (10 + n)) after n updates, so early steps count"
    )


class SamplerConfig(BaseModel):
    """How samples are drawn: the per-epoch grids, and `dagcv sample`'s defaults (its flags override them)."""

    model_config = _STRICT
    type: Literal["ddpm", "ddim"] = "ddim"
    steps: int | None = Field(
        default=None, gt=0, description="denoising steps (default: ddpm every training timestep, ddim 50)"
    )
    eta: float = Field(default=0.0, ge=0, le=1, description="ddim: 0 deterministic, 1 as noisy as DDPM")
    guidance: float = Field(default=0.0, ge=0, description="classifier-free guidance scale w (0: conditional)")
    clip: float | None = Field(default=1.0, gt=0, description="clamp the predicted x_0 to [-clip, clip]; none")

    def steps_for(self, training_steps: int) -> int:
        """The number of denoising steps this sampler takes on a schedule of ``training_steps``."""
        if self.steps is not None:
            return self.steps
        return training_steps if self.type == "ddpm" else min(50, training_steps)


class DiffusionConfig(SupervisedConfig):
    """Minimise a diffusion loss over batches of data (the supervised loop's clock, optimizers and evaluation),
    keep an average of the weights, and draw samples with a sampler."""

    loop: Literal["diffusion"] = "diffusion"  # type: ignore[assignment]
    ema: EmaConfig | None = Field(default=None, description="average the weights for sampling")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    samples: int = Field(default=64, ge=0, description="samples in the grid drawn after every epoch (0: none)")


@dataclass(frozen=True)
class DiffusionParts:
    """The pieces of a diffusion graph, found from its structure (see the module docstring)."""

    schedule: str  # the noise-schedule node
    denoiser: str  # the block reading the schedule's x_t
    data: tuple[str, str]  # (node, port) the schedule noises: the x_0 space samplers draw in
    labels: str | None  # the spec input the denoiser's condition comes from
    timesteps: int  # T, the schedule's training timesteps


def schedules(sg: Any) -> list[str]:
    """Noise-schedule nodes of a graph (their owners; a sharer is another call of the same one)."""
    return [
        n
        for n in sg.blocks()
        if "contract" in sg.node(n) and sg.node(n)["contract"].family == "schedule" and not sg.node(n).get("shares")
    ]


def diffusion_parts(sg: Any) -> DiffusionParts | None:
    """The diffusion pieces of a graph, or None when it has no single schedule feeding a denoiser."""
    found = schedules(sg)
    if len(found) != 1:
        return None
    schedule = found[0]
    readers = [(v, d) for _, v, d in sg.g.out_edges(schedule, data=True) if d["src_port"] == "x_t"]
    data = [(u, d["src_port"]) for u, d in sg.in_edges(schedule) if d["dst_port"] == "x0"]
    if len(readers) != 1 or not data:
        return None
    denoiser = readers[0][0]
    inputs = [n for n in sg.upstream([denoiser], stop=[schedule]) if sg.node(n)["kind"] == "input"]
    labels = [n for n in inputs if (t := sg.node(n).get("type")) and t.kind == "Labels"]
    return DiffusionParts(schedule, denoiser, data[0], labels[0] if labels else None, _param(sg, schedule, "steps"))


def _param(sg: Any, node: str, name: str) -> Any:
    """A block's parameter: the spec's value, else the contract's default."""
    data = sg.node(node)
    if name in data.get("params", {}):
        return data["params"][name]
    decl = data["contract"].param(name)
    return decl.default if decl else None


def check_diffusion(sg: Any, cfg: DiffusionConfig, splits: dict | None) -> None:
    """The supervised loop's check, then the diffusion graph's (:func:`check_diffusion_graph`)."""
    from dagcv.train.plan import check_supervised

    check_supervised(sg, cfg, splits)
    check_diffusion_graph(sg, cfg.sampler, ("train", "sampler"), required=True)


def check_diffusion_graph(sg: Any, sampler: SamplerConfig | None, path: tuple, *, required: bool) -> None:
    """One schedule; one denoiser reading its ``x_t`` and ``t``, whose output has its input's shape; a sampler
    the model can run (steps within the schedule's, guidance only for a conditional model); ``samples``
    computed from the schedule's input. ``required``: a graph without a schedule is an error (the diffusion
    loop), not a graph of another kind (a multistage spec)."""
    smap = sg.spec.source
    found = schedules(sg)
    if not found:
        if required:
            sg.error("the diffusion loop needs a noise schedule block", smap.value("train", "loop"),
                     hint="add one reading x_0: linear_schedule, cosine_schedule, scaled_linear_schedule")  # fmt: skip
        return
    for extra in found[1:]:
        sg.error(f"'{extra}': a diffusion graph has one noise schedule ('{found[0]}' is the first)",
                 smap.key("blocks", extra), node=extra, hint="samplers and the loss read one ᾱ table")  # fmt: skip
    schedule = found[0]
    readers = sorted({v for _, v, d in sg.g.out_edges(schedule, data=True) if d["src_port"] == "x_t"})
    if len(readers) != 1:
        sg.error(f"'{schedule}': {len(readers) or 'no'} blocks read its x_t; a diffusion graph has one denoiser",
                 smap.key("blocks", schedule), node=schedule,
                 hint=f"feed `{schedule}.x_t` (and `{schedule}.t`) to the denoiser only")  # fmt: skip
        return
    parts = diffusion_parts(sg)
    if parts is None:
        return  # the schedule's x0 is not wired: the graph check reported it
    _check_denoiser(sg, parts)
    if sampler is not None:
        _check_sampler(sg, parts, sampler, path)
    _check_samples(sg, parts)


def _check_denoiser(sg: Any, parts: DiffusionParts) -> None:
    smap, node = sg.spec.source, parts.denoiser
    wired = {d["dst_port"]: (u, d["src_port"]) for u, d in sg.in_edges(node)}
    if (parts.schedule, "t") not in wired.values():
        sg.error(f"denoiser '{node}' does not read the timestep `{parts.schedule}.t`",
                 smap.key("blocks", node), node=node,
                 hint=f"wire `t: {parts.schedule}.t`: a denoiser must know how noisy its input is")  # fmt: skip
    x_port = next(p for p, src in wired.items() if src == (parts.schedule, "x_t"))
    shape_in = (sg.node(parts.schedule).get("shapes") or {}).get("x_t")
    outputs = [p.name for p in sg.node(node)["contract"].outputs]
    shape_out = (sg.node(node).get("shapes") or {}).get(outputs[0])
    if shape_in is None or shape_out is None:
        return
    if [d.value for d in shape_in] != [d.value for d in shape_out]:
        show = "×".join
        sg.error(
            f"denoiser '{node}' gives {show(d.text for d in shape_out)} for its input {x_port} of "
            f"{show(d.text for d in shape_in)}: a denoiser's output has its input's shape",
            smap.key("blocks", node),
            node=node,
            hint="the sampler feeds the output back as the next input; match its channels to the data's",
        )


def _check_sampler(sg: Any, parts: DiffusionParts, sampler: SamplerConfig, path: tuple) -> None:
    smap = sg.spec.source
    section = sg.spec.train or {}
    for key in path[1:]:
        section = section.get(key, {}) if isinstance(section, dict) else {}
    if sampler.steps is not None and sampler.steps > parts.timesteps:
        sg.error(f"{'.'.join(path)}.steps: {sampler.steps} sampling steps on a schedule of {parts.timesteps} "
                 "timesteps", smap.value(*path, "steps"),
                 hint=f"at most {parts.timesteps} (`{parts.schedule}` trains {parts.timesteps} timesteps)")  # fmt: skip
    if sampler.guidance > 0 and parts.labels is None:
        sg.error(f"{'.'.join(path)}.guidance: guidance on an unconditional model",
                 smap.value(*path, "guidance") if "guidance" in section else smap.key(*path),
                 hint=f"'{parts.denoiser}' reads no class labels; remove guidance, or condition it on a label "
                 "through condition_dropout")  # fmt: skip


def _check_samples(sg: Any, parts: DiffusionParts) -> None:
    if SAMPLES not in sg.outputs:
        return
    node = sg.outputs[SAMPLES][0]
    if parts.data[0] not in sg.upstream([node]):
        sg.error(f"output '{SAMPLES}' is not computed from '{parts.data[0]}', the data the schedule noises",
                 sg.spec.source.value("outputs", SAMPLES), node=node,
                 hint="samplers draw x_0: compute samples from it (unit_range of the images, a decoder of "
                 "latents) in `mode: sample`")  # fmt: skip
