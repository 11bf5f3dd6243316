"""SSD-lite: the spec-built detector against torchvision's ``ssdlite320_mobilenet_v3_large``, weight for weight.

torchvision's model is built with random weights; its ``state_dict`` loads into the model compiled from
``specs/ssd_lite.yaml`` with the same keys (strictly). Evaluation detections, training losses and every gradient
must be identical, with the RNG fixed before each forward. The transform is fixed at 320×320, so two small
images are enough.
"""

from __future__ import annotations

import doctest
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TvDefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

import blocks.detection.ssd
from blocks.detection.ssd import SSDLITE_CHANNELS, DefaultBoxGenerator, SSDLiteHead, SSDLoss, ssdlite_mobilenet_v3_large
from dagcv.compiler import compile_spec
from dagcv.spec import load_spec
from tests.parity import detection_diffs, grad_diff, run_detectors

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 5


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.ssd, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def example_batch() -> tuple[Tensor, list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 48, 64, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 46.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0], [2.0, 2.0, 9.0, 8.0]]), "labels": torch.tensor([2, 4])},
    ]
    return images, targets


@pytest.fixture(scope="module")
def ssd_pair() -> tuple[nn.Module, nn.Module]:
    """torchvision's SSD-lite and the spec-built one holding the same weights (the keys are the same)."""
    torch.manual_seed(0)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    overrides = ["sizes.H=48", "sizes.W=64", f"blocks.head.num_classes={NUM_CLASSES}"]
    spec = compile_spec(load_spec(ROOT / "specs" / "ssd_lite.yaml", overrides=overrides)).module
    assert list(spec.state_dict()) == list(tv.state_dict())
    spec.load_state_dict(tv.state_dict(), strict=True)
    return tv, spec


def test_ssdlite_eval_matches_torchvision(ssd_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = ssd_pair
    images, _ = example_batch()
    want, got = run_detectors(tv, spec, images, None, seed=1)
    assert len(got) == 2
    diffs = detection_diffs(got, want, ("boxes", "scores", "labels"), more_than=10)
    assert diffs == {"boxes": 0.0, "scores": 0.0, "labels": 0.0}


def test_ssdlite_train_matches_torchvision(ssd_pair: tuple[nn.Module, nn.Module]) -> None:
    tv, spec = ssd_pair
    images, targets = example_batch()
    tv.zero_grad(), spec.zero_grad()
    want, got = run_detectors(tv, spec, images, targets, seed=3)
    assert set(got) == set(want) == {"bbox_regression", "classification"}
    assert all(v.item() > 0 for v in want.values())
    assert {k: abs(got[k].item() - want[k].item()) for k in want} == dict.fromkeys(want, 0.0)
    sum(want.values()).backward()
    sum(got.values()).backward()
    assert grad_diff(tv, spec) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# The blocks alone


def test_backbone_outputs_six_maps_of_the_declared_widths() -> None:
    features = ssdlite_mobilenet_v3_large().eval()(torch.zeros(1, 3, 320, 320))
    assert list(features) == ["0", "1", "2", "3", "4", "5"]
    assert tuple(f.shape[1] for f in features.values()) == SSDLITE_CHANNELS
    assert [f.shape[-1] for f in features.values()] == [20, 10, 5, 3, 2, 1]
    wide = ssdlite_mobilenet_v3_large(reduced_tail=False).eval()(torch.zeros(1, 3, 64, 64))
    assert wide["1"].shape[1] == 960


def test_backbone_loads_a_local_mobilenet_file(tmp_path: Path) -> None:
    import torchvision.models as tvm

    torch.manual_seed(0)
    net = tvm.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet.pt"
    torch.save(net.state_dict(), path)
    extractor = ssdlite_mobilenet_v3_large(reduced_tail=False, weights=str(path), trainable_layers=0)
    first = extractor.features[0][0][0]  # the stem conv
    assert torch.equal(first.weight, net.features[0][0].weight)
    assert not any(p.requires_grad for p in extractor.features.parameters())
    assert all(p.requires_grad for p in extractor.extra.parameters())


def test_default_boxes_match_torchvision_on_a_non_square_batch() -> None:
    features = OrderedDict([("0", torch.zeros(3, 4, 6, 8)), ("1", torch.zeros(3, 4, 3, 4))])
    images = torch.zeros(3, 3, 48, 64)
    ours = DefaultBoxGenerator(aspect_ratios=((2,), (2, 3)), min_ratio=0.1, max_ratio=0.9)(images, features)
    tv = TvDefaultBoxGenerator([[2], [2, 3]], 0.1, 0.9)(ImageList(images, [(48, 64)] * 3), list(features.values()))
    assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, tv, strict=True))
    assert ours[0].shape == (6 * 8 * 4 + 3 * 4 * 6, 4)


def test_head_levels_must_agree() -> None:
    with pytest.raises(ValueError, match="in_channels has 2 levels but num_anchors 3"):
        SSDLiteHead(in_channels=(8, 16), num_anchors=(4, 4, 4))
    head = SSDLiteHead(in_channels=(8, 16), num_anchors=(4, 4))
    features = OrderedDict([("0", torch.zeros(1, 8, 4, 4)), ("1", torch.zeros(1, 960, 2, 2))])
    with pytest.raises(ValueError, match=r"levels have \[8, 960\] channels but in_channels is \[8, 16\]"):
        head(features)


def test_loss_without_objects_has_no_positives() -> None:
    anchors = [torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20]])]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    out = SSDLoss()(torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), anchors, empty)
    assert out == {"bbox_regression": torch.tensor(0.0), "classification": torch.tensor(0.0)}
