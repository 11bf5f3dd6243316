"""The ``dagcv`` command line. Invalid specs exit 2 with compiler-style diagnostics; internal bugs exit 1.

Imports are deferred to each command so that ``dagcv --help`` and ``dagcv check`` never load torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dagcv import __version__
from dagcv.errors import SpecError
from dagcv.files import replace_folder, write_text_atomically


def _print_error(exc: SpecError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in exc.diagnostics], indent=2))
        return
    text = exc.format()
    if sys.stderr.isatty():
        text = text.replace(": error:", ": \x1b[1;31merror:\x1b[0m")
    click.echo(text, err=True)
    n = len(exc.diagnostics)
    click.echo(f"{n} error{'s' if n != 1 else ''} found", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpecError as exc:
            _print_error(exc, bool(ctx.meta.get("json")))
            ctx.exit(2)


def _set_limits(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    from dagcv.limits import Limits, limits, set_limits

    if values:
        try:
            set_limits(Limits.parse(",".join(values), base=limits()))
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dagcv")
@click.option(
    "--limit",
    multiple=True,
    metavar="NAME=VALUE",
    expose_value=False,
    callback=_set_limits,
    help="Raise or lower a resource limit for this command, e.g. --limit params=5e9 (also $DAGCV_LIMITS).",
)
def main() -> None:
    """dagcv: typed block graphs for deep learning, checked before anything runs.

    Write a spec (YAML, or the .dagcv DSL), then: `dagcv check` it, `dagcv render` it, `dagcv compile` it to a
    plain PyTorch module, and `dagcv train` it. `dagcv blocks` lists the blocks you can use.

    A spec is untrusted input: whatever a file holds, dagcv answers with positioned errors (exit 2), never runs
    code from it, and refuses sizes beyond its limits (file size, nesting, integers, dims, estimated parameters
    and activation memory; see --limit).
    """


def _set_option(f):
    """``--set PATH=VALUE`` (repeatable): the same dotted overrides for every command that reads a spec."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="PATH=VALUE",
        help="Override a spec value, e.g. --set train.optimizer.lr=0.01 or --set blocks.backbone='{type: resnet34}'"
        " (a block swap keeps the block's in: and mode:); repeatable.",
    )(f)


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print diagnostics as a JSON list.")
@_set_option
@click.pass_context
def check(ctx: click.Context, specs: tuple[Path, ...], as_json: bool, overrides: tuple[str, ...]) -> None:
    """Parse and statically check SPECS (no torch): every error, with its line."""
    from dagcv.compiler import check_file

    ctx.meta["json"] = as_json
    problems: list = []
    sources: dict[str, str] = {}
    for spec in specs:
        try:
            check_file(spec, overrides=list(overrides))
        except SpecError as exc:
            problems += exc.diagnostics
            sources.update(exc.sources)
    if problems:
        raise SpecError(problems, sources)
    if as_json:
        click.echo("[]")
    else:
        click.echo(f"ok: {', '.join(map(str, specs))}")


@main.command(name="compile")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: build/<name>/).",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the summary table.")
@_set_option
def compile_cmd(spec: Path, out_dir: Path | None, quiet: bool, overrides: tuple[str, ...]) -> None:
    """Check, build and lower SPEC; write the resolved spec, model.py, summary.md and graph.svg."""
    from dagcv.compiler import compile_file

    result = compile_file(spec, overrides=list(overrides))
    target = out_dir or Path("build") / result.built.sg.spec.name
    files: dict[str, str | bytes] = dict(result.files(source_name=str(spec)))
    svg = result.graph_svg()
    if svg is None:
        click.echo("dagcv: warning: Graphviz's `dot` is not installed; graph.svg not written", err=True)
    else:
        files["graph.svg"] = svg
    replace_folder(target, files)
    if not quiet:
        _print_summary(result)
    click.echo(f"wrote {target}/: {', '.join(files)}")


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from dagcv.report import summary_rows

    rows = summary_rows(result.built)
    table = Table(title=f"{result.built.sg.spec.name}", title_justify="left")
    for col, justify in [
        ("node", "left"),
        ("block", "left"),
        ("mode", "left"),
        ("output", "left"),
        ("params", "right"),
    ]:
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r["node"], r["block"], r["mode"], r["output"], f"{r['params']:,}")
    table.add_row("total", "", "", "", f"{sum(r['params'] for r in rows):,}", style="bold")
    Console().print(table)


