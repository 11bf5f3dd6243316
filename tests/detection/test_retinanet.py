"""RetinaNet: the spec-built detector against torchvision's, weight for weight, and the one-word backbone swap.

The parity tests build torchvision's ``retinanet_resnet50_fpn`` with random weights and small images, load its
``state_dict`` into the model compiled from ``specs/retinanet_r50_fpn.yaml`` (with ``--set``-style overrides for
the image size, classes and score threshold) through a key map, strictly, and compare evaluation detections,
training losses and every gradient with the RNG fixed before each forward.
"""

from __future__ import annotations

import copy
import doctest
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.models.detection.retinanet import RetinaNet

import blocks.detection.retinanet
from blocks.detection.anchors import Anchors
from blocks.detection.retinanet import RetinaHead, RetinaLoss, RetinaPostprocess
from blocks.shapes import CocoInstances, ShapesCoco
from dagcv.compiler import compile_spec
from dagcv.render import render_spec, write_rendering
from dagcv.spec import load_spec
from tests.parity import detection_diffs, grad_diff, max_diff, run_detectors

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "retinanet_r50_fpn.yaml"
NUM_CLASSES = 5
MIN_SIZE, MAX_SIZE = 96, 128
OVERRIDES = [
    "sizes.H=75",
    "sizes.W=101",
    f"blocks.transform.min_size={MIN_SIZE}",
    f"blocks.transform.max_size={MAX_SIZE}",
    f"blocks.head.num_classes={NUM_CLASSES}",
    "blocks.postprocess.score_thresh=0.0",
]
# torchvision module prefix -> spec node prefix (the anchor generator and transform hold no state).
KEY_MAP = {"backbone.body.": "backbone.", "backbone.fpn.": "neck.", "head.": "head."}


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.retinanet, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def rename(key: str) -> str:
    prefix = next(p for p in KEY_MAP if key.startswith(p))
    return KEY_MAP[prefix] + key[len(prefix) :]


