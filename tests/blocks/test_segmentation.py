"""Segmentation blocks: parity of the spec-built FCN and DeepLabV3 with torchvision's, decoder and U-Net shapes,
and a U-Net that learns the synthetic shapes."""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tvseg
from torch import nn

import blocks.segmentation
from blocks.segmentation import (
    ASPP,
    DeepLabV3Head,
    DeepLabV3PlusDecoder,
    FCNHead,
    UNetDecoder,
    UNetEncoder,
    Upsample,
)
from blocks.shapes import ShapesSegmentation
from dagcv.compiler import compile_spec
from dagcv.spec import load_spec
from tests.conftest import ROOT
from tests.parity import max_diff

SMALL = ["sizes.H=64", "sizes.W=64"]


def compile_small(name: str, overrides: list[str] = ()) -> Any:
    return compile_spec(load_spec(ROOT / "specs" / f"{name}.yaml", [*SMALL, *overrides]))


# ---------------------------------------------------------------------------------------------------------------
# Parity with torchvision's fcn_resnet50 and deeplabv3_resnet50

# torchvision key prefix -> spec key prefix. The backbone keeps torchvision's names; the head is the spec's node.
KEY_MAP = {"backbone.": "backbone.", "classifier.": "head."}
PARITY = {"fcn_r50": tvseg.fcn_resnet50, "deeplabv3_r50": tvseg.deeplabv3_resnet50}


def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        prefix = next(p for p in KEY_MAP if key.startswith(p))
        out[KEY_MAP[prefix] + key[len(prefix) :]] = value
    return out


