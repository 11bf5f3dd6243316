"""Drawing samples from whatever a spec's model defines: the program behind its ``samples`` output.

A spec that can sample says so with an output named ``samples`` (images in ``[0, 1]``): a GAN's generator
(through ``unit_range`` after its tanh), a VAE's decoder on prior noise (nodes tagged ``mode: sample``), a prior
over codes decoded through the frozen quantizer and decoder. :func:`draw` runs that program in eval mode and
feeds what it needs: every noise source draws ``n`` vectors from a generator seeded with ``seed``; a ``Labels``
input takes the requested class (or cycles through the classes); a code grid of unknowns (-1) is given for
priors that fill one. Anything else it would need is a clear error, not a guess.

>>> # images = draw(compiled, 64, seed=0)            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dagcv.errors import SpecError
from dagcv.graph import SpecGraph
from dagcv.lower import DagModule, program_arguments
from dagcv.train.config import SAMPLES
from dagcv.train.diffusion_config import SamplerConfig, diffusion_parts


class CannotSample(SpecError):
    """The model defines no sampler, or its sampler needs something ``dagcv sample`` cannot give."""


def require_sampler(sg: SpecGraph) -> None:
    """:class:`CannotSample` saying how to define a sampler, unless the spec has a ``samples`` output."""
    if SAMPLES not in sg.outputs:
        raise CannotSample.at(
            sg.spec.source.key("outputs") if sg.spec.outputs else sg.spec.source.key(),
            f"spec '{sg.spec.name}' defines no sampler: it has no output named '{SAMPLES}'",
            hint="add `samples: <node>` to outputs: the generator (GAN), or a decoder fed by a noise source "
            "in `mode: sample` (VAE); images in [0, 1]",
        )


def sample_program(model: DagModule, sg: SpecGraph) -> Any:
    """The program computing the ``samples`` output, or :class:`CannotSample` saying how to define one."""
    require_sampler(sg)
    return model.program([SAMPLES], "sample")


def run_weights(state: dict[str, Any], *, averaged: bool = True) -> dict[str, Any]:
    """The model weights of a checkpoint to sample with: the average a loop kept (its state's ``ema``) when there
    is one and ``averaged``, else the trained weights."""
    ema = (state.get("loop") or {}).get("ema")
    return ema["average"] if averaged and ema else state["model"]


def class_count(sg: SpecGraph, label_input: str) -> int | None:
    """How many classes the blocks reading ``label_input`` know (their ``num_classes``), if they say; labels
    may pass through blocks that do not (``condition_dropout``) on their way."""
    readers = sg.downstream([label_input]) - {label_input}
    counts = {sg.node(v).get("params", {}).get("num_classes") for v in readers if sg.node(v)["kind"] == "block"}
    counts.discard(None)
    return min(counts) if counts else None  # type: ignore[type-var]


def noise_sources(objects: dict[str, Any]) -> dict[str, Any]:
    """The built source blocks a sampler or loop draws from (noise, grids of unknown codes), by the ``forward``
    argument that carries their draws (``<node>_out``)."""
    from dagcv.graph import source_argument

    return {source_argument(name, "out"): obj for name, obj in objects.items() if callable(getattr(obj, "draw", None))}


def sampling_arguments(
    program: Any,
    sg: SpecGraph,
    objects: dict[str, Any],
    n: int,
    *,
    seed: int,
    label: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """The arguments of the sample program for ``n`` samples (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    args: dict[str, torch.Tensor] = {}
    sources = noise_sources(objects)
    for arg in program_arguments(program):
        if arg in sources:
            args[arg] = sources[arg].draw(n, device, generator=generator)
            continue
        kind = sg.node(arg).get("type").kind if arg in sg.spec.inputs and sg.node(arg).get("type") else None
        if kind == "Labels":
            args[arg] = class_labels(sg, arg, n, label).to(device)
            continue
        raise CannotSample.at(
            sg.spec.source.key("inputs", arg) if arg in sg.spec.inputs else sg.spec.source.key("outputs", SAMPLES),
            f"sampling '{sg.spec.name}' needs '{arg}', which `dagcv sample` cannot provide",
            hint="a sampler reads noise sources and class labels only",
        )
    return args


def class_labels(sg: SpecGraph, arg: str, n: int, label: int | None) -> torch.Tensor:
    """``n`` labels for the Labels input ``arg``: all ``label``, or cycling through the classes."""
    classes = class_count(sg, arg)
    if label is None:
        if classes is None:
            raise CannotSample.at(sg.spec.source.key("inputs", arg),
                                  f"sampling needs a class for '{arg}'", hint="pass --class K")  # fmt: skip
        return torch.arange(n) % classes
    if label < 0 or (classes is not None and label >= classes):
        upper = f"0–{classes - 1}" if classes is not None else "≥ 0"
        raise CannotSample.at(sg.spec.source.key("inputs", arg),
                              f"--class {label} is outside the label range {upper} of '{arg}'",
                              hint=f"the model knows {classes} classes" if classes else None)  # fmt: skip
    return torch.full((n,), label, dtype=torch.int64)


@torch.no_grad()
def draw(
    compiled: Any,
    n: int,
    *,
    seed: int = 0,
    label: int | None = None,
    temperature: float | None = None,
    device: torch.device | str = "cpu",
    sampler: SamplerConfig | None = None,
    callback: Callable[[int, int], None] | None = None,
    inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``n`` samples of the compiled model (weights as they are), in eval mode; the model's mode is restored.

    A diffusion graph is sampled by ``sampler`` (a :class:`~dagcv.train.diffusion_config.SamplerConfig`;
    default DDIM with 50 steps), reporting each step to ``callback(i, total)``; ``inpaint`` is (image, mask)."""
    model, sg = compiled.module, compiled.built.sg
    parts = diffusion_parts(sg)
    if parts is None:
        program = sample_program(model, sg)
        args = sampling_arguments(program, sg, compiled.built.objects, n, seed=seed, label=label, device=device)
    else:
        require_sampler(sg)  # the diffusion path lowers its own programs
    was_training = model.training
    tempered = [m for m in model.modules() if hasattr(m, "temperature")]
    saved = [m.temperature for m in tempered]
    model.eval()
    try:
        if temperature is not None:
            for m in tempered:
                m.temperature = temperature
        with torch.random.fork_rng(devices=[]):  # a training run's own random stream is left as it was
            torch.manual_seed(seed)  # priors that sample inside their forward draw from the global RNG
            if parts is None:
                return program(**args)[SAMPLES]
            from dagcv.train.diffusion import generate

            return generate(compiled, parts, n, seed=seed, label=label, sampler=sampler or SamplerConfig(),
                            device=device, callback=callback, inpaint=inpaint)  # fmt: skip
    finally:
        model.train(was_training)
        for m, t in zip(tempered, saved, strict=True):
            m.temperature = t


def save_grid(images: torch.Tensor, path: Path, *, nrow: int | None = None) -> None:
    """A PNG grid of images in ``[0, 1]`` (values outside are clamped), written atomically."""
    import math

    from torchvision.utils import save_image

    from dagcv.files import atomic_file

    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    with atomic_file(path) as f:
        save_image(images.detach().float().clamp(0, 1).cpu(), f, format="png", nrow=nrow, padding=2)


def save_points(points: torch.Tensor, path: Path) -> None:
    """A scatter plot of 2-D samples (a toy distribution), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dagcv.files import atomic_file

    fig, ax = plt.subplots(figsize=(5, 5))
    xy = points.detach().float().cpu().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(f"{len(xy)} samples")
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def save_samples(samples: torch.Tensor, path: Path) -> None:
    """Images as a grid, 2-D points as a scatter plot; anything else is an error."""
    if samples.dim() == 4:
        save_grid(samples, path)
    elif samples.dim() == 2 and samples.shape[1] == 2:
        save_points(samples, path)
    else:
        raise CannotSample.at(None, f"samples of shape {tuple(samples.shape)} are neither images nor 2-D points")


def sample_run(
    run: Path,
    output: Path,
    n: int,
    *,
    seed: int = 0,
    label: int | None = None,
    temperature: float | None = None,
    sampler: dict[str, Any] | None = None,
    inpaint: Path | None = None,
    mask: Path | None = None,
    use_ema: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """``dagcv sample RUN``: ``n`` samples of the run's last checkpoint as a PNG (a grid of images, or a
    scatter plot of 2-D points) and the tensors beside it (``<output>.pt``).

    A diffusion model is sampled with the run's ``train.sampler`` settings updated by ``sampler`` (``type``,
    ``steps``, ``eta``, ``guidance``: the CLI's flags), with the averaged weights when the run kept them (unless
    ``use_ema`` is False), optionally inpainting the PNG ``inpaint`` where the PNG ``mask`` is black."""
    from dagcv.compiler import compile_spec
    from dagcv.files import atomic_file
    from dagcv.spec import load_spec
    from dagcv.train.checkpoint import load_checkpoint

    spec = load_spec(run / "spec.resolved.yaml")
    compiled = compile_spec(spec)
    sg = compiled.built.sg
    require_sampler(sg)  # before loading anything
    parts = diffusion_parts(sg)
    flags = {k: v for k, v in (sampler or {}).items() if v is not None}
    if parts is None and (flags or inpaint or mask):
        given = ", ".join("--sampler" if k == "type" else f"--{k}" for k in flags) or "--inpaint"
        raise CannotSample.at(None, f"{given}: '{spec.name}' is not a diffusion model",
                              hint="sampler settings and inpainting apply to models with a noise schedule")  # fmt: skip
    settings = _sampler_settings(spec, flags, inpaint is not None) if parts is not None else None
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    weights = run_weights(state, averaged=use_ema)
    compiled.module.load_state_dict(weights, strict=True)
    if temperature is not None and not any(hasattr(m, "temperature") for m in compiled.module.modules()):
        raise CannotSample.at(None, f"--temperature: nothing in '{spec.name}' samples with a temperature",
                              hint="temperature scales the logits of a prior over codes")  # fmt: skip
    painted = _inpainting_pair(inpaint, mask, sg, parts) if inpaint is not None or mask is not None else None
    with _progress_bar(progress) as callback:
        images = draw(compiled, n, seed=seed, label=label, temperature=temperature, sampler=settings,
                      callback=callback, inpaint=painted)  # fmt: skip
    save_samples(images, output)
    tensors = output.with_suffix(".pt")
    record = {"seed": seed, "label": label, "temperature": temperature,
              "sampler": settings.model_dump() if settings else None, "ema": weights is not state["model"]}  # fmt: skip
    with atomic_file(tensors) as f:
        torch.save({"samples": images.cpu(), **record}, f)
    return {"image": str(output), "tensors": str(tensors), "shape": list(images.shape), **record}


def _sampler_settings(spec: Any, flags: dict[str, Any], inpainting: bool) -> SamplerConfig:
    """The run's ``train.sampler`` with the CLI's flags applied (inpainting: DDPM unless told otherwise)."""
    from pydantic import ValidationError

    base = (spec.train or {}).get("sampler") or {}
    if inpainting and "type" not in flags:
        base = {k: v for k, v in base.items() if k not in ("type", "steps", "eta")} | {"type": "ddpm"}
    try:
        settings = SamplerConfig.model_validate({**base, **flags})
    except ValidationError as exc:
        raise CannotSample.at(None, f"sampler settings: {exc.errors()[0]['msg']}") from None
    if inpainting and settings.type != "ddpm":
        raise CannotSample.at(None, f"--inpaint runs RePaint on the ddpm sampler, not {settings.type}",
                              hint="drop --sampler, or pass --sampler ddpm (with fewer --steps for speed)")  # fmt: skip
    return settings


def _inpainting_pair(image: Path | None, mask: Path | None, sg: SpecGraph, parts: Any) -> tuple:
    """(image, mask) read from PNGs at the model's data size, in [0, 1]; mask 1 (white) where the image is kept."""
    from torchvision.io import ImageReadMode, decode_image

    if image is None or mask is None:
        raise CannotSample.at(None, "inpainting needs both --inpaint IMAGE and --mask MASK",
                              hint="white mask pixels keep the image, black ones are drawn")  # fmt: skip
    node, port = parts.data
    dims = [d.value for d in sg.node(node)["shapes"][port]]
    channels = dims[1] if len(dims) == 4 else None
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    pixels = decode_image(str(image), mode=mode).float().div(255).unsqueeze(0)
    holes = decode_image(str(mask), mode=ImageReadMode.GRAY).float().div(255).unsqueeze(0)
    if holes.shape[-2:] != pixels.shape[-2:]:
        raise CannotSample.at(None, f"--mask is {holes.shape[-1]}×{holes.shape[-2]} pixels but --inpaint is "
                              f"{pixels.shape[-1]}×{pixels.shape[-2]}",
                              hint="give a mask of the image's size")  # fmt: skip
    return pixels, (holes > 0.5).float()


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """A callback ``(step, total)`` that advances a progress bar on stderr (or does nothing)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    columns = ("sampling", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("sampling", total=None)
        yield lambda step, total: bar.update(task, completed=step, total=total)
