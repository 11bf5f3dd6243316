"""The FPN necks against torchvision's detection backbones: same outputs, same keys, channels inferred."""

from __future__ import annotations

import doctest

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import blocks.necks
from blocks.backbones import mobilenet_v3_large, resnet18
from blocks.necks import FPN, FPNP3P7
from dagcv.compiler import compile_spec
from dagcv.spec.parse import parse_spec_text


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.necks, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def randomize_biases(model: nn.Module) -> None:
    # torchvision initialises FPN biases to 0, which would hide a lateral and output conv swapped.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)


def backbone_with_fpn(variant: str) -> nn.Module:
    torch.manual_seed(0)
    if variant == "fpn":
        model = _resnet_fpn_extractor(tvm.resnet18(weights=None), 5)
    else:  # retinanet_resnet50_fpn's layout on a ResNet-18: c3-c5, P6 from P5
        model = _resnet_fpn_extractor(tvm.resnet18(weights=None), 5, [2, 3, 4], LastLevelP6P7(256, 256))
    randomize_biases(model)
    return model.eval()


@pytest.mark.parametrize(
    ("variant", "neck", "keys"),
    [
        ("fpn", FPN(c2_channels=64, c3_channels=128, c4_channels=256, c5_channels=512), ["0", "1", "2", "3", "pool"]),
        ("fpn_p3p7", FPNP3P7(c3_channels=128, c4_channels=256, c5_channels=512), ["0", "1", "2", "p6", "p7"]),
    ],
    ids=["fpn", "fpn_p3p7"],
)
def test_neck_matches_torchvisions_backbone_with_fpn(variant: str, neck: nn.Module, keys: list[str]) -> None:
    reference = backbone_with_fpn(variant)
    state = reference.state_dict()
    trunk = resnet18().eval()
    trunk.load_state_dict({k[len("body.") :]: v for k, v in state.items() if k.startswith("body.")}, strict=True)
    # torchvision's backbone.fpn.* keys load into the neck by swapping the prefix.
    neck.load_state_dict({k[len("fpn.") :]: v for k, v in state.items() if k.startswith("fpn.")}, strict=True)
    x = torch.randn(2, 3, 67, 90)
    with torch.no_grad():
        stages = trunk(x)
        got = neck.eval()(**{k: v for k, v in stages.items() if k in neck.forward.__code__.co_varnames})
        want = reference(x)
    assert list(got) == list(want) == keys
    assert all(torch.equal(got[k], want[k]) for k in keys)
    heights = [v.shape[-2] for v in got.values()]  # cdiv(67, stride), then the extra levels
    assert heights == ([17, 9, 5, 3, 2] if variant == "fpn" else [9, 5, 3, 2, 1])


def test_fpn_p3p7_builds_p6_from_p5() -> None:
    neck = FPNP3P7(c3_channels=16, c4_channels=32, c5_channels=64, out_channels=8)
    assert neck.extra_blocks.use_P5
    assert neck.extra_blocks.p6.in_channels == neck.extra_blocks.p6.out_channels == 8


SPEC = """\
dagcv: 1
name: neck
inputs:
  image: Image[B, 3, H, W]
sizes: {H: 64, W: 96}
blocks:
  backbone: {type: BACKBONE, in: image}
  neck: {type: NECK, in: backbone, out_channels: 32}
outputs:
  features: neck
"""


@pytest.mark.parametrize(
    ("backbone", "neck", "channels"),
    [
        ("resnet18", "fpn", {"c2_channels": 64, "c3_channels": 128, "c4_channels": 256, "c5_channels": 512}),
        ("mobilenet_v3_large", "fpn_p3p7", {"c3_channels": 40, "c4_channels": 80, "c5_channels": 960}),
    ],
)
def test_in_backbone_wires_the_stages_by_name_and_infers_channels(backbone: str, neck: str, channels: dict) -> None:
    text = SPEC.replace("BACKBONE", backbone).replace("NECK", neck)
    compiled = compile_spec(parse_spec_text(text, "neck.yaml"))
    assert compiled.built.kwargs("neck") == {"out_channels": 32, **channels}
    out = compiled.module.eval()(image=torch.rand(1, 3, 64, 96))["features"]
    assert all(v.shape[1] == 32 for v in out.values())
    assert len(out) == 5


def test_mobilenet_stages_feed_an_fpn() -> None:
    trunk = mobilenet_v3_large().eval()
    neck = FPN(c2_channels=24, c3_channels=40, c4_channels=80, c5_channels=960, out_channels=16).eval()
    with torch.no_grad():
        out = neck(**trunk(torch.rand(1, 3, 33, 47)))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "0": (9, 12), "1": (5, 6), "2": (3, 3), "3": (2, 2), "pool": (1, 1)
    }  # fmt: skip
