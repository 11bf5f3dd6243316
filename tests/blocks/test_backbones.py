"""Backbones and heads against their reference implementations, and loading weights from local files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from blocks.backbones import (
    LeNetFeatures,
    mobilenet_stage_indices,
    mobilenet_v3_large,
    mobilenet_v3_small,
    resnet18,
    resnet34,
    resnet50,
    resnet50_os8,
)
from blocks.heads import GlobalPoolHead, MLPHead
from tests.reference import TutorialNet, lenet_keys

LENET_KEYS = lenet_keys(head="head")


@pytest.mark.parametrize(("channels", "side", "flat_side"), [(3, 32, 5), (1, 28, 4)], ids=["cifar", "mnist"])
def test_lenet_matches_the_tutorial_net(channels: int, side: int, flat_side: int) -> None:
    torch.manual_seed(0)
    reference = TutorialNet(channels, 16 * flat_side**2)
    ours = nn.Sequential()
    ours.add_module("features", LeNetFeatures(in_channels=channels))
    ours.add_module("head", MLPHead(in_features=16 * flat_side**2, hidden=(120, 84), num_classes=10))
    mapped = {}
    for key, value in reference.state_dict().items():
        module, param = key.rsplit(".", 1)
        mapped[f"{LENET_KEYS[module]}.{param}"] = value
    ours.load_state_dict(mapped, strict=True)
    x = torch.randn(4, channels, side, side)
    assert (ours(x) - reference(x)).abs().max().item() == 0


def randomize_batchnorm_stats(model: nn.Module) -> None:
    # Fresh running stats are 0 and 1, which would hide a trunk that skipped or reordered a batch norm.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def test_resnet18_trunk_and_global_pool_head_match_torchvision() -> None:
    torch.manual_seed(0)
    reference = tvm.resnet18(weights=None, num_classes=10)
    randomize_batchnorm_stats(reference)
    state = reference.state_dict()
    trunk, head = resnet18(), GlobalPoolHead(in_channels=512, num_classes=10)
    trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    head.load_state_dict({k: v for k, v in state.items() if k.startswith("fc.")}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(head.eval()(trunk.eval()(x)["c5"]), reference.eval()(x))


# ---------------------------------------------------------------------------------------------------------------
# Weights from local files

TRUNKS = {
    "resnet18": (resnet18, tvm.resnet18),
    "resnet34": (resnet34, tvm.resnet34),
    "resnet50": (resnet50, tvm.resnet50),
    "mobilenet_v3_large": (mobilenet_v3_large, tvm.mobilenet_v3_large),
    "mobilenet_v3_small": (mobilenet_v3_small, tvm.mobilenet_v3_small),
}


def assert_same_state(a: nn.Module, b: dict[str, torch.Tensor]) -> None:
    state = a.state_dict()
    assert state.keys() == b.keys()
    assert all(torch.equal(state[k], b[k]) for k in state)


def test_trunk_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = resnet18()
    randomize_batchnorm_stats(saved)
    torch.save(saved.state_dict(), tmp_path / "trunk.pt")
    torch.manual_seed(1)
    assert_same_state(resnet18(weights=str(tmp_path / "trunk.pt")), saved.state_dict())


@pytest.mark.parametrize("name", TRUNKS)
def test_a_whole_torchvision_checkpoint_loads_strictly(tmp_path: Path, name: str) -> None:
    block, torchvision_builder = TRUNKS[name]
    torch.manual_seed(0)
    full = torchvision_builder(weights=None).state_dict()
    torch.save(full, tmp_path / f"{name}.pth")
    loaded = block(weights=str(tmp_path / f"{name}.pth"))
    head = "fc." if name.startswith("resnet") else "classifier."
    assert_same_state(loaded, {k: v for k, v in full.items() if not k.startswith(head)})


def test_a_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        resnet18(weights=str(path))


def test_weights_of_another_network_do_not_load(tmp_path: Path) -> None:
    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        resnet50(weights=str(tmp_path / "resnet18.pt"))


# ---------------------------------------------------------------------------------------------------------------
# Multi-scale stages, freezing and frozen batch norm, against torchvision's detection backbones

RESNET_STAGES = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}


@pytest.mark.parametrize(
    ("block", "builder"),
    [(resnet18, tvm.resnet18), (resnet50_os8, lambda **kw: tvm.resnet50(replace_stride_with_dilation=[0, 1, 1], **kw))],
    ids=["resnet18", "resnet50_os8"],
)
def test_resnet_stages_match_torchvisions_intermediate_layers(block, builder) -> None:
    torch.manual_seed(0)
    reference = builder(weights=None)
    randomize_batchnorm_stats(reference)
    trunk = block()
    trunk.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}, strict=True)
    body = IntermediateLayerGetter(reference, return_layers=RESNET_STAGES).eval()
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        got, want = trunk.eval()(x), body(x)
    assert list(got) == ["c2", "c3", "c4", "c5"] and set(want) == set(got)
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_mobilenet_stages_are_torchvisions_stage_boundaries() -> None:
    torch.manual_seed(0)
    reference = tvm.mobilenet_v3_large(weights=None)
    randomize_batchnorm_stats(reference)
    stages = mobilenet_stage_indices(reference.features)
    assert stages == [0, 2, 4, 7, 13, 16]
    trunk = mobilenet_v3_large()
    trunk.load_state_dict({"features." + k: v for k, v in reference.features.state_dict().items()}, strict=True)
    taps = {str(stages[1]): "c2", str(stages[2]): "c3", str(stages[3]): "c4", str(stages[-1]): "c5"}
    body = IntermediateLayerGetter(reference.features, return_layers=taps).eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        got, want = trunk.eval()(x), body(x)
    assert list(got) == ["c2", "c3", "c4", "c5"]
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert mobilenet_stage_indices(tvm.mobilenet_v3_small(weights=None).features) == [0, 1, 2, 4, 9, 12]


def trainable(module: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("layers", range(6))
def test_resnet_trainable_layers_follow_torchvision(layers: int) -> None:
    reference = _resnet_fpn_extractor(tvm.resnet18(weights=None), layers).body
    assert trainable(resnet18(trainable_layers=layers)) == trainable(reference)
    assert sum(trainable(reference).values()) > 0 if layers else not any(trainable(reference).values())


@pytest.mark.parametrize("layers", range(7))
def test_mobilenet_trainable_layers_follow_torchvision(layers: int) -> None:
    reference = _mobilenet_extractor(tvm.mobilenet_v3_small(weights=None), True, layers).body
    want = {f"features.{k}": v for k, v in trainable(reference).items()}
    got = trainable(mobilenet_v3_small(trainable_layers=layers))
    assert {k: v for k, v in got.items() if k in want} == want
    assert all(v == (layers == 6) for k, v in got.items() if k not in want)  # after the last tap: features[12]


def test_trainable_layers_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"trainable_layers must be in \[0, 5\], got 6"):
        resnet18(trainable_layers=6)
    with pytest.raises(ValueError, match=r"trainable_layers must be in \[0, 6\], got 7"):
        mobilenet_v3_small(trainable_layers=7)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_frozen_batch_norm_loads_a_torchvision_checkpoint(tmp_path: Path, name: str) -> None:
    block, torchvision_builder = TRUNKS[name]
    torch.manual_seed(0)
    reference = torchvision_builder(weights=None, norm_layer=FrozenBatchNorm2d)
    full = torchvision_builder(weights=None)
    randomize_batchnorm_stats(full)
    torch.save(full.state_dict(), tmp_path / "full.pth")
    trunk = block(weights=str(tmp_path / "full.pth"), norm_layer="frozen_batch_norm")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules()) == sum(
        isinstance(m, FrozenBatchNorm2d) for m in reference.modules()
    )
    # Train mode changes nothing: the statistics are fixed.
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    trunk.train()(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())