@main.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PATH=VALUE",
    help="Override a spec value, e.g. --set train.optimizer.lr=0.01 (repeatable).",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Continue the run in this run directory from its last checkpoint.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the run here (default: runs/<name>/<timestamp>/).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or tables.")
@click.option("--json", "json_lines", is_flag=True, help="Print one JSON record per epoch (for scripts).")
@click.option("--tensorboard", is_flag=True, help="Also log to TensorBoard (when installed).")
def train(
    spec: Path | None,
    overrides: tuple[str, ...],
    resume: Path | None,
    run_dir: Path | None,
    quiet: bool,
    json_lines: bool,
    tensorboard: bool,
) -> None:
    """Train SPEC with its data: and train: sections, or --resume a run."""
    from dagcv.spec import load_spec
    from dagcv.train.runner import Options, TrainingDiverged, resume_run, train_spec

    options = Options(run_dir=run_dir, quiet=quiet, json_lines=json_lines, tensorboard=tensorboard)
    try:
        if resume is not None:
            if spec is not None or overrides:
                raise click.UsageError("--resume takes the spec and overrides from the run directory")
            result = resume_run(resume, options)
        else:
            if spec is None:
                raise click.UsageError("give a SPEC to train, or --resume RUN_DIR")
            if run_dir is not None and ((run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()):
                raise click.UsageError(
                    f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --run-dir"
                )
            result = train_spec(load_spec(spec, list(overrides)), options)
    except TrainingDiverged as exc:
        click.echo(f"dagcv: training stopped: {exc}", err=True)
        sys.exit(3)
    if not quiet and not json_lines and result.main_process:
        from dagcv.train.progress import print_metrics

        if result.stopped_early:
            click.echo("stopped early: no improvement of the early-stopping metric (best weights: checkpoints/best.pt)")
        if result.history:
            print_metrics(result.final, title="final")
        click.echo(f"run: {result.run_dir}  (metrics.jsonl, metrics.csv, checkpoints/, plots/)")


@main.command(name="eval")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--ckpt",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A checkpoint (checkpoints/last.pt) or a bare state_dict (with a SPEC).",
)
@click.option("--split", help="The data split to evaluate (default: train.eval_split).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a spec value.")
@click.option("--episodes", default=10, show_default=True, type=click.IntRange(1, 10_000),
              help="RL runs: episodes to play.")  # fmt: skip
