"""Backbones and heads against their reference implementations, and loading weights from local files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from blocks.backbones import LeNetFeatures, mobilenet_v3_large, mobilenet_v3_small, resnet18, resnet34, resnet50
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
        assert torch.equal(head.eval()(trunk.eval()(x)), reference.eval()(x))


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
