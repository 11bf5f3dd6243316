"""Learning actually happens: every trainable shipped spec overfits one batch, and LeNet reaches its accuracy
on real MNIST."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dagcv.compiler import compile_spec
from dagcv.spec import load_spec
from dagcv.train.optim import GroupStepper, make_groups
from dagcv.types import KINDS
from tests.conftest import ROOT, SPECS

# Detectors (a Targets input) learn in their own tests (tests/detection/); the full-size ResNet-50 segmenters are
# exact to torchvision there too. Everything else trainable overfits one batch here.
TRAINABLE = [
    p
    for p in SPECS
    if "\ntrain:" in p.read_text()
    and "loop:" not in p.read_text()  # supervised specs; RL loops in test_rl.py
    and "Targets[" not in p.read_text()
    and "_r50" not in p.stem
]
SHAPES_DATA = ("shapes_segmentation",)  # specs trained on generated shapes overfit one real batch of them
MNIST = ROOT.parent / "shared" / "datasets" / "mnist-t10k"


def one_batch(compiled, batch: int = 8, root=None) -> dict[str, torch.Tensor]:
    """A fixed batch for the spec's run-time inputs: blocky images in [0, 1] (4×4 cells, so an autoencoder's
    7×7 latent can hold them), labels below the class count; or, for specs on generated shapes, a real batch of
    them (random per-pixel labels are nothing a segmenter can learn)."""
    sg = compiled.built.sg
    split = sg.training.data[sg.training.train.train_split]
    if split.dataset["type"] in SHAPES_DATA:
        from dagcv.train.data import SplitLoader, build_dataset

        split = split.model_copy(update={"dataset": {**split.dataset, "root": str(root), "generate": batch},
                                         "batch_size": batch, "transforms": [], "subset": None})  # fmt: skip
        loader = SplitLoader(build_dataset(sg, split), split, sg.training.fields["train"], seed=0, rank=0,
                             world=1, train=False)  # fmt: skip
        return next(iter(loader.epoch(0)))
    # Labels below the smallest class count any block is built with (CartPole's clone has two actions).
    classes = min([10] + [v for n in sg.blocks() for k, v in (sg.node(n).get("params") or {}).items()
                          if k == "num_classes" and isinstance(v, int)])  # fmt: skip
    out = {}
    for name in sg.spec.inputs:
        port_type = sg.node(name)["type"]
        dims = [batch if d.text == "B" else d.value for d in sg.node(name)["shapes"]["out"]]
        if KINDS[port_type.kind].dtype == "int64":
            out[name] = torch.randint(0, classes, dims)
        elif len(dims) < 4:  # vectors (observations): every row distinct
            out[name] = torch.rand(*dims)
        else:
            coarse = torch.rand(*dims[:-2], dims[-2] // 4, dims[-1] // 4)
            out[name] = coarse.repeat_interleave(4, -2).repeat_interleave(4, -1)
    return out


def test_every_trainable_spec_is_covered() -> None:
    assert {p.stem for p in TRAINABLE} >= {
        "lenet_mnist",
        "lenet_cifar10",
        "resnet18_classifier",
        "vqvae_mnist",
        "mlp_digits",
    }


@pytest.mark.parametrize("spec_path", TRAINABLE, ids=lambda p: p.stem)
def test_overfits_one_batch(spec_path, tmp_path) -> None:
    """The spec's own loop, optimizers and losses drive the loss on one fixed batch down by 90%."""
    overrides = ["sizes.H=32", "sizes.W=32"] if "sizes:" in spec_path.read_text() else []
    # Label smoothing puts a floor under the loss (about 0.5 for 0.1 over 10 classes): measure the drop without it.
    smoothed = [n for n, b in load_spec(spec_path).blocks.items() if b.params.get("label_smoothing")]
    spec = load_spec(spec_path, overrides + [f"blocks.{n}.label_smoothing=0.0" for n in smoothed])
    torch.manual_seed(0)
    compiled = compile_spec(spec)
    sg = compiled.built.sg
    # The spec's losses and optimizer groups, with Adam at a rate that overfits quickly whatever it trains with.
    optimizers = [
        o.model_copy(update={"type": "adam", "lr": 3e-3, "weight_decay": 0.0}) for o in sg.training.train.optimizers
    ]
    cfg = sg.training.train.model_copy(update={"schedule": None, "grad_clip": None, "optimizer": optimizers})
    groups = make_groups(compiled.module, cfg, sg.training.loss_outputs, total_steps=150)
    loop = GroupStepper(compiled.module.train(), groups, grad_clip=None, amp=False, device=torch.device("cpu"))
    batch = one_batch(compiled, root=tmp_path / "data")
    first = None
    for step in range(1, 151):
        losses = loop.step(batch, step)
        total = sum(v.item() for k, v in losses.items() if k in sg.training.loss_outputs)
        first = total if first is None else first
        if total < 0.1 * first:
            break
    assert total < 0.1 * first, f"{spec_path.stem}: loss {first:.4f} -> {total:.4f} after {step} steps"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="needs ../shared/datasets/mnist-t10k beside the project")
def test_lenet_reaches_97_percent_on_held_out_mnist(tmp_path) -> None:
    """specs/lenet_mnist.yaml as shipped: seeded 8,000 / 2,000 split of the real MNIST test set."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagcv.cli",
            "train",
            "specs/lenet_mnist.yaml",
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    final = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"held-out accuracy: {final['val/accuracy']:.4f} after {final['epoch']} epochs")
    assert final["val/accuracy"] >= 0.97
