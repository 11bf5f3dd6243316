"""The compile driver: the passes, in order. Static checking never imports torch.

>>> sg = check_file("specs/lenet_mnist.yaml")                 # doctest: +SKIP
>>> model = build_and_lower(sg).module                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dagcv import check, graph
from dagcv.errors import SpecError
from dagcv.registry import Registry, registry
from dagcv.spec import Spec, load_spec
from dagcv.train.plan import check_training

Pass = Callable[[graph.SpecGraph], None]

STATIC_PASSES: list[Pass] = [
    graph.add_inputs,
    graph.resolve_blocks,
    graph.refine_ports,
    graph.connect,
    graph.check_outputs,
    graph.check_argument_names,
    graph.check_acyclic,
    graph.check_modes,
    check.check_kinds,
    check.input_shapes,
    check.infer_shapes,
    check.check_shared,
    check.check_class_conditioning,
    check.check_resources,
    check.check_checkpoints,
    check_training,
]


def analyze(spec: Spec, reg: Registry | None = None) -> graph.SpecGraph:
    """Run every static pass and return the graph with its diagnostics, valid or not (for rendering)."""
    sg = graph.SpecGraph(spec, reg or registry())
    for run in STATIC_PASSES:
        run(sg)
    return sg


def check_spec(spec: Spec, reg: Registry | None = None) -> graph.SpecGraph:
    """Run every static pass; raises :class:`SpecError` holding all independent problems found."""
    sg = analyze(spec, reg)
    if sg.diagnostics:
        located = sorted(sg.diagnostics, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))
        raise SpecError(located, {spec.source.file: spec.source.text, **spec._overrides})
    return sg


def check_file(path: str | Path, reg: Registry | None = None, overrides: list[str] | None = None) -> graph.SpecGraph:
    """Parse and statically check a spec file (with ``--set`` overrides applied)."""
    return check_spec(load_spec(path, overrides), reg)


class Compiled:
    """A compiled spec: the built graph, the lowered module and the files `dagcv compile` writes."""

    def __init__(self, built, module) -> None:
        self.built = built
        self.module = module

    def files(self, source_name: str | None = None) -> dict[str, str]:
        from dagcv.eject import eject
        from dagcv.report import resolved_spec, summary_markdown

        model_py = eject(self.built, source_name)
        compile(model_py, "model.py", "exec")  # the ejected file must at least be valid Python
        return {"spec.resolved.yaml": resolved_spec(self.built), "model.py": model_py,
                "summary.md": summary_markdown(self.built)}  # fmt: skip

    def graph_svg(self) -> bytes | None:
        """The rendered graph (None when Graphviz's `dot` is not installed)."""
        from dagcv.render import RenderError, render_bytes, render_spec

        try:
            return render_bytes(render_spec(self.built.sg), "svg")
        except RenderError:
            return None


def compile_spec(spec: Spec, reg: Registry | None = None) -> Compiled:
    """Check, build and lower a spec (imports torch and the blocks it uses)."""
    try:
        sg = check_spec(spec, reg)
    except SpecError as exc:
        exc.sources.setdefault(spec.source.file, spec.source.text)
        raise
    return compile_checked(sg)


def compile_checked(sg: graph.SpecGraph) -> Compiled:
    """Build and lower a graph that passed ``check_spec``."""
    from dagcv.build import build
    from dagcv.lower import lower

    try:
        built = build(sg)
    except SpecError as exc:
        exc.sources.setdefault(sg.spec.source.file, sg.spec.source.text)
        raise
    return Compiled(built, lower(built))


def compile_file(path: str | Path, reg: Registry | None = None, overrides: list[str] | None = None) -> Compiled:
    return compile_spec(load_spec(path, overrides), reg)
