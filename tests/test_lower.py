"""Lowering: the fx program and the ejected file compute exactly what hand-written PyTorch computes."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dagcv.compiler import compile_file
from dagcv.eject import eject
from dagcv.lower import DagModule
from tests.conftest import ROOT
from tests.reference import LENET_KEYS, TutorialNet


def load_mapped(model: nn.Module, reference: nn.Module, prefixes: dict[str, str]) -> None:
    """Copy ``reference``'s weights into ``model`` through a prefix map; strict, so nothing is left out."""
    state = {}
    for key, value in reference.state_dict().items():
        head, _, rest = key.partition(".")
        state[f"{prefixes[head]}.{rest}"] = value
    model.load_state_dict(state, strict=True)


def load_ejected(source: str, tmp_path, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("spec", "shape", "flat"), [("lenet_cifar10", (3, 32, 32), 400), ("lenet_mnist", (1, 28, 28), 256)]
)
def test_lenet_matches_tutorial_net_exactly(spec, shape, flat, tmp_path) -> None:
    torch.manual_seed(0)
    compiled = compile_file(ROOT / "specs" / f"{spec}.yaml")
    model, reference = compiled.module, TutorialNet(shape[0], flat)
    load_mapped(model, reference, LENET_KEYS)
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    model.eval()
    assert torch.equal(model(x)["logits"], reference(x))
    model.train()
    out = model(x, y)
    assert torch.equal(out["logits"], reference(x))
    assert torch.equal(out["loss"], F.cross_entropy(reference(x), y))

    ejected = load_ejected(eject(compiled.built), tmp_path, f"ejected_{spec}").__dict__[type_name(spec)]()
    ejected.load_state_dict(model.state_dict(), strict=True)
    ejected.eval()
    assert torch.equal(ejected(x)["logits"], reference(x))


def type_name(spec: str) -> str:
    return "".join(p.title() for p in spec.split("_"))


def test_resnet18_matches_torchvision_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    compiled = compile_file(ROOT / "specs" / "resnet18_classifier.yaml")
    model = compiled.module
    reference = torchvision.models.resnet18(weights=None, num_classes=10)
    prefixes = {k: "backbone." + k for k in ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]}
    load_mapped(model, reference, {**{k: v for k, v in prefixes.items()}, "fc": "classifier.fc"})
    model.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(model(x)["logits"], expected)
        ejected = load_ejected(eject(compiled.built), tmp_path, "ejected_resnet18").Resnet18Classifier()
        ejected.load_state_dict(model.state_dict(), strict=True)
        ejected.eval()
        assert torch.equal(ejected(x)["logits"], expected)


def test_code_state_dict_and_modes() -> None:
    model = compile_file(ROOT / "specs" / "lenet_mnist.yaml").module
    assert isinstance(model, DagModule)
    assert {k.split(".")[0] for k in model.state_dict()} == {"features", "classifier"}
    model.train()
    assert "self.loss(classifier, label)" in model.code
    model.eval()
    assert "loss" not in model.code and "classifier = self.features" not in model.code
    assert "features = self.features(image)" in model.code
    assert set(model(torch.randn(2, 1, 28, 28))) == {"logits"}
    with pytest.raises(TypeError):
        model.train()(torch.randn(2, 1, 28, 28))  # the train program needs the label


def test_multi_output_and_source_blocks() -> None:
    vq = compile_file(ROOT / "specs" / "vqvae_mnist.yaml").module.train()
    out = vq(torch.rand(2, 1, 28, 28))
    assert out["reconstruction"].shape == (2, 1, 28, 28) and out["codes"].shape == (2, 7, 7)
    assert "quantizer_quantized = quantizer['quantized']" in vq.code
    ac = compile_file(ROOT / "specs" / "actor_critic_cartpole.yaml").module
    out = ac(torch.randn(5, 4))
    assert isinstance(out["action_distribution"], torch.distributions.Categorical)
    assert out["action_distribution"].logits.shape == (5, 2) and out["value"].shape == (5,)
    assert "env" not in dict(ac.named_children())  # the env is not part of the model


def test_torch_compile_matches_eager() -> None:
    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / "lenet_cifar10.yaml").module.eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x)["logits"], model(x)["logits"])


@pytest.mark.parametrize("spec", ["lenet_mnist", "resnet18_classifier"])
def test_torch_export_matches_eager(spec) -> None:
    torch.manual_seed(0)
    model = compile_file(ROOT / "specs" / f"{spec}.yaml").module.eval()
    x = torch.randn(2, 1, 28, 28) if spec == "lenet_mnist" else torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x)["logits"], model(x)["logits"], atol=1e-6, rtol=0)


def test_a_program_may_compute_a_block_output_that_no_spec_output_names(at_root) -> None:
    """A sampler's `denoise` program: the denoiser's output, cut at the schedule, so x_t and t are its arguments."""
    from dagcv.lower import program_arguments

    model = compile_file("specs/cfg_mnist.yaml").module.eval()
    denoise = model.program(["denoiser"], "eval", given=["noising"])
    assert program_arguments(denoise) == ["noising_t", "noising_x_t", "label"]  # cut values sort by port
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 900]), torch.tensor([1, -1])
    by_hand = model.denoiser(x, t, model.cond(y))
    assert torch.equal(denoise(noising_x_t=x, noising_t=t, label=y)["denoiser"], by_hand)
    assert set(model.program(["noising.snr"], "eval")(image=torch.rand(2, 1, 28, 28))) == {"noising.snr"}
    with pytest.raises(KeyError, match="no spec output or block 'decoder'"):
        model.program(["decoder"])
    with pytest.raises(KeyError, match="block 'noising' has no output port 'eps'"):
        model.program(["noising.eps"])
