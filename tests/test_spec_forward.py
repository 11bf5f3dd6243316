"""Every shipped spec runs forward in both modes on example inputs made from its own declared types: in training
it returns every Loss output as a finite scalar, in evaluation every eval output (detections, logits)."""

from __future__ import annotations

import pytest
import torch

from dagcv.compiler import compile_file
from dagcv.lower import export_example_inputs, make_program
from tests.conftest import SPECS

# Full-size detectors and segmenters (800-pixel ResNet-50 inputs) take seconds per forward on two cores.
LARGE = ("_r50",)


def params(path):
    marks = [pytest.mark.slow] if any(tag in path.stem for tag in LARGE) else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [params(p) for p in SPECS])
def test_shipped_spec_runs_forward_in_train_and_eval_mode(path) -> None:
    torch.manual_seed(0)
    compiled = compile_file(path)
    model, sg = compiled.module, compiled.built.sg
    for mode in ("train", "eval"):
        model.train(mode == "train")
        program = make_program(sg, mode)
        names = [a.name for a in program.inputs]
        with torch.no_grad():
            out = model(**dict(zip(names, export_example_inputs(compiled.built, mode), strict=True)))
        assert set(out) == set(program.outputs), f"{path.stem} ({mode})"
        for name, value in out.items():
            node, port = sg.outputs[name]
            kind = sg.out_type(node, port).kind
            if kind == "Loss":
                assert value.dim() == 0 and torch.isfinite(value), f"{path.stem}: loss {name} = {value}"
            if kind == "Detections":
                assert isinstance(value, list) and all({"boxes", "scores", "labels"} <= set(d) for d in value)
