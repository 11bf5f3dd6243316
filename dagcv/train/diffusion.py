"""Sampling a diffusion graph: a sampler (:mod:`blocks.samplers`) loops over the ``denoise`` program, then the
``samples`` output turns its x_0 into images.

The pieces come from the graph (:func:`dagcv.train.diffusion_config.diffusion_parts`): the ``denoise`` program
computes the denoiser's output given the schedule's ``x_t`` and ``t`` (the program is cut at the schedule) and
the class labels; the ``decode`` program computes ``samples`` given the data the schedule noises (``unit_range``
of pixels in [-1, 1], or a frozen VAE decoder of scaled latents); ``encode`` maps an image to that space for
inpainting. Nothing else is asked of a spec.

>>> # generate(compiled, parts, 16, seed=0, label=7, sampler=SamplerConfig(steps=50))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dagcv.graph import SpecGraph, source_argument
from dagcv.lower import DagModule, program_arguments
from dagcv.train.config import SAMPLES
from dagcv.train.diffusion_config import DiffusionParts, SamplerConfig
from dagcv.train.sampling import CannotSample, class_labels

Callback = Callable[[int, int], None]


def make_sampler(model: DagModule, parts: DiffusionParts, cfg: SamplerConfig) -> Any:
    """The sampler ``cfg`` names, over the model's schedule; too many steps is a :class:`CannotSample`."""
    from blocks.samplers import SAMPLERS

    steps = cfg.steps_for(parts.timesteps)
    if steps > parts.timesteps:
        raise CannotSample.at(None, f"--steps {steps}: the model was trained on {parts.timesteps} timesteps",
                              hint=f"at most {parts.timesteps} denoising steps")  # fmt: skip
    schedule = getattr(model, parts.schedule)
    if cfg.type == "ddim":
        return SAMPLERS["ddim"](schedule, steps=steps, eta=cfg.eta, clip_x0=cfg.clip)
    return SAMPLERS[cfg.type](schedule, steps=steps, clip_x0=cfg.clip)


def denoiser(
    model: DagModule, sg: SpecGraph, parts: DiffusionParts
) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """``denoise(x_t, t, labels)``: the denoiser's output through the model's ``denoise`` program."""
    program = model.program([parts.denoiser], "eval", given=[parts.schedule])
    x_arg, t_arg = source_argument(parts.schedule, "x_t"), source_argument(parts.schedule, "t")
    unknown = [a for a in program_arguments(program) if a not in (x_arg, t_arg, parts.labels)]
    if unknown:
        raise CannotSample.at(sg.spec.source.key("blocks", parts.denoiser),
                              f"the denoiser '{parts.denoiser}' also reads '{unknown[0]}', which a sampler cannot give",
                              hint="a sampler feeds x_t, t and class labels")  # fmt: skip

    def denoise(x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        args = {x_arg: x, t_arg: t}
        if parts.labels is not None:
            args[parts.labels] = labels if labels is not None else torch.full_like(t, -1)
        return program(**args)[parts.denoiser]

    return denoise


def _data_argument(sg: SpecGraph, parts: DiffusionParts) -> str:
    node, port = parts.data
    return node if sg.node(node)["kind"] == "input" else source_argument(node, port)


def decode(model: DagModule, sg: SpecGraph, parts: DiffusionParts, x0: Tensor) -> Tensor:
    """The ``samples`` output computed from a sampler's x_0."""
    node, port = parts.data
    if sg.outputs[SAMPLES] == (node, port):
        return x0
    given = [] if sg.node(node)["kind"] == "input" else [node]
    program = model.program([SAMPLES], "sample", given=given)
    arg = _data_argument(sg, parts)
    unknown = [a for a in program_arguments(program) if a != arg]
    if unknown:
        raise CannotSample.at(sg.spec.source.value("outputs", SAMPLES),
                              f"'{SAMPLES}' reads '{unknown[0]}' besides the denoised data", hint=None)  # fmt: skip
    return program(**{arg: x0})[SAMPLES]


def encode(model: DagModule, sg: SpecGraph, parts: DiffusionParts, image: Tensor) -> Tensor:
    """An image batch mapped to the space the schedule noises (for inpainting): that space must be pixels."""
    node, port = parts.data
    if sg.node(node)["kind"] == "input":
        return image
    program = model.program([f"{node}.{port}"], "eval")
    args = program_arguments(program)
    images = [n for n in sg.spec.inputs if (t := sg.node(n).get("type")) and t.kind == "Image"]
    if len(args) != 1 or args[0] not in images:
        raise CannotSample.at(None, f"--inpaint: '{sg.spec.name}' does not diffuse pixels of one image input",
                              hint="inpainting needs a model whose schedule noises the image itself")  # fmt: skip
    x0 = program(**{args[0]: image})[f"{node}.{port}"]
    if x0.shape[-2:] != image.shape[-2:]:
        raise CannotSample.at(None, f"--inpaint: '{sg.spec.name}' diffuses {tuple(x0.shape[1:])} latents, not pixels",
                              hint="inpainting needs a model whose schedule noises the image itself")  # fmt: skip
    return x0


def data_shape(sg: SpecGraph, parts: DiffusionParts, n: int) -> tuple[int, ...]:
    """The shape of ``n`` samples in the space the schedule noises (its example shape, batch replaced)."""
    node, port = parts.data
    dims = sg.node(node)["shapes"][port]
    return (n, *(d.value for d in dims[1:]))


def generate(
    compiled: Any,
    parts: DiffusionParts,
    n: int,
    *,
    seed: int,
    sampler: SamplerConfig,
    label: int | None = None,
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
    inpaint: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``n`` samples through ``samples`` (see the module docstring); ``inpaint``: (image, mask) in [0, 1], mask 1
    where the image is kept. The caller sets eval mode and the RNG."""
    from blocks.samplers import repaint, sample

    model, sg = compiled.module, compiled.built.sg
    if sampler.guidance > 0 and parts.labels is None:
        raise CannotSample.at(None, f"--guidance {sampler.guidance}: '{sg.spec.name}' is an unconditional model",
                              hint="classifier-free guidance needs a denoiser conditioned on labels")  # fmt: skip
    if label is not None and parts.labels is None:
        raise CannotSample.at(None, f"--class {label}: '{sg.spec.name}' is an unconditional model",
                              hint="its denoiser reads no labels")  # fmt: skip
    labels = class_labels(sg, parts.labels, n, label).to(device) if parts.labels else None
    generator = torch.Generator(device=device).manual_seed(seed)
    steps = make_sampler(model, parts, sampler)
    denoise = denoiser(model, sg, parts)
    if inpaint is None:
        shape = data_shape(sg, parts, n)
        x0 = sample(steps, denoise, shape, generator=generator, labels=labels, guidance=sampler.guidance,
                    callback=callback)  # fmt: skip
    else:
        image, mask = inpaint
        known = encode(model, sg, parts, image.to(device)).expand(n, -1, -1, -1)
        x0 = repaint(steps, denoise, known, mask.to(device), generator=generator, labels=labels,
                     guidance=sampler.guidance, callback=callback)  # fmt: skip
    return decode(model, sg, parts, x0)