@click.option(
    "--video", type=click.Path(dir_okay=False, path_type=Path), help="RL runs: film the first episode (.gif)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_cmd(
    target: Path, ckpt: Path | None, split: str | None, overrides: tuple[str, ...], episodes: int,
    video: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Evaluate SPEC with --ckpt on a split of its data, or a run directory RUN with its last checkpoint.

    For an RL run (ppo, a2c, reinforce) this plays episodes with the deterministic policy and prints the mean
    and standard deviation of their returns.
    """
    from dagcv.spec import load_spec
    from dagcv.train.runner import evaluate_checkpoint

    if target.is_dir():
        if not (target / "spec.resolved.yaml").exists():
            raise click.UsageError(f"{target} is no run directory (no spec.resolved.yaml)")
        spec_path, ckpt = target / "spec.resolved.yaml", ckpt or target / "checkpoints" / "last.pt"
        train = (load_spec(spec_path).train or {}) if not overrides else {}
        if isinstance(train, dict) and train.get("loop") in ("ppo", "a2c", "reinforce"):
            from dagcv.train.rl_eval import play

            result = play(target, episodes, video=video)
            if as_json:
                click.echo(json.dumps(result))
            else:
                click.echo(f"{result['episodes']} episodes: return {result['mean_return']:.1f} ± "
                           f"{result['std_return']:.1f}, length {result['mean_length']:.1f}"
                           + (f"; video: {video}" if video else ""))  # fmt: skip
            return
        spec = spec_path
    else:
        spec = target
        if ckpt is None:
            raise click.UsageError("give --ckpt FILE with a SPEC (or a run directory instead of the spec)")
    metrics = evaluate_checkpoint(load_spec(spec, list(overrides)), ckpt, split)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        from dagcv.train.progress import print_metrics

        print_metrics(metrics, title=f"{spec} @ {ckpt}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-n", "count", default=64, show_default=True, type=click.IntRange(1, 100_000), help="Samples to draw.")
@click.option("--class", "label", type=int, help="Class of every sample (conditional models; default: cycle).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="Priors over codes: logit scale.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise and of the sampler.")
@click.option("--sampler", "sampler_type", type=click.Choice(["ddpm", "ddim"]), help="Diffusion: the sampler.")
@click.option("--steps", type=click.IntRange(min=1), help="Diffusion: denoising steps (ddpm: all; ddim: 50).")
@click.option("--eta", type=click.FloatRange(0, 1), help="DDIM: 0 deterministic, 1 as noisy as DDPM.")
@click.option("--guidance", type=click.FloatRange(min=0), help="Diffusion: classifier-free guidance scale w.")
@click.option("--inpaint", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Diffusion: a PNG to complete (RePaint) where --mask is black.")  # fmt: skip
@click.option("--mask", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="PNG of the image's size: white pixels are kept, black ones drawn.")  # fmt: skip
@click.option("--no-ema", is_flag=True, help="Use the raw weights, not the run's average.")
@click.option("-o", "--output", default=Path("samples.png"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="PNG to write (and .pt).")  # fmt: skip
def sample(
    run: Path, count: int, label: int | None, temperature: float | None, seed: int, sampler_type: str | None,
    steps: int | None, eta: float | None, guidance: float | None, inpaint: Path | None, mask: Path | None,
    no_ema: bool, output: Path,
) -> None:  # fmt: skip
    """Draw samples from RUN's last checkpoint: whatever its spec's `samples` output defines (a GAN's generator,
    a VAE's decoder on prior noise, a prior over codes decoded by a frozen decoder, a diffusion model's sampler
    over its denoiser: `--sampler ddim --steps 50 --guidance 3 --class 7`)."""
    from dagcv.train.sampling import sample_run

    if not (run / "spec.resolved.yaml").exists():
        raise click.UsageError(f"{run} is no run directory (no spec.resolved.yaml)")
    sampler = {"type": sampler_type, "steps": steps, "eta": eta, "guidance": guidance}
    result = sample_run(run, output, count, seed=seed, label=label, temperature=temperature, sampler=sampler,
                        inpaint=inpaint, mask=mask, use_ema=not no_ema, progress=True)  # fmt: skip
    click.echo(f"wrote {result['image']} and {result['tensors']}: {count} samples, seed {seed}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write episodes.npz into.")  # fmt: skip
@click.option("--episodes", default=20, show_default=True, type=click.IntRange(1, 100_000))
def rollout(run: Path, output: Path, episodes: int) -> None:
    """Record episodes of RUN's trained policy (observation, action, reward) as a dataset for behavioural
    cloning: the `rollout_dataset` block reads it (see specs/bc_cartpole.yaml)."""
    from dagcv.train.rl_eval import record

    result = record(run, output, episodes)
    click.echo(f"wrote {result['file']}: {result['steps']} steps of {result['episodes']} episodes")


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print contracts as JSON.")
def blocks(name: str | None, as_json: bool) -> None:
    """List registered blocks by family, or show one block's ports, parameters and source."""
    from dagcv.errors import did_you_mean
    from dagcv.registry import registry

    reg = registry()
    if name is None:
        if as_json:
            click.echo(json.dumps([reg.contracts[n].to_json() for n in reg.names()], indent=1))
            return
        for family, contracts in reg.by_family().items():
            click.echo(f"{family}:")
            for c in contracts:
                click.echo(f"  {c.name:<24} {c.doc}")
        return
    contract = reg.get(name)
    if contract is None:
        raise SpecError.at(
            None,
            f"unknown block type '{name}'",
            hint=did_you_mean(name, reg.names()) or "`dagcv blocks` lists every block",
        )
    if as_json:
        click.echo(json.dumps(contract.to_json(), indent=1))
        return
    click.echo(_describe(contract))


@main.command()
@click.argument("name", required=False)
def loops(name: str | None) -> None:
    """List the training loops (`train.loop`), or show one loop's config keys."""
    from dagcv.errors import did_you_mean
    from dagcv.train.loops import loop_info, loop_names

    if name is None:
        for n in loop_names():
            info = loop_info(n)
            click.echo(f"{n:<12} {info.doc} (clock: {info.clock})")
        return
    info = loop_info(name)
    if info is None:
        raise SpecError.at(None, f"unknown loop '{name}'", hint=did_you_mean(name, loop_names()) or "`dagcv loops`")
    click.echo(f"{name}: {info.doc}\n  config: {info.config.__module__}.{info.config.__name__}")
    click.echo(f"  implementation: {info.target.replace(':', '.')}\n  clock: {info.clock}\n\n  train: keys")
    for key, field in info.config.model_fields.items():
        default = "required" if field.is_required() else f"default {json.dumps(field.get_default(), default=str)}"
        click.echo(f"    {key}: {_annotation(field.annotation)} ({default})")
        if field.description:
            click.echo(f"        {field.description}")


def _annotation(tp: object) -> str:
    import re

    text = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    text = text or str(tp).replace("typing.", "")
    return re.sub(r"dagcv\.[\w.]+\.", "", text)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file: .svg, .png, .pdf or .dot (default: the spec's path with .svg).",
)
@click.option(
    "--depth",
    type=click.IntRange(0, 10),
    default=0,
    show_default=True,
    help="Expand blocks into their inner torch modules, N levels deep.",
)
@click.option("--shapes/--no-shapes", default=True, show_default=True, help="Label edges with shapes.")
@click.option("--rankdir", type=click.Choice(["LR", "TB"]), help="Layout direction (default: LR; TB with --depth).")
@_set_option
def render(
    spec: Path, output: Path | None, depth: int, shapes: bool, rankdir: str | None, overrides: tuple[str, ...]
) -> None:
    """Draw SPEC's block graph with Graphviz; an invalid spec is drawn with its errors in red (exit 2)."""
    from dagcv.render import RenderError, render_file

    target = output or spec.with_suffix(".svg")
    if target.suffix.lower() not in (".svg", ".png", ".pdf", ".dot", ".gv"):
        raise click.BadParameter(f"unknown format '{target.suffix}': use .svg, .png, .pdf or .dot", param_hint="-o")
    try:
        sg = render_file(spec, target, depth=depth, shapes=shapes, rankdir=rankdir, overrides=list(overrides))
    except RenderError as exc:
        click.echo(f"dagcv: {exc}", err=True)
        sys.exit(1)
    click.echo(f"wrote {target}")
    if sg.diagnostics:
        raise SpecError(sg.diagnostics, {sg.source_file: sg.spec.source.text, **sg.spec._overrides})


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--to", "syntax", type=click.Choice(["yaml", "dsl"]), help="Convert to this syntax (default: keep the file's own)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here ('-' for stdout; default: the file itself, or its twin with the new extension).",
)
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 if a file is not formatted.")
@click.option("--resolved", is_flag=True, help="Print the spec as it is read (overrides applied) to stdout.")
@_set_option
def fmt(
    specs: tuple[Path, ...],
    syntax: str | None,
    output: Path | None,
    check_only: bool,
    resolved: bool,
    overrides: tuple[str, ...],
) -> None:
    """Format SPECS canonically (comments kept), or convert between YAML and the DSL.

    With --resolved (or --set), print the spec as dagcv reads it, overrides applied, instead of rewriting files.
    """
    from dagcv.spec import load_spec
    from dagcv.spec.printer import to_dsl, to_yaml

    if output is not None and len(specs) > 1:
        raise click.UsageError("-o takes one spec")
    if resolved or overrides:
        if check_only:
            raise click.UsageError("--check formats files as written: it takes no --resolved or --set")
        for spec_path in specs:
            spec = load_spec(spec_path, list(overrides))
            dsl = (syntax or ("dsl" if spec_path.suffix == ".dagcv" else "yaml")) == "dsl"
            text = to_dsl(spec) if dsl else to_yaml(spec)
            if output is None or str(output) == "-":
                click.echo(text, nl=False)
            else:
                write_text_atomically(output, text)
                click.echo(f"wrote {output}")
        return
    unformatted = []
    for spec_path in specs:
        spec = load_spec(spec_path)
        if any(span.file != spec.source.file for span in spec.source.values.values()):
            click.echo(f"{spec_path} extends another spec: left as written (`dagcv fmt --resolved` prints it merged)",
                       err=True)  # fmt: skip
            continue
        source_syntax = "dsl" if spec_path.suffix == ".dagcv" else "yaml"
        target_syntax = syntax or (
            ("dsl" if output.suffix == ".dagcv" else "yaml") if output and str(output) != "-" else source_syntax
        )
        try:
            text = to_dsl(spec) if target_syntax == "dsl" else to_yaml(spec)
        except ValueError as exc:
            raise SpecError.at(spec.source.key(), f"cannot write {spec_path} as {target_syntax}: {exc}") from None
        target = output or (
            spec_path
            if target_syntax == source_syntax
            else spec_path.with_suffix(".dagcv" if target_syntax == "dsl" else ".yaml")
        )
        if check_only:
            current = target.read_text(encoding="utf-8") if str(target) != "-" and target.exists() else None
            if current != text:
                unformatted.append(str(target))
                click.echo(f"would reformat {target}", err=True)
        elif str(target) == "-":
            click.echo(text, nl=False)
        else:
            write_text_atomically(target, text)
            click.echo(f"wrote {target}")
    if unformatted:
        sys.exit(1)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@click.option("--sweep", "of_sweep", is_flag=True, help="The schema of sweep files instead of specs.")
def schema(output: Path | None, of_sweep: bool) -> None:
    """Print (or write) the JSON Schema of spec files (or sweep files), for editor completion and validation."""
    if of_sweep:
        from dagcv.sweep.config import SweepConfig

        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SweepConfig.model_json_schema(),
               "title": "dagcv sweep file"}  # fmt: skip
    else:
        from dagcv.schema import spec_schema

        doc = spec_schema()
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    write_text_atomically(output, text)
    click.echo(f"wrote {output}")


