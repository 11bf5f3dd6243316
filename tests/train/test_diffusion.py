"""The diffusion family as a user relies on it: the toy trains to all eight modes, the loop keeps an average of
the weights that sampling uses and that survives a kill, `dagcv sample` runs DDPM, DDIM, guidance and inpainting
(or says clearly why it cannot), and latent diffusion decodes its latents through the frozen decoder. Data are
generated (the 2-D mixture, random 28×28 images): no download, no shared dataset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from dagcv.compiler import compile_spec
from dagcv.spec import load_spec
from dagcv.train.checkpoint import load_checkpoint
from dagcv.train.diffusion import data_shape, decode
from dagcv.train.diffusion_config import SamplerConfig, diffusion_parts
from dagcv.train.runner import Options, train_spec
from dagcv.train.sampling import draw
from tests.conftest import ROOT
from tests.train.test_generative import RANDOM_DIGITS, dagcv, records, straight_and_resumed

GAUSSIANS = ROOT / "specs" / "ddpm_8gaussians.yaml"
CFG = ROOT / "specs" / "cfg_mnist.yaml"
LDM = ROOT / "specs" / "ldm_mnist.yaml"
TINY_UNET = ["blocks.denoiser.channels=8", "blocks.denoiser.channel_mults=[1, 2]", "blocks.denoiser.groups=4"]
TINY_RUN = [RANDOM_DIGITS, RANDOM_DIGITS.replace("data.train", "data.val"), "train.eval_split=null",
            "train.epochs=null", "train.threads=1", "train.samples=4", "train.sampler.steps=3",
            "blocks.noising.steps=50"]  # fmt: skip


def averaged(run: Path):
    """The compiled spec of a run with the averaged weights of its last checkpoint."""
    compiled = compile_spec(load_spec(run / "spec.resolved.yaml"))
    compiled.module.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["ema"]["average"])
    return compiled


def mode_shares(points: torch.Tensor, modes: int = 8, radius: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of points nearest each mode, and each point's distance to its nearest mode."""
    angles = torch.arange(modes) * 2 * math.pi / modes
    centres = radius * torch.stack([angles.cos(), angles.sin()], 1)
    distance, nearest = torch.cdist(points, centres).min(1)
    return torch.bincount(nearest, minlength=modes) / len(points), distance


@pytest.mark.slow
def test_ddpm_and_ddim_cover_the_eight_gaussians(tmp_path: Path) -> None:
    """The shipped toy spec, trained in full (under a minute): DDPM's 1,000 steps and DDIM's 50 both put at least
    8% of the samples on every mode (12.5% each is exact) and 80% within 0.2 of a mode centre."""
    run = tmp_path / "run"
    train_spec(load_spec(GAUSSIANS), Options(run_dir=run, quiet=True))
    compiled = averaged(run)
    for sampler in (SamplerConfig(type="ddpm", clip=None), SamplerConfig(type="ddim", steps=50, clip=None)):
        shares, distance = mode_shares(draw(compiled, 2000, seed=1, sampler=sampler))
        assert shares.min() >= 0.08 and (distance < 0.2).float().mean() >= 0.8, (sampler, shares, distance)
    assert (run / "plots" / "samples_epoch001.png").is_file()


def test_the_average_is_kept_saved_and_resumed_exactly(tmp_path: Path) -> None:
    """A run killed after a checkpoint resumes to the uninterrupted run's weights and averaged weights."""
    overrides = [*TINY_RUN, *TINY_UNET, "train.steps=6", "train.checkpoint_every=2", "train.log_every=1",
                 "train.ema={decay: 0.9}"]  # fmt: skip
    a, b = straight_and_resumed(load_spec(CFG, overrides), tmp_path, kill_at=4)
    assert a["loop"]["ema"]["updates"] == b["loop"]["ema"]["updates"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["loop"]["ema"]["average"][key], b["loop"]["ema"]["average"][key]), key
    average, raw = a["loop"]["ema"]["average"], a["model"]
    assert any(not torch.equal(average[k], raw[k]) for k in raw if k.startswith("denoiser."))  # not a copy
    assert [r["train/loss"] for r in records(tmp_path / "straight")] == [
        r["train/loss"] for r in records(tmp_path / "killed")
    ]


# -- dagcv sample ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cfg") / "run"
    train_spec(load_spec(CFG, [*TINY_RUN, *TINY_UNET, "train.steps=2"]), Options(run_dir=run, quiet=True))
    return run


