"""The examples in the block docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

FAMILY_MODULES = ["blocks.layers", "blocks.backbones", "blocks.heads", "blocks.losses", "blocks.rl",
                  "blocks.generative", "blocks.necks", "blocks.segmentation", "blocks.detection.transform",
                  "blocks.detection.anchors", "blocks.detection.retinanet", "blocks.detection.rpn",
                  "blocks.detection.roi_heads", "blocks.detection.fcos", "blocks.detection.ssd",
                  "blocks.detection.yolo", "blocks.detection.detr", "blocks.detection.postprocess",
                  "blocks.adversarial", "blocks.gan", "blocks.vae", "blocks.quantizers", "blocks.priors",
                  "blocks.diffusion", "blocks.denoisers"]  # fmt: skip


@pytest.mark.parametrize("name", FAMILY_MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