def _describe(c) -> str:
    from dagcv.registry import readable_annotation

    lines = [
        f"{c.name}  ({c.family})",
        f"  {c.doc}",
        "",
        f"  class: {c.target.replace(':', '.')}",
        f"  file:  {c.file}:{c.line}",
        f"  mode:  {c.default_mode} (default)",
        "",
        "  inputs:",
    ]
    lines += [f"    {p.name}: {p.type}" for p in c.inputs] or ["    (none)"]
    lines += ["", "  outputs:"] + [f"    {p.name}: {p.type}" for p in c.outputs]
    lines += ["", "  parameters:"]
    for p in c.params:
        default = "required" if p.required else f"default {json.dumps(p.default)}"
        inferred = f"; inferred from {c.infer[p.name]}" if p.name in c.infer else ""
        lines.append(f"    {p.name}: {readable_annotation(p.annotation)} ({default}{inferred})")
        if p.doc:
            lines.append(f"        {p.doc}")
    if not c.params:
        lines.append("    (none)")
    return "\n".join(lines)


@main.command()
@click.argument("a")
@click.argument("b")
@_set_option
def diff(a: str, b: str, overrides: tuple[str, ...]) -> None:
    """What specs A and B differ in, block by block (as dagcv reads them: extends merged).

    A or B may be a point of a sweep, written SWEEP_FILE#POINT (the point's name as `dagcv sweep plan` shows it,
    e.g. studies/backbone_ablation.yaml#backbone=lenet,seed=0). --set applies to B. Exit 1 when they differ.
    """
    from dagcv.spec.diff import format_diff, spec_diff

    first, second = _spec_or_point(a, []), _spec_or_point(b, list(overrides))
    changes = spec_diff(first, second)
    click.echo(format_diff(changes))
    sys.exit(1 if changes else 0)


