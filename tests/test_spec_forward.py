"""Every shipped spec runs forward in both modes on example inputs made from its own declared types: in training
it returns every Loss output as a finite scalar, in evaluation every eval output (detections, logits).

Full-size specs (ResNet-50 detectors at 800 pixels, 512-pixel segmenters) are shape-checked at their own sizes by
``dagcv compile`` (meta tensors; ``tests/test_cli.py`` compiles every shipped spec), and run here on real tensors
at small example sizes through ``--set``: the same graph and blocks, a hundredth of the arithmetic."""

from __future__ import annotations

import pytest
import torch

from dagcv.compiler import compile_spec
from dagcv.lower import export_example_inputs, make_program
from dagcv.spec import load_spec
from tests.conftest import SPECS

# Full-size detectors and segmenters take seconds per forward on two cores: they run at small sizes.
RCNN_SMALL = ["sizes.H=48", "sizes.W=64", "blocks.transform.min_size=64", "blocks.transform.max_size=96"]
SEGMENTER_SMALL = ["sizes.H=64", "sizes.W=64"]
SMALL = {
    **{name: RCNN_SMALL for name in ("retinanet_r50_fpn", "fasterrcnn_r50_fpn", "maskrcnn_r50_fpn", "fcos_r50_fpn")},
    **{name: SEGMENTER_SMALL for name in ("fcn_r50", "deeplabv3_r50", "deeplabv3plus_r50", "unet")},
}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_shipped_spec_runs_forward_in_train_and_eval_mode(path) -> None:
    torch.manual_seed(0)
    compiled = compile_spec(load_spec(path, SMALL.get(path.stem)))
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
