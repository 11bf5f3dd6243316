"""Backbones: image in, feature maps out (the named stages ``c2``-``c5``, strides 4 to 32).

The torchvision trunks keep torchvision's submodule names, so a torchvision checkpoint loads into them strictly
once its classifier keys are set aside. Weights come only from local files; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from annotated_types import Ge, Le
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from dagcv.registry import Size, register_block


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

    def __init__(self, *, in_channels: Size = 3) -> None:
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
# Freezing and normalisation, as torchvision's detection backbones do it

NormLayer = Literal["batch_norm", "frozen_batch_norm"]
ResNetLayers = Annotated[int, Ge(0), Le(5)]  # conv1 and layer1-layer4
MobileNetLayers = Annotated[int, Ge(0), Le(6)]  # its six stages


def freeze_resnet_layers(trunk: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` stages, counting ``layer4``, ``layer3``, ... ``conv1``.

    torchvision's ``_resnet_fpn_extractor`` rule: 0 freezes everything, 5 trains everything (``bn1`` included).
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in trunk.named_parameters():
        if not name.startswith(tuple(layers_to_train)):
            parameter.requires_grad_(False)


def mobilenet_stage_indices(features: nn.Sequential) -> list[int]:
    """torchvision's MobileNet stage boundaries: the stem, every block that halves the size, and the last layer."""
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    return [0, *strided, len(features) - 1]


def freeze_mobilenet_layers(features: nn.Sequential, trainable_layers: int) -> None:
    """Freeze ``features`` before the last ``trainable_layers`` stages (torchvision's ``_mobilenet_extractor`` rule).

    A MobileNetV3 has 6 stages (see :func:`mobilenet_stage_indices`): 0 freezes everything, 6 trains everything.
    """
    stages = mobilenet_stage_indices(features)
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(f"trainable_layers must be in [0, {len(stages)}], got {trainable_layers}")
    freeze_before = len(features) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
    for block in features[:freeze_before]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)


def _norm_kwargs(norm_layer: NormLayer) -> dict[str, Any]:
    """Builder keyword arguments for ``norm_layer``; ``batch_norm`` keeps the network's own batch norm."""
    if norm_layer == "frozen_batch_norm":
        return {"norm_layer": FrozenBatchNorm2d}
    if norm_layer != "batch_norm":
        raise ValueError(f"norm_layer must be 'batch_norm' or 'frozen_batch_norm', got {norm_layer!r}")
    return {}