def _spec_or_point(target: str, overrides: list[str]):
    from dagcv.spec import load_spec

    if "#" not in target:
        return load_spec(Path(target), overrides)
    from dagcv.sweep.points import load_sweep

    path, _, name = target.partition("#")
    study = load_sweep(path)
    points = {p.name: p for p in study.points()}
    if name not in points:
        from dagcv.errors import did_you_mean

        raise click.BadParameter(f"{path} has no point '{name}'; " + (did_you_mean(name, points) or
                                 f"points: {', '.join(points)}"))  # fmt: skip
    if overrides:
        raise click.UsageError("--set applies to spec files, not to sweep points")
    return study.spec(points[name])


# ---------------------------------------------------------------------------------------------------------------
# Studies


@main.group()
def sweep() -> None:
    """Ablation studies: plan (check and compile every point), run, status, resume, report."""


_OUT = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="The sweep directory (default: sweeps/<name>/)."
)


def _plan_or_exit(target: Path, out: Path | None, workers: int | None, skip_invalid: bool, pool=None):
    from dagcv.sweep.run import open_sweep, plan_sweep

    study, sdir = open_sweep(target, out)
    planned = plan_sweep(study, sdir, workers=workers or study.cfg.executor.workers, pool=pool)
    invalid = [pp for pp in planned if not pp.ok]
    if invalid and not skip_invalid:
        for pp in invalid:
            click.echo(f"point {pp.point.name} is invalid:\n{pp.error}", err=True)
        click.echo(
            f"dagcv: {len(invalid)} of {len(planned)} points are invalid; nothing runs "
            "(fix them, exclude them, or pass --skip-invalid)",
            err=True,
        )
        sys.exit(2)
    return study, sdir, planned


