"""Backbones: image in, feature map out.

The torchvision trunks keep torchvision's submodule names, so a torchvision checkpoint loads into them strictly
once its classifier keys are set aside. Weights come only from local files; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn

from dagcv.registry import register_block


@register_block(
    "lenet_features",
    family="backbone",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={"out": "FeatureMap[B, 16, ((H-4)//2-4)//2, ((W-4)//2-4)//2]"},
    infer={"in_channels": "C"},
)
class LeNetFeatures(nn.Module):
    """The convolutional half of the classic CIFAR-10 tutorial LeNet: two 5×5 convs, each with ReLU and 2×2 max-pool.

    Pair it with ``mlp_head(hidden=[120, 84])`` for the whole tutorial network.

    Args:
        in_channels: channels of the input image (inferred from ``C``).

    Example:
        >>> LeNetFeatures(in_channels=3)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 16, 5, 5])
    """

    def __init__(self, *, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.max_pool2d(F.relu(self.conv2(x)), 2)


# ---------------------------------------------------------------------------------------------------------------
# Loading local weights


def load_weights_file(module: nn.Module, path: str, *, block: str, classifier_prefix: str) -> None:
    """Load a state_dict saved with ``torch.save`` at ``path`` into ``module``, strictly.

    The file may hold the trunk's own state_dict or a whole torchvision classifier's: keys under
    ``classifier_prefix`` (the head this trunk leaves out) are set aside, and every other key must match exactly.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{block}: weights file not found: {file} (weights must be a local state_dict file)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{block}: {file} holds a {type(state).__name__}, expected a state_dict (a dict of tensors)")
    trunk_state = {k: v for k, v in state.items() if not k.startswith(classifier_prefix)}
    module.load_state_dict(trunk_state, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# ResNet


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier: stem, then ``layer1`` to ``layer4``.

    Built from a torchvision ``ResNet``, whose submodules it adopts under the same names; the registered
    builders (``resnet18``, ``resnet34``, ``resnet50``) are the way to make one.
    """

    def __init__(self, net: tvm.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _resnet(name: str, builder: Callable[..., tvm.ResNet], weights: str | None) -> ResNetTrunk:
    trunk = ResNetTrunk(builder(weights=None))
    if weights is not None:
        load_weights_file(trunk, weights, block=name, classifier_prefix="fc.")
    return trunk


_RESNET_IN = {"x": "Image[B, 3, H, W]"}


@register_block(
    "resnet18", family="backbone", inputs=_RESNET_IN, outputs={"out": "FeatureMap[B, 512, cdiv(H, 32), cdiv(W, 32)]"}
)
def resnet18(*, weights: str | None = None) -> ResNetTrunk:
    """ResNet-18 trunk (torchvision layout, stride 32, 512 channels).

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet18`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.

    Example:
        >>> resnet18()(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 512, 2, 2])
    """
    return _resnet("resnet18", tvm.resnet18, weights)


@register_block(
    "resnet34", family="backbone", inputs=_RESNET_IN, outputs={"out": "FeatureMap[B, 512, cdiv(H, 32), cdiv(W, 32)]"}
)
def resnet34(*, weights: str | None = None) -> ResNetTrunk:
    """ResNet-34 trunk (torchvision layout, stride 32, 512 channels).

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet34`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.
    """
    return _resnet("resnet34", tvm.resnet34, weights)


@register_block(
    "resnet50", family="backbone", inputs=_RESNET_IN, outputs={"out": "FeatureMap[B, 2048, cdiv(H, 32), cdiv(W, 32)]"}
)
def resnet50(*, weights: str | None = None) -> ResNetTrunk:
    """ResNet-50 trunk (torchvision layout, bottleneck blocks, stride 32, 2048 channels).

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet50`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.
    """
    return _resnet("resnet50", tvm.resnet50, weights)


# ---------------------------------------------------------------------------------------------------------------
# MobileNetV3


class MobileNetV3Trunk(nn.Module):
    """A torchvision MobileNetV3 without its pooling and classifier: only ``features``, under the same name.

    Every stride-2 layer pads by half its kernel, so each halves a size rounding up: the output is
    ``cdiv(H, 32)`` for any input size. Made by the registered builders ``mobilenet_v3_large`` and
    ``mobilenet_v3_small``.
    """

    def __init__(self, net: tvm.MobileNetV3) -> None:
        super().__init__()
        self.features = net.features

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def _mobilenet(name: str, builder: Callable[..., tvm.MobileNetV3], weights: str | None) -> MobileNetV3Trunk:
    trunk = MobileNetV3Trunk(builder(weights=None))
    if weights is not None:
        load_weights_file(trunk, weights, block=name, classifier_prefix="classifier.")
    return trunk


@register_block(
    "mobilenet_v3_large",
    family="backbone",
    inputs={"x": "Image[B, 3, H, W]"},
    outputs={"out": "FeatureMap[B, 960, cdiv(H, 32), cdiv(W, 32)]"},
)
def mobilenet_v3_large(*, weights: str | None = None) -> MobileNetV3Trunk:
    """MobileNetV3-Large trunk (torchvision ``features``, stride 32, 960 channels).

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``mobilenet_v3_large`` (its
            ``classifier.*`` keys are set aside); ``None`` keeps the random initialisation.

    Example:
        >>> mobilenet_v3_large()(torch.zeros(1, 3, 33, 47)).shape
        torch.Size([1, 960, 2, 2])
    """
    return _mobilenet("mobilenet_v3_large", tvm.mobilenet_v3_large, weights)


@register_block(
    "mobilenet_v3_small",
    family="backbone",
    inputs={"x": "Image[B, 3, H, W]"},
    outputs={"out": "FeatureMap[B, 576, cdiv(H, 32), cdiv(W, 32)]"},
)
def mobilenet_v3_small(*, weights: str | None = None) -> MobileNetV3Trunk:
    """MobileNetV3-Small trunk (torchvision ``features``, stride 32, 576 channels).

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``mobilenet_v3_small`` (its
            ``classifier.*`` keys are set aside); ``None`` keeps the random initialisation.
    """
    return _mobilenet("mobilenet_v3_small", tvm.mobilenet_v3_small, weights)