# ---------------------------------------------------------------------------------------------------------------
# ResNet


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier: stem, then ``layer1`` to ``layer4``.

    Returns the output of every stage as ``{"c2": ..., "c5": ...}`` (strides 4, 8, 16, 32; with dilation, the
    dilated stages keep the stride of the stage before). Built from a torchvision ``ResNet``, whose submodules it
    adopts under the same names; the registered builders (``resnet18``, ``resnet34``, ``resnet50``,
    ``resnet50_os8``) are the way to make one.
    """

    def __init__(self, net: tvm.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        c2 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return {"c2": c2, "c3": c3, "c4": c4, "c5": self.layer4(c4)}


def _resnet(
    name: str,
    builder: Callable[..., tvm.ResNet],
    weights: str | None,
    trainable_layers: int,
    norm_layer: NormLayer,
    in_channels: int = 3,
    **kwargs: Any,
) -> ResNetTrunk:
    net = builder(weights=None, **_norm_kwargs(norm_layer), **kwargs)
    if in_channels != 3:  # grayscale or multispectral input: a stem conv of the same shape over other channels
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    trunk = ResNetTrunk(net)
    if weights is not None:
        load_weights_file(trunk, weights, block=name, classifier_prefix="fc.")
    freeze_resnet_layers(trunk, trainable_layers)
    return trunk


_RESNET: dict[str, Any] = {
    "family": "backbone",
    "inputs": {"x": "Image[B, C, H, W]"},
    "infer": {"in_channels": "C"},
    "checkpoints": ("weights",),
}
_MOBILENET: dict[str, Any] = {"family": "backbone", "inputs": {"x": "Image[B, 3, H, W]"}, "checkpoints": ("weights",)}


def _stages(channels: tuple[int, int, int, int], strides: tuple[int, int, int, int]) -> dict[str, str]:
    return {
        f"c{level}": f"FeatureMap[B, {c}, cdiv(H, {s}), cdiv(W, {s})]"
        for level, c, s in zip((2, 3, 4, 5), channels, strides, strict=True)
    }


_STRIDES = (4, 8, 16, 32)


@register_block(
    "resnet18",
    **_RESNET,
    outputs=_stages((64, 128, 256, 512), _STRIDES),
    param_count="11176512 + 3136 * (in_channels - 3)",
)
def resnet18(
    *,
    in_channels: Size = 3,
    weights: str | None = None,
    trainable_layers: ResNetLayers = 5,
    norm_layer: NormLayer = "batch_norm",
) -> ResNetTrunk:
    """ResNet-18 trunk (torchvision layout): stages ``c2``-``c5`` with 64/128/256/512 channels, strides 4-32.

    Args:
        in_channels: channels of the input image (inferred from ``C``); other than 3, ``conv1`` is a fresh
            7×7 conv over them, and a checkpoint's ``conv1`` no longer fits.
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet18`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.
        trainable_layers: how many stages train, counted from ``layer4`` down (torchvision's detection
            backbones): 0 freezes the whole trunk, 5 trains all of it, ``conv1`` and ``bn1`` included.
        norm_layer: ``batch_norm`` (trainable statistics), or ``frozen_batch_norm`` (torchvision's
            ``FrozenBatchNorm2d``: fixed statistics and affine, as used with pretrained detection backbones).

    Example:
        >>> {k: tuple(v.shape) for k, v in resnet18()(torch.zeros(1, 3, 65, 64)).items()}
        {'c2': (1, 64, 17, 16), 'c3': (1, 128, 9, 8), 'c4': (1, 256, 5, 4), 'c5': (1, 512, 3, 2)}
    """
    return _resnet("resnet18", tvm.resnet18, weights, trainable_layers, norm_layer, in_channels)


@register_block(
    "resnet34",
    **_RESNET,
    outputs=_stages((64, 128, 256, 512), _STRIDES),
    param_count="21284672 + 3136 * (in_channels - 3)",
)
def resnet34(
    *,
    in_channels: Size = 3,
    weights: str | None = None,
    trainable_layers: ResNetLayers = 5,
    norm_layer: NormLayer = "batch_norm",
) -> ResNetTrunk:
    """ResNet-34 trunk (torchvision layout): stages ``c2``-``c5`` with 64/128/256/512 channels, strides 4-32.

    Args:
        in_channels: channels of the input image (inferred from ``C``); other than 3, ``conv1`` is a fresh
            7×7 conv over them, and a checkpoint's ``conv1`` no longer fits.
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet34`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.
        trainable_layers: how many stages train, counted from ``layer4`` down (torchvision's detection
            backbones): 0 freezes the whole trunk, 5 trains all of it, ``conv1`` and ``bn1`` included.
        norm_layer: ``batch_norm`` (trainable statistics), or ``frozen_batch_norm`` (torchvision's
            ``FrozenBatchNorm2d``: fixed statistics and affine, as used with pretrained detection backbones).
    """
    return _resnet("resnet34", tvm.resnet34, weights, trainable_layers, norm_layer, in_channels)


@register_block(
    "resnet50",
    **_RESNET,
    outputs=_stages((256, 512, 1024, 2048), _STRIDES),
    param_count="23508032 + 3136 * (in_channels - 3)",
)
def resnet50(
    *,
    in_channels: Size = 3,
    weights: str | None = None,
    trainable_layers: ResNetLayers = 5,
    norm_layer: NormLayer = "batch_norm",
) -> ResNetTrunk:
    """ResNet-50 trunk (torchvision layout, bottleneck blocks): stages ``c2``-``c5``, 256-2048 channels, strides 4-32.

    The defaults build exactly the trunk of torchvision's ``retinanet_resnet50_fpn(weights=None,
    weights_backbone=None)`` (batch norm, every layer trainable).

    Args:
        in_channels: channels of the input image (inferred from ``C``); other than 3, ``conv1`` is a fresh
            7×7 conv over them, and a checkpoint's ``conv1`` no longer fits.
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet50`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.
        trainable_layers: how many stages train, counted from ``layer4`` down (torchvision's detection
            backbones): 0 freezes the whole trunk, 5 trains all of it, ``conv1`` and ``bn1`` included.
        norm_layer: ``batch_norm`` (trainable statistics), or ``frozen_batch_norm`` (torchvision's
            ``FrozenBatchNorm2d``: fixed statistics and affine, as used with pretrained detection backbones).
    """
    return _resnet("resnet50", tvm.resnet50, weights, trainable_layers, norm_layer, in_channels)


@register_block(
    "resnet50_os8",
    **_RESNET,
    outputs=_stages((256, 512, 1024, 2048), (4, 8, 8, 8)),
    param_count="23508032 + 3136 * (in_channels - 3)",
)
def resnet50_os8(
    *,
    in_channels: Size = 3,
    weights: str | None = None,
    trainable_layers: ResNetLayers = 5,
    norm_layer: NormLayer = "batch_norm",
) -> ResNetTrunk:
    """ResNet-50 trunk with output stride 8: ``layer3`` and ``layer4`` dilated instead of strided (FCN, DeepLabV3).

    torchvision's ``resnet50(replace_stride_with_dilation=[False, True, True])``: ``c4`` and ``c5`` stay at stride 8.
    The weights are those of a plain ResNet-50 (dilation changes no parameter).

    Args:
        in_channels: channels of the input image (inferred from ``C``); other than 3, ``conv1`` is a fresh
            7×7 conv over them, and a checkpoint's ``conv1`` no longer fits.
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``resnet50`` (its
            ``fc.*`` keys are set aside); ``None`` keeps the random initialisation.
        trainable_layers: how many stages train, counted from ``layer4`` down (torchvision's detection
            backbones): 0 freezes the whole trunk, 5 trains all of it, ``conv1`` and ``bn1`` included.
        norm_layer: ``batch_norm`` (trainable statistics), or ``frozen_batch_norm`` (torchvision's
            ``FrozenBatchNorm2d``: fixed statistics and affine, as used with pretrained backbones).

    Example:
        >>> {k: tuple(v.shape[1:]) for k, v in resnet50_os8()(torch.zeros(1, 3, 33, 32)).items()}
        {'c2': (256, 9, 8), 'c3': (512, 5, 4), 'c4': (1024, 5, 4), 'c5': (2048, 5, 4)}
    """
    return _resnet(
        "resnet50_os8",
        tvm.resnet50,
        weights,
        trainable_layers,
        norm_layer,
        in_channels,
        replace_stride_with_dilation=[False, True, True],
    )


# ---------------------------------------------------------------------------------------------------------------
# MobileNetV3


class MobileNetV3Trunk(nn.Module):
    """A torchvision MobileNetV3 without its pooling and classifier: only ``features``, under the same name.

    Returns ``{"c2": ..., "c5": ...}``: ``c2``-``c4`` are the outputs of the blocks that bring the stride to 4, 8
    and 16 (torchvision's stage boundaries, the layers its detection and segmentation extractors tap), ``c5`` is
    the last layer (stride 32). Every stride-2 layer pads by half its kernel, so each halves a size rounding up:
    stage ``ck`` is ``cdiv(H, 2**k)`` for any input size. Made by the registered builders ``mobilenet_v3_large``
    and ``mobilenet_v3_small``.
    """

    def __init__(self, net: tvm.MobileNetV3) -> None:
        super().__init__()
        self.features = net.features
        stages = mobilenet_stage_indices(self.features)  # [stem, stride 4, 8, 16, 32 blocks, last layer]
        self._taps = {stages[1]: "c2", stages[2]: "c3", stages[3]: "c4", stages[-1]: "c5"}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                out[self._taps[index]] = x
        return out


def _mobilenet(
    name: str,
    builder: Callable[..., tvm.MobileNetV3],
    weights: str | None,
    trainable_layers: int,
    norm_layer: NormLayer,
) -> MobileNetV3Trunk:
    trunk = MobileNetV3Trunk(builder(weights=None, **_norm_kwargs(norm_layer)))
    if weights is not None:
        load_weights_file(trunk, weights, block=name, classifier_prefix="classifier.")
    freeze_mobilenet_layers(trunk.features, trainable_layers)
    return trunk


@register_block(
    "mobilenet_v3_large",
    **_MOBILENET,
    param_count="2971952",
    outputs=_stages((24, 40, 80, 960), _STRIDES),
)
def mobilenet_v3_large(
    *, weights: str | None = None, trainable_layers: MobileNetLayers = 6, norm_layer: NormLayer = "batch_norm"
) -> MobileNetV3Trunk:
    """MobileNetV3-Large trunk (torchvision ``features``): ``c2``-``c5`` with 24/40/80/960 channels, strides 4-32.

    ``c2``, ``c3``, ``c4`` are ``features[2]``, ``features[4]``, ``features[7]`` (the stride-2 blocks), ``c5`` is
    ``features[16]``.

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``mobilenet_v3_large`` (its
            ``classifier.*`` keys are set aside); ``None`` keeps the random initialisation.
        trainable_layers: how many of the 6 stages train, counted from the last (torchvision's
            ``_mobilenet_extractor``): 0 freezes the whole trunk, 6 trains all of it.
        norm_layer: ``batch_norm`` (MobileNetV3's own, eps 0.001), or ``frozen_batch_norm`` (torchvision's
            ``FrozenBatchNorm2d``, as its detection models use with pretrained backbones).

    Example:
        >>> {k: tuple(v.shape[1:]) for k, v in mobilenet_v3_large()(torch.zeros(1, 3, 33, 47)).items()}
        {'c2': (24, 9, 12), 'c3': (40, 5, 6), 'c4': (80, 3, 3), 'c5': (960, 2, 2)}
    """
    return _mobilenet("mobilenet_v3_large", tvm.mobilenet_v3_large, weights, trainable_layers, norm_layer)


@register_block(
    "mobilenet_v3_small",
    **_MOBILENET,
    param_count="927008",
    outputs=_stages((16, 24, 40, 576), _STRIDES),
)
def mobilenet_v3_small(
    *, weights: str | None = None, trainable_layers: MobileNetLayers = 6, norm_layer: NormLayer = "batch_norm"
) -> MobileNetV3Trunk:
    """MobileNetV3-Small trunk (torchvision ``features``): ``c2``-``c5`` with 16/24/40/576 channels, strides 4-32.

    ``c2``, ``c3``, ``c4`` are ``features[1]``, ``features[2]``, ``features[4]`` (the stride-2 blocks), ``c5`` is
    ``features[12]``.

    Args:
        weights: path of a local state_dict file: the trunk's own, or a whole torchvision ``mobilenet_v3_small`` (its
            ``classifier.*`` keys are set aside); ``None`` keeps the random initialisation.
        trainable_layers: how many of the 6 stages train, counted from the last (torchvision's
            ``_mobilenet_extractor``): 0 freezes the whole trunk, 6 trains all of it.
        norm_layer: ``batch_norm`` (MobileNetV3's own, eps 0.001), or ``frozen_batch_norm`` (torchvision's
            ``FrozenBatchNorm2d``, as its detection models use with pretrained backbones).
    """
    return _mobilenet("mobilenet_v3_small", tvm.mobilenet_v3_small, weights, trainable_layers, norm_layer)


# ---------------------------------------------------------------------------------------------------------------
# A small trunk that trains from scratch on a CPU


@register_block(
    "tiny_convnet",
    family="backbone",
    inputs={"x": "Image[B, C, H, W]"},
    outputs={
        f"c{level}": f"FeatureMap[B, {mult}*width, cdiv(H, {stride}), cdiv(W, {stride})]"
        for level, mult, stride in ((2, 1, 4), (3, 2, 8), (4, 4, 16), (5, 8, 32))
    },
    infer={"in_channels": "C"},
    requires={"width >= 2": "the stem has width // 2 channels"},
    param_count="1150 * width * width",
)
class TinyConvNet(nn.Module):
    """A plain conv-BN-ReLU trunk with the named stages of the big ones, small enough to train on a CPU in minutes.

    A stride-2 stem, then four stages, each a stride-2 3×3 conv and a 3×3 conv: ``c2`` to ``c5`` at strides 4 to
    32 with ``width``, ``2·width``, ``4·width`` and ``8·width`` channels. It stands in for ``resnet18`` in the
    small shapes specs (a ResNet-18 at 64×64 pixels spends most of a CPU training step in its trunk).

    Args:
        in_channels: channels of the input image (inferred from ``C``).
        width: channels of ``c2``; each later stage doubles them.

    Example:
        >>> out = TinyConvNet(width=8)(torch.zeros(1, 3, 64, 48))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'c2': (1, 8, 16, 12), 'c3': (1, 16, 8, 6), 'c4': (1, 32, 4, 3), 'c5': (1, 64, 2, 2)}
    """

    def __init__(self, *, in_channels: Size = 3, width: Size = 32) -> None:
        super().__init__()
        from torchvision.ops.misc import Conv2dNormActivation

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(Conv2dNormActivation(cin, cout, 3, stride=2), Conv2dNormActivation(cout, cout, 3))

        self.stem = Conv2dNormActivation(in_channels, width // 2, 3, stride=2)
        widths = [width // 2, width, 2 * width, 4 * width, 8 * width]
        self.stages = nn.ModuleList(stage(a, b) for a, b in pairwise(widths))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out, x = {}, self.stem(x)
        for level, stage in zip((2, 3, 4, 5), self.stages, strict=True):
            x = stage(x)
            out[f"c{level}"] = x
        return out