def _points_table(study, sdir, planned, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, justify in [
        ("point", "left"),
        ("hash", "left"),
        ("params", "right"),
        ("FLOPs/sample", "right"),
        ("state", "left"),
        ("progress", "left"),
        (study.cfg.metric.name, "right"),
    ]:
        table.add_column(col, justify=justify)
    for pp in planned:
        result = sdir.result(pp) or {}
        value = (result.get("final") or {}).get(study.cfg.metric.name)
        state = sdir.state(pp)
        table.add_row(
            pp.point.name,
            (pp.hash or "")[:12],
            "–" if pp.params is None else f"{pp.params:,}",
            "–" if pp.flops is None else f"{pp.flops:,}",
            state,
            sdir.progress(pp) if state in ("running", "interrupted") else "",
            "" if not isinstance(value, int | float) else f"{value:.4f}",
        )
    return table


@sweep.command(name="plan")
@click.argument("sweep_file", type=click.Path(exists=True, path_type=Path))
@_OUT
@click.option("--workers", type=click.IntRange(1, 64), help="Compile in this many processes (default: executor's).")
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
def sweep_plan(sweep_file: Path, out: Path | None, workers: int | None, as_json: bool) -> None:
    """Expand SWEEP_FILE into points, check and compile every one; nothing trains. Exit 2 if any is invalid."""

    from dagcv.sweep.plan import plan_table
    from dagcv.sweep.run import open_sweep, plan_sweep

    study, sdir = open_sweep(sweep_file, out)
    planned = plan_sweep(study, sdir, workers=workers or study.cfg.executor.workers)
    if as_json:
        click.echo(json.dumps(plan_table(planned), indent=1))
    else:
        _console().print(_points_table(study, sdir, planned, f"{study.name}: {len(planned)} points"))
    invalid = [pp for pp in planned if not pp.ok]
    for pp in invalid:
        click.echo(f"\npoint {pp.point.name} is invalid:\n{pp.error}", err=True)
    if invalid:
        sys.exit(2)


@sweep.command(name="run")
@click.argument("sweep_file", type=click.Path(exists=True, path_type=Path))
@_OUT
@click.option("--workers", type=click.IntRange(1, 64), help="Points trained at once (default: the executor's).")
@click.option("--threads", type=click.IntRange(1, 256), help="Torch threads per worker (default: the executor's).")
@click.option("--skip-invalid", is_flag=True, help="Run the valid points even if some are invalid.")
@click.option("--retry-failed", is_flag=True, help="Train failed and diverged points again from scratch.")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where points train (default: the file's).")
@click.option("-q", "--quiet", is_flag=True, help="No live table.")
def sweep_run(
    sweep_file: Path,
    out: Path | None,
    workers: int | None,
    threads: int | None,
    skip_invalid: bool,
    retry_failed: bool,
    executor: str | None,
    quiet: bool,
) -> None:
    """Check every point, then train those not finished; a re-run continues where the last one stopped."""
    import contextlib

    from rich.live import Live

    from dagcv.sweep.run import local_pool, open_sweep, run_sweep

    study, sdir = open_sweep(sweep_file, out)
    kind = executor or study.cfg.executor.type
    settings = {"workers": workers, "threads": threads, "retry_failed": retry_failed, "executor": kind}
    try:
        with contextlib.ExitStack() as stack:
            pool = None
            if kind == "local":  # started before the plan, which compiles in it: the driver never imports torch
                pool = stack.enter_context(local_pool(workers or study.cfg.executor.workers,
                                                      threads or study.cfg.executor.threads))  # fmt: skip
            study, sdir, planned = _plan_or_exit(sweep_file, out, workers, skip_invalid, pool=pool)
            title = f"{study.name}: {sdir.root}"
            if quiet or kind == "ray":  # Ray Tune reports progress itself
                states = run_sweep(study, sdir, planned, pool=pool, **settings)
            else:
                table = _points_table(study, sdir, planned, title)
                with Live(table, console=_console(), refresh_per_second=2) as live:
                    update = lambda: live.update(_points_table(study, sdir, planned, title))  # noqa: E731
                    states = run_sweep(study, sdir, planned, pool=pool, on_update=update, **settings)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: `dagcv sweep resume {sdir.root}` continues from the last checkpoints", err=True)
        sys.exit(130)
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    click.echo(f"{sdir.root}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    click.echo(f"report: dagcv sweep report {sdir.root}")
    if counts.get("failed") or counts.get("diverged"):
        sys.exit(1)


@sweep.command(name="resume")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--workers", type=click.IntRange(1, 64))
@click.option("--threads", type=click.IntRange(1, 256))
@click.option("--retry-failed", is_flag=True, help="Train failed and diverged points again from scratch.")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where points train (default: the file's).")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def sweep_resume(
    ctx: click.Context,
    target: Path,
    workers: int | None,
    threads: int | None,
    retry_failed: bool,
    executor: str | None,
    quiet: bool,
) -> None:
    """Continue an interrupted sweep (its directory or file): finished points are kept, interrupted ones resume."""
    ctx.invoke(
        sweep_run,
        sweep_file=target,
        out=None,
        workers=workers,
        threads=threads,
        skip_invalid=True,
        retry_failed=retry_failed,
        executor=executor,
        quiet=quiet,
    )


@sweep.command(name="status")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
def sweep_status(target: Path) -> None:
    """Each point's state (pending, running, interrupted, done, failed, diverged, invalid) and metric."""

    from dagcv.sweep.run import open_sweep, plan_sweep

    study, sdir = open_sweep(target)
    planned = plan_sweep(study, sdir)
    _console().print(_points_table(study, sdir, planned, f"{study.name}: {sdir.root}"))


@sweep.command(name="report")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--no-plots", is_flag=True)
def sweep_report(target: Path, no_plots: bool) -> None:
    """Tables per axis and for the whole study (mean ± std, 95% CI, paired difference to the baseline), as
    report.md and report.csv, plus plots; failed points are listed with their errors."""
    from dagcv.sweep.report import write_report
    from dagcv.sweep.run import open_sweep, plan_sweep

    study, sdir = open_sweep(target)
    planned = plan_sweep(study, sdir)
    written = write_report(study, sdir, planned, plots=not no_plots)
    click.echo((sdir.root / "report.md").read_text())
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _console():
    """A rich console; wide when the output is no terminal (logs, CI), so point names are not cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


if __name__ == "__main__":
    main()
