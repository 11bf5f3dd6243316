"""The RPN blocks against torchvision's ``RegionProposalNetwork``: same head outputs, proposals, losses, gradients."""

from __future__ import annotations

import doctest
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

import blocks.detection.rpn
from blocks.detection.rpn import RpnHead, RpnLoss, RpnProposals

CHANNELS = 8
IMAGE_SIZES = [(64, 60), (56, 64)]  # before padding to 64×64


def test_docstring_examples() -> None:
    result = doctest.testmod(blocks.detection.rpn, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def _torchvision_rpn() -> RegionProposalNetwork:
    """A small torchvision RPN over a 3-level pyramid; top-n differ between training and evaluation."""
    torch.manual_seed(0)
    anchors = AnchorGenerator(((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3)
    head = RPNHead(CHANNELS, 3)
    for p in head.parameters():  # larger weights than torchvision's init, so scores are not all tied
        torch.nn.init.normal_(p, std=0.3)
    return RegionProposalNetwork(
        anchors, head, fg_iou_thresh=0.6, bg_iou_thresh=0.3, batch_size_per_image=32, positive_fraction=0.5,
        pre_nms_top_n={"training": 60, "testing": 30}, post_nms_top_n={"training": 40, "testing": 20},
        nms_thresh=0.7, score_thresh=0.0,
    )  # fmt: skip


def _inputs() -> tuple[ImageList, OrderedDict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images = ImageList(torch.zeros(2, 3, 64, 64), IMAGE_SIZES)
    features = OrderedDict((k, torch.randn(2, CHANNELS, s, s, generator=g)) for k, s in [("0", 16), ("1", 8), ("2", 4)])
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 58.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
    ]
    return images, features, targets


def _blocks(rpn: RegionProposalNetwork) -> tuple[RpnHead, RpnProposals, RpnLoss]:
    head = RpnHead(in_channels=CHANNELS, num_anchors=3)
    head.load_state_dict(rpn.head.state_dict(), strict=True)
    proposals = RpnProposals(pre_nms_top_n_train=60, pre_nms_top_n_test=30, post_nms_top_n_train=40,
                             post_nms_top_n_test=20, nms_thresh=0.7)  # fmt: skip
    loss = RpnLoss(fg_iou_thresh=0.6, bg_iou_thresh=0.3, batch_size_per_image=32, positive_fraction=0.5)
    return head, proposals, loss


def test_rpn_head_keeps_torchvision_names_and_outputs() -> None:
    rpn = _torchvision_rpn()
    head = RpnHead(in_channels=CHANNELS, num_anchors=3)
    assert list(head.state_dict()) == list(rpn.head.state_dict())
    head.load_state_dict(rpn.head.state_dict(), strict=True)
    _, features, _ = _inputs()
    want_logits, want_deltas = rpn.head(list(features.values()))
    out = head(features)
    assert list(out["objectness"]) == list(features) == list(out["pred_bbox_deltas"])
    for got, want in zip(out["objectness"].values(), want_logits, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(out["pred_bbox_deltas"].values(), want_deltas, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_proposals_and_losses_match_torchvision(training: bool) -> None:
    rpn = _torchvision_rpn().train(training)
    head, proposals, loss = (b.train(training) for b in _blocks(rpn))
    images, features, targets = _inputs()
    features_tv = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())
    features_ours = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())

    torch.manual_seed(3)
    want_boxes, want_losses = rpn(images, features_tv, targets if training else None)

    torch.manual_seed(3)
    anchors = rpn.anchor_generator(images, list(features_ours.values()))
    out = head(features_ours)
    boxes = proposals(anchors, out["objectness"], out["pred_bbox_deltas"], torch.tensor(IMAGE_SIZES))
    assert [len(b) for b in boxes] == [len(b) for b in want_boxes] == [40 if training else 20] * 2
    for got, want in zip(boxes, want_boxes, strict=True):
        assert torch.equal(got, want)
    if not training:
        return
    losses = loss(anchors, out["objectness"], out["pred_bbox_deltas"], targets)
    assert losses.keys() == want_losses.keys()
    for key in losses:
        assert torch.equal(losses[key], want_losses[key]), key
    sum(want_losses.values()).backward()
    sum(losses.values()).backward()
    for (name, p), q in zip(rpn.head.named_parameters(), head.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for key in features:
        assert torch.equal(features_tv[key].grad, features_ours[key].grad), key


def test_proposal_counts_follow_the_mode() -> None:
    rpn = _torchvision_rpn()
    head, proposals, _ = _blocks(rpn)
    images, features, _ = _inputs()
    anchors = rpn.anchor_generator(images, list(features.values()))
    out = head(features)
    sizes = torch.tensor(IMAGE_SIZES)
    counts = {}
    for training in (True, False):
        proposals.train(training)
        counts[training] = [len(b) for b in proposals(anchors, out["objectness"], out["pred_bbox_deltas"], sizes)]
    assert counts == {True: [40, 40], False: [20, 20]}


def test_loss_draws_from_the_global_rng() -> None:
    rpn = _torchvision_rpn()
    head, _, loss = _blocks(rpn)
    images, features, targets = _inputs()
    anchors = rpn.anchor_generator(images, list(features.values()))
    out = head(features)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(loss(anchors, out["objectness"], out["pred_bbox_deltas"], targets)["loss_objectness"].item())
    assert runs[0] == runs[1] != runs[2]