@pytest.mark.parametrize("spec", sorted(PARITY))
def test_spec_matches_torchvision(spec: str) -> None:
    torch.manual_seed(0)
    reference = PARITY[spec](weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    compiled = compile_small(spec)
    model = compiled.module
    model.load_state_dict(renamed(reference.state_dict()), strict=True)

    torch.manual_seed(1)
    image = torch.randn(2, 3, 64, 64)
    mask = torch.randint(0, 21, (2, 64, 64))
    mask[:, :4] = 255  # void pixels: ignored by both losses

    model.eval(), reference.eval()
    with torch.no_grad():
        got, want = model(image=image)["logits"], reference(image)["out"]
    assert got.shape == (2, 21, 64, 64)
    eval_diff = max_diff(got, want)

    model.train(), reference.train()
    torch.manual_seed(2)  # the same dropout masks in both
    out = model(image=image, mask=mask)
    out["loss"].backward()
    torch.manual_seed(2)
    ref_logits = reference(image)["out"]
    ref_loss = F.cross_entropy(ref_logits, mask, ignore_index=255)
    ref_loss.backward()
    ref_grads = renamed({k: p.grad for k, p in reference.named_parameters()})
    grads = dict(model.named_parameters())
    assert set(ref_grads) == set(grads)
    grad_diff = max(max_diff(grads[k].grad, g) for k, g in ref_grads.items())
    train_diff = max_diff(out["logits"], ref_logits)
    loss_diff = abs(out["loss"].item() - ref_loss.item())
    print(f"{spec}: eval logits {eval_diff:.3g}, train logits {train_diff:.3g}, loss {loss_diff:.3g}, "
          f"grads {grad_diff:.3g}")  # fmt: skip
    assert eval_diff == 0 and train_diff == 0 and loss_diff == 0 and grad_diff == 0
    # Batch statistics moved the same way.
    torch.testing.assert_close(model.state_dict(), renamed(reference.state_dict()), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Heads and decoders


def test_heads_keep_torchvision_submodule_names() -> None:
    fcn = FCNHead(in_channels=64, num_classes=5)
    assert list(fcn.state_dict()) == list(tvseg.fcn.FCNHead(64, 5).state_dict())
    deeplab = DeepLabV3Head(in_channels=64, num_classes=5, atrous_rates=(6, 12, 18))
    assert list(deeplab.state_dict()) == list(tvseg.deeplabv3.DeepLabHead(64, 5, (6, 12, 18)).state_dict())
    assert len(deeplab[0].convs) == 5  # 1×1, three rates, image pooling


def test_deeplabv3plus_decoder_predicts_at_the_low_level_size() -> None:
    torch.manual_seed(0)
    aspp = ASPP(in_channels=32, atrous_rates=(1, 2, 3), out_channels=16).eval()
    decoder = DeepLabV3PlusDecoder(in_channels=16, low_level_in_channels=8, num_classes=4, channels=12).eval()
    assert decoder.project[0].out_channels == 48 and decoder.fuse[0][0].in_channels == 16 + 48
    for low, high in [((17, 16), (3, 2)), ((16, 16), (2, 2)), ((9, 13), (9, 13))]:
        c2, c5 = torch.randn(2, 8, *low), torch.randn(2, 32, *high)
        out = decoder(aspp(c5), c2)
        assert out.shape == (2, 4, *low)
    # The ASPP output is resized like torchvision's heads are: bilinear, align_corners=False.
    x = torch.randn(1, 16, 2, 2)
    c2 = torch.randn(1, 8, 8, 8)
    up = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    expected = decoder.classifier(decoder.fuse(torch.cat([up, decoder.project(c2)], 1)))
    torch.testing.assert_close(decoder(x, c2), expected, rtol=0, atol=0)


def test_upsample_is_torchvisions_final_resize() -> None:
    x = torch.randn(2, 5, 9, 7)
    out = Upsample()(x, torch.zeros(2, 3, 65, 50))
    torch.testing.assert_close(out, F.interpolate(x, size=(65, 50), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("size", [(64, 64), (33, 48), (16, 17)])
@pytest.mark.parametrize("upsampling", ["transposed", "bilinear"])
def test_unet_skips_and_logits_have_the_declared_shapes(size: tuple[int, int], upsampling: str) -> None:
    h, w = size
    encoder = UNetEncoder(in_channels=3, base_channels=4).eval()
    skips = encoder(torch.randn(2, 3, h, w))
    assert {k: tuple(v.shape) for k, v in skips.items()} == {
        "s1": (2, 4, h, w),
        "s2": (2, 8, h // 2, w // 2),
        "s3": (2, 16, h // 4, w // 4),
        "s4": (2, 32, h // 8, w // 8),
        "bottom": (2, 64, h // 16, w // 16),
    }
    decoder = UNetDecoder(s1_channels=4, s2_channels=8, s3_channels=16, s4_channels=32, bottom_channels=64,
                          num_classes=3, upsampling=upsampling).eval()  # fmt: skip
    assert decoder(**skips).shape == (2, 3, h, w)


def test_unet_decoder_follows_any_skip_widths() -> None:
    """Channel counts come from the inputs: a ResNet-18's c2-c5 plus a stem map fit as well as U-Net's own."""
    widths = {"s1": 32, "s2": 64, "s3": 128, "s4": 256, "bottom": 512}
    sizes = {"s1": 32, "s2": 16, "s3": 8, "s4": 4, "bottom": 2}
    decoder = UNetDecoder(**{f"{k}_channels": v for k, v in widths.items()}, num_classes=2).eval()
    out = decoder(**{k: torch.randn(1, widths[k], sizes[k], sizes[k]) for k in widths})
    assert out.shape == (1, 2, 32, 32)
    assert [up.up.out_channels for up in decoder.ups] == [256, 128, 64, 32]


def test_classic_unet_spec_has_the_papers_widths() -> None:
    compiled = compile_small("unet")
    model = compiled.module
    widths = [level[1][0].out_channels for level in model.encoder.levels]
    assert widths == [64, 128, 256, 512, 1024]
    assert [up.up.in_channels for up in model.decoder.ups] == [1024, 512, 256, 128]
    assert compiled.built.shapes[("decoder", "out")] == (2, 2, 64, 64)


def test_deeplabv3plus_specs_predict_at_the_image_size() -> None:
    compiled = compile_small("deeplabv3plus_r18_shapes")
    shapes = compiled.built.shapes
    assert shapes[("aspp", "out")] == (2, 128, 2, 2)
    assert shapes[("decoder", "out")] == (2, 4, 16, 16)
    assert shapes[("logits", "out")] == (2, 4, 64, 64)
    model = compiled.module.eval()
    with torch.no_grad():
        assert model(image=torch.rand(2, 3, 64, 64))["logits"].shape == (2, 4, 64, 64)
    r50 = compile_small("deeplabv3plus_r50").built.shapes
    assert r50[("aspp", "out")] == (2, 256, 8, 8) and r50[("decoder", "out")] == (2, 21, 16, 16)


def test_block_errors_without_inferred_channels() -> None:
    with pytest.raises(ValueError, match="'in_channels' is required"):
        FCNHead(num_classes=3)
    with pytest.raises(ValueError, match="'s3_channels' is required"):
        UNetDecoder(s1_channels=1, s2_channels=2, s4_channels=4, bottom_channels=5, num_classes=2)


# ---------------------------------------------------------------------------------------------------------------
# Learning


def test_unet_shapes_loss_goes_down_on_a_fixed_batch(tmp_path: Path) -> None:
    data = ShapesSegmentation(root=str(tmp_path), generate=4, height=64, width=64).dataset()
    images = torch.stack([data[i][0] for i in range(4)]).as_subclass(torch.Tensor)
    masks = torch.stack([data[i][1] for i in range(4)]).as_subclass(torch.Tensor)
    torch.manual_seed(0)
    model: nn.Module = compile_small("unet_shapes").module.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(image=images, mask=masks)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"unet_shapes: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.2 * losses[0]  # measured 1.85 -> 0.12
    # Thirty steps leave batch norm's running averages (momentum 0.1) behind the weights: give them the batch's
    # own statistics ("precise BN") before predicting in evaluation mode.
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
    with torch.no_grad():
        model(image=images, mask=masks)
    model.eval()
    with torch.no_grad():
        predicted = model(image=images)["logits"].argmax(1)
    assert (predicted == masks).float().mean() > 0.9


@pytest.mark.parametrize("spec", ["unet_shapes", "deeplabv3plus_r18_shapes"])
def test_shapes_spec_trains_and_reports_mean_iou(spec: str, tmp_path: Path) -> None:
    """The spec's own data and metrics through the training runtime, on a tiny budget."""
    from dagcv.train.runner import Options, train_spec

    root = str(tmp_path / "shapes")
    tiny = [f"data.train.dataset.root={root}", "data.train.dataset.generate=8", "data.train.batch_size=4",
            f"data.val.dataset.root={root}", "data.val.dataset.generate=4", "data.val.batch_size=4",
            "train.epochs=1"]  # fmt: skip
    if "subset:" in (ROOT / "specs" / f"{spec}.yaml").read_text():
        tiny.append("data.train.subset=null")  # a subset of the full split does not fit 8 images
    result = train_spec(load_spec(ROOT / "specs" / f"{spec}.yaml", tiny), Options(runs_root=tmp_path, quiet=True))
    final = result.history[-1]
    assert 0 <= final["val/mean_iou"] <= 1 and 0 <= final["val/dice"] <= 1
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == ["train", "val"]


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.segmentation, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