def randomize(model: nn.Module) -> None:
    """Batch-norm statistics away from 0/1 and class biases away from the prior, so that nothing hides."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.uniform_(-3.0, 1.0)
        model.head.regression_head.bbox_reg.weight.normal_(0.0, 0.05)


def images_and_targets() -> tuple[Tensor, list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 75, 101, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 98.0, 70.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]), "labels": torch.tensor([4])},
    ]
    return images, targets


@pytest.fixture(scope="module")
def pair() -> tuple[RetinaNet, nn.Module]:
    torch.manual_seed(0)
    reference = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE,
        score_thresh=0.0,
    )  # fmt: skip
    randomize(reference)
    ours = compile_spec(load_spec(SPEC, OVERRIDES)).module
    ours.load_state_dict({rename(k): v for k, v in reference.state_dict().items()}, strict=True)
    return reference, ours


def test_the_spec_builds_torchvisions_trunk() -> None:
    """Defaults: batch norm and every layer trainable, as torchvision builds it without weights."""
    torch.manual_seed(0)
    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=64, max_size=64)
    ours = compile_spec(load_spec(SPEC, ["sizes.H=64", "sizes.W=64"])).module
    want = {rename(k): (type(v), v.requires_grad) for k, v in reference.named_parameters()}
    got = {k: (type(v), v.requires_grad) for k, v in ours.named_parameters()}
    assert got == want
    for node, module in (("backbone", "backbone.body"), ("neck", "backbone.fpn"), ("head", "head")):
        want_types = [type(m) for m in reference.get_submodule(module).modules()][1:]
        assert [type(m) for m in ours.get_submodule(node).modules()][1:] == want_types
    assert {rename(k) for k in reference.state_dict()} == set(ours.state_dict())


def test_eval_detections_match_torchvision(pair) -> None:
    reference, ours = pair
    images, _ = images_and_targets()
    want, got = run_detectors(reference, ours, images, None, seed=1)
    assert len(got) == 2
    # score_thresh 0: full top-k, NMS and the per-image cut all at work
    diffs = detection_diffs(got, want, ("boxes", "scores", "labels"), more_than=50)
    print(f"retinanet eval parity: max |Δ| boxes/scores = {max(diffs['boxes'], diffs['scores']):.3g}")
    assert diffs["labels"] == 0.0 and diffs["boxes"] <= 1e-6 and diffs["scores"] <= 1e-6


def test_train_losses_and_gradients_match_torchvision(pair) -> None:
    reference, ours = pair
    reference, ours = copy.deepcopy(reference), copy.deepcopy(ours)
    images, targets = images_and_targets()
    want, got = run_detectors(reference, ours, images, targets, seed=2)
    assert set(want) == {"classification", "bbox_regression"}
    loss_diff = max(max_diff(got[k], want[k]) for k in want)
    sum(want.values()).backward()
    sum(got[k] for k in want).backward()
    grads = grad_diff(reference, ours, rename)
    stats_diff = max(
        max_diff(ours.state_dict()[rename(k)].float(), v.float()) for k, v in reference.state_dict().items()
    )  # the batch-norm running statistics moved the same way
    print(f"retinanet train parity: max |Δ| losses = {loss_diff:.3g}, gradients = {grads:.3g}")
    assert loss_diff <= 1e-6 and grads <= 1e-6 and stats_diff <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# The one-word ablation: a MobileNetV3 trunk in place of the ResNet-50


def test_mobilenet_swap_compiles_renders_and_trains(tmp_path: Path) -> None:
    text = SPEC.read_text()
    assert text.count("type: resnet50,") == 1
    swapped = tmp_path / "retinanet_mobilenet.yaml"
    swapped.write_text(text.replace("type: resnet50,", "type: mobilenet_v3_large,"))
    overrides = ["sizes.H=64", "sizes.W=64", "blocks.transform.min_size=64", "blocks.transform.max_size=64"]
    spec = load_spec(swapped, overrides)
    compiled = compile_spec(spec)
    assert write_rendering(render_spec(spec), tmp_path / "graph.svg").stat().st_size > 0
    assert compiled.built.kwargs("neck") == {"out_channels": 256, "c3_channels": 40, "c4_channels": 80,
                                              "c5_channels": 960}  # fmt: skip
    model = compiled.module.train()
    images, targets = (
        torch.rand(2, 3, 64, 64),
        [
            {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
            {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
        ],
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = model(image=images, targets=targets)
    loss = losses["classification"] + losses["bbox_regression"]
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.features.") for k in moved) and any(k.startswith("head.") for k in moved)
    with torch.no_grad():
        detections = model.eval()(image=images)["detections"]
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)


# ---------------------------------------------------------------------------------------------------------------
# The small shapes detector learns


@pytest.mark.slow
def test_r18_shapes_overfits_a_batch_of_generated_shapes(tmp_path: Path) -> None:
    data = ShapesCoco(root=str(tmp_path), generate=4, height=64, width=64).dataset()
    images, targets = CocoInstances.collate_fn([data[i] for i in range(4)])
    torch.manual_seed(0)
    model = compile_spec(load_spec(ROOT / "specs" / "retinanet_r18_shapes.yaml")).module.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(100):
        losses = model(image=images, targets=targets)
        total = losses["classification"] + losses["bbox_regression"]
        first = total.item() if first is None else first
        if total.item() < 0.25 * first:
            break
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < 0.25 * first, f"loss {first:.3f} -> {total.item():.3f}"


# ---------------------------------------------------------------------------------------------------------------
# The blocks on their own


def test_head_loss_and_postprocess_agree_with_torchvisions_pieces() -> None:
    torch.manual_seed(0)
    reference = RetinaNet(_FakeBackbone(), num_classes=3, min_size=64, max_size=64, score_thresh=0.2).eval()
    head = RetinaHead(in_channels=8, num_classes=3)
    head.load_state_dict(reference.head.state_dict(), strict=True)
    with torch.no_grad():
        head.classification_head.cls_logits.bias.uniform_(-2.0, 1.0)
        reference.head.load_state_dict(head.state_dict())
    features = {"0": torch.randn(2, 8, 8, 8), "1": torch.randn(2, 8, 4, 4)}
    out = head(features)
    want = reference.head(list(features.values()))
    assert torch.equal(out["cls_logits"], want["cls_logits"])
    assert torch.equal(out["bbox_regression"], want["bbox_regression"])

    images = torch.zeros(2, 3, 64, 64)
    sizes = torch.tensor([[64, 64], [60, 50]])
    anchor_gen = Anchors(sizes=[[16, 20], [32, 40]], aspect_ratios=[[0.5, 1.0], [1.0, 2.0]])
    assert anchor_gen.num_anchors_per_location() == [4, 4]
    head4 = RetinaHead(in_channels=8, num_anchors=4, num_classes=3)
    with torch.no_grad():
        head4.classification_head.cls_logits.bias.uniform_(-2.0, 1.0)
    out = head4(features)
    anchors = anchor_gen(images, sizes, features)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 58.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    reference.head = head4
    want_losses = reference.compute_loss(targets, out, anchors)
    got_losses = RetinaLoss()(out["cls_logits"], out["bbox_regression"], anchors, targets)
    assert all(torch.equal(got_losses[k], want_losses[k]) for k in want_losses)

    split = [8 * 8 * 4, 4 * 4 * 4]
    split_out = {k: list(v.split(split, dim=1)) for k, v in out.items()}
    want_dets = reference.postprocess_detections(
        split_out, [list(a.split(split)) for a in anchors], [(64, 64), (60, 50)]
    )
    got_dets = RetinaPostprocess(score_thresh=0.2)(out["cls_logits"], out["bbox_regression"], anchors, features, sizes)
    for g, w in zip(got_dets, want_dets, strict=True):
        assert len(w["boxes"]) > 0
        assert all(torch.equal(g[k], w[k]) for k in w)


class _FakeBackbone(nn.Module):
    out_channels = 8