@pytest.mark.slow
def test_sample_runs_a_guided_ddim_of_the_requested_class(cfg_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sevens.png"
    result = dagcv("sample", str(cfg_run), "-n", "6", "--class", "7", "--sampler", "ddim", "--steps", "5",
                   "--eta", "1", "--guidance", "3", "--seed", "2", "-o", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert saved["samples"].shape == (6, 1, 28, 28) and saved["samples"].min() >= 0 and saved["samples"].max() <= 1
    assert saved["sampler"] == {"type": "ddim", "steps": 5, "eta": 1.0, "guidance": 3.0, "clip": 1.0}
    assert saved["ema"] is True  # drawn with the averaged weights
    again = draw(averaged(cfg_run), 6, seed=2, label=7, sampler=SamplerConfig.model_validate(saved["sampler"]))
    assert torch.equal(again, saved["samples"])  # the seed decides the samples
    raw = dagcv("sample", str(cfg_run), "-n", "6", "--class", "7", "--sampler", "ddim", "--steps", "5", "--eta", "1",
                "--guidance", "3", "--seed", "2", "--no-ema", "-o", str(tmp_path / "raw.png"))  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    assert not torch.equal(torch.load(tmp_path / "raw.pt", weights_only=True)["samples"], saved["samples"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "51"], "--steps 51: the model was trained on 50 timesteps"),
        (["--class", "10"], "--class 10 is outside the label range 0–9 of 'label'"),
        (["--inpaint", "IMAGE", "--mask", "SMALL"], "--mask is 14×14 pixels but --inpaint is 28×28"),
        (["--inpaint", "IMAGE", "--mask", "MASK", "--sampler", "ddim"], "--inpaint runs RePaint on the ddpm sampler"),
        (["--inpaint", "IMAGE"], "inpainting needs both --inpaint IMAGE and --mask MASK"),
    ],
    ids=["steps above training", "class", "mask size", "inpaint with ddim", "no mask"],
)
def test_sample_refuses_what_the_model_cannot_do(cfg_run: Path, tmp_path: Path, flags, message) -> None:
    files = _pngs(tmp_path)
    result = dagcv("sample", str(cfg_run), "-n", "2", *[files.get(f, f) for f in flags], "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


def _pngs(tmp_path: Path) -> dict[str, str]:
    """An image, a mask of its size keeping the left half, and a mask of half its size."""
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    mask = torch.zeros(1, 28, 28, dtype=torch.uint8)
    mask[..., :14] = 255
    files = {"IMAGE": tmp_path / "image.png", "MASK": tmp_path / "mask.png", "SMALL": tmp_path / "small.png"}
    for key, pixels in (("IMAGE", image), ("MASK", mask), ("SMALL", mask[..., :14, :14])):
        write_png(pixels, str(files[key]))
    return {k: str(v) for k, v in files.items()}


@pytest.mark.slow
def test_inpainting_keeps_the_known_pixels(cfg_run: Path, tmp_path: Path) -> None:
    files = _pngs(tmp_path)
    out = tmp_path / "painted.png"
    result = dagcv("sample", str(cfg_run), "-n", "3", "--class", "1", "--inpaint", files["IMAGE"], "--mask",
                   files["MASK"], "--steps", "10", "-o", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = torch.load(out.with_suffix(".pt"), weights_only=True)["samples"]
    from torchvision.io import decode_image

    image = decode_image(files["IMAGE"]).float() / 255
    torch.testing.assert_close(samples[..., :14], image[..., :14].expand(3, -1, -1, -1), rtol=0, atol=1e-6)
    assert not torch.allclose(samples[..., 14:], image[..., 14:].expand(3, -1, -1, -1), atol=0.05)


@pytest.mark.slow
def test_sampler_settings_on_a_model_without_a_schedule_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = ["train.steps=3", "train.samples=0"]
    train_spec(load_spec(ROOT / "specs" / "wgan_gp_8gaussians.yaml", overrides), Options(run_dir=run, quiet=True))
    result = dagcv("sample", str(run), "--sampler", "ddim", "--guidance", "2", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "--sampler, --guidance: 'wgan_gp_8gaussians' is not a diffusion model" in result.stderr


def test_guidance_on_an_unconditional_model_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = ["train.steps=2", "train.samples=0", "data.train.dataset.size=512"]
    train_spec(load_spec(GAUSSIANS, overrides), Options(run_dir=run, quiet=True))
    result = dagcv("sample", str(run), "--guidance", "3", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "--guidance 3.0: 'ddpm_8gaussians' is an unconditional model" in result.stderr


# -- latent diffusion --------------------------------------------------------------------------------------------


def test_latent_diffusion_learns_scaled_cached_latents_and_decodes_them(tmp_path: Path) -> None:
    """Stage 2 reads the frozen encoder's means from the cache, scales them to unit variance on its first batch,
    and sampling undoes the scale and decodes through the frozen decoder."""
    run = tmp_path / "run"
    overrides = [RANDOM_DIGITS, "train.threads=1", "train.samples=4", "train.sampler.steps=3",
                 *(f"train.stages.{i}.epochs=null" for i in (0, 1)), "train.stages.0.steps=2",
                 "train.stages.1.steps=3", "blocks.denoiser.hidden=[32]"]  # fmt: skip
    train_spec(load_spec(LDM, overrides), Options(run_dir=run, quiet=True))
    assert len(list((run / "cache").glob("diffusion-*.pt"))) == 1
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert bool(state["model"]["scale.fitted"]) and state["model"]["scale.scale"].item() != 1.0
    assert state["loop"]["ema"]["updates"] == 3
    compiled = averaged(run)
    parts = diffusion_parts(compiled.built.sg)
    assert parts is not None and parts.data == ("scale", "out") and data_shape(compiled.built.sg, parts, 5) == (5, 20)
    model = compiled.module.eval()
    latents = torch.randn(5, 20)
    by_hand = torch.sigmoid(model.decoder(latents / model.scale.scale))
    torch.testing.assert_close(decode(model, compiled.built.sg, parts, latents), by_hand)
    images = draw(compiled, 5, seed=0, sampler=SamplerConfig(steps=3, clip=None))
    assert images.shape == (5, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert any((run / "plots").glob("samples_diffusion_epoch*.png"))
