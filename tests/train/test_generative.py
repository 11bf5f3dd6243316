"""The generative loops as a user relies on them: the gan loop's players learn and resume exactly, the multistage
loop caches what the frozen stage computes and resumes in either stage, and `dagcv sample` draws what the spec
defines (or says clearly why it cannot). Data are generated (the 2-D mixture, random 28×28 images): no download,
no shared dataset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dagcv.compiler import compile_spec
from dagcv.graph import source_argument
from dagcv.spec import load_spec
from dagcv.train.checkpoint import load_checkpoint
from dagcv.train.runner import Options, make_loop, resume_run, train_spec
from dagcv.train.sampling import draw, sample_program, sampling_arguments
from tests.conftest import ROOT

GAUSSIANS = ROOT / "specs" / "wgan_gp_8gaussians.yaml"
CGAN = ROOT / "specs" / "cgan_mnist.yaml"
VQVAE_PRIOR = ROOT / "specs" / "vqvae_prior_mnist.yaml"
RANDOM_DIGITS = (
    "data.train={dataset: {type: fake_data, size: 64, channels: 1, height: 28, width: 28}, batch_size: 16, "
    "shuffle: true}"
)


def records(run: Path, kind: str = "step") -> list[dict]:
    return [r for line in (run / "metrics.jsonl").read_text().splitlines() if (r := json.loads(line))["kind"] == kind]


def trained(run: Path):
    """The compiled spec of a run with its last weights."""
    compiled = compile_spec(load_spec(run / "spec.resolved.yaml"))
    compiled.module.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    return compiled


def mode_coverage(points: torch.Tensor, modes: int = 8, radius: float = 2.0, std: float = 0.02) -> tuple[int, float]:
    """How many modes the points hit, and the fraction within 3σ of a mode."""
    angles = torch.arange(modes) * 2 * math.pi / modes
    centres = radius * torch.stack([angles.cos(), angles.sin()], 1)
    distance, nearest = torch.cdist(points, centres).min(1)
    close = distance < 3 * std
    return len(set(nearest[close].tolist())), close.float().mean().item()


@pytest.mark.slow
def test_wgan_gp_covers_the_eight_gaussians(tmp_path: Path) -> None:
    """The shipped toy spec, trained in full (about a minute): ≥ 7 of 8 modes, ≥ 80% of samples within 3σ."""
    run = tmp_path / "run"
    train_spec(load_spec(GAUSSIANS), Options(run_dir=run, quiet=True))
    modes, close = mode_coverage(draw(trained(run), 2000, seed=1))
    assert modes >= 7 and close >= 0.8, (modes, close)
    assert (run / "plots" / "samples_epoch001.png").is_file()


def test_each_player_lowers_its_own_loss_against_a_frozen_opponent(tmp_path: Path) -> None:
    """With the generator (almost) frozen the critic's loss falls; with the critic frozen the generator's does."""
    common = ["train.steps=60", "train.log_every=20", "train.threads=1", "train.samples=0",
              "train.generator.schedule=null", "train.critic.schedule=null"]  # fmt: skip
    frozen_generator = ["train.generator.optimizer.lr=1.0e-12", "train.critic.losses={d_loss: 1.0}"]
    train_spec(load_spec(GAUSSIANS, [*common, *frozen_generator]), Options(run_dir=tmp_path / "c", quiet=True))
    d_loss = [r["train/d_loss"] for r in records(tmp_path / "c")]
    assert d_loss[-1] < d_loss[0] - 0.1, d_loss
    frozen_critic = ["train.critic.optimizer.lr=1.0e-12", "train.n_critic=1"]
    train_spec(load_spec(GAUSSIANS, [*common, *frozen_critic]), Options(run_dir=tmp_path / "g", quiet=True))
    g_loss = [r["train/g_loss"] for r in records(tmp_path / "g")]
    assert g_loss[-1] < g_loss[0] - 0.05, g_loss


def test_wgan_weight_clipping_keeps_every_critic_weight_in_range(tmp_path: Path) -> None:
    """The original WGAN's settings (no penalty): clip 0.01, RMSProp 5e-5, five critic steps per generator step."""
    overrides = ["train.steps=5", "train.samples=0", "train.threads=1", "train.critic.losses=[d_loss]",
                 "train.critic.clip_weights=0.01", "train.critic.optimizer={type: rmsprop, lr: 5.0e-5}",
                 "train.generator.optimizer={type: rmsprop, lr: 5.0e-5}", "train.critic.schedule=null",
                 "train.generator.schedule=null"]  # fmt: skip
    train_spec(load_spec(GAUSSIANS, overrides), Options(run_dir=tmp_path / "run", quiet=True))
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    critic = [v for k, v in weights.items() if k.startswith("critic.")]
    assert critic and all(v.abs().max() <= 0.01 for v in critic)
    assert max(v.abs().max() for k, v in weights.items() if k.startswith("generator.")) > 0.01  # not clipped


def _die_after(loop, when) -> None:
    save = loop.save

    def save_then_die(name: str = "last.pt") -> None:
        save(name)
        if when(loop):
            raise KeyboardInterrupt

    loop.save = save_then_die


def straight_and_resumed(spec, tmp_path: Path, kill_at: int) -> tuple[dict, dict]:
    """The last checkpoints of a run trained straight (``straight/``) and of one killed right after the checkpoint
    at step ``kill_at``, then resumed (``killed/``)."""
    train_spec(spec, Options(run_dir=tmp_path / "straight", quiet=True))
    loop = make_loop(spec, Options(run_dir=tmp_path / "killed", quiet=True))
    loop.ctx.write_header(loop.compiled.files()["spec.resolved.yaml"])
    _die_after(loop, lambda lp: lp.step == kill_at)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    resume_run(tmp_path / "killed", Options(quiet=True))
    return tuple(load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("straight", "killed"))


def test_a_gan_run_killed_after_a_checkpoint_resumes_the_same_trajectory(tmp_path: Path) -> None:
    """Noise sources, both optimizers and the data position come back: the weights of the uninterrupted run."""
    overrides = [RANDOM_DIGITS, "train.epochs=null", "train.steps=6", "train.checkpoint_every=2", "train.log_every=1",
                 "blocks.generator.channels=8", "blocks.critic.channels=8"]  # fmt: skip
    a, b = straight_and_resumed(load_spec(CGAN, overrides), tmp_path, kill_at=4)
    assert a["loop"]["step"] == b["loop"]["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train/d_loss"] for r in records(tmp_path / "straight")] == [
        r["train/d_loss"] for r in records(tmp_path / "killed")
    ]


def _vqvae_prior(stage_steps: tuple[int, int]) -> list[str]:
    return [RANDOM_DIGITS.replace("size: 64", "size: 48"), "train.threads=1",
            "train.log_every=1", "train.samples=4", "blocks.prior.hidden=8", "blocks.prior.layers=2",
            *(f"train.stages.{i}.epochs=null" for i in (0, 1)),
            *(f"train.stages.{i}.steps={n}" for i, n in enumerate(stage_steps))]  # fmt: skip


def test_stage_two_trains_on_cached_codes_of_the_frozen_stage_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = load_spec(VQVAE_PRIOR, _vqvae_prior((3, 24)))
    loop = make_loop(spec, Options(run_dir=run, quiet=True))
    loop.ctx.write_header(loop.compiled.files()["spec.resolved.yaml"])
    stage_one: dict[str, torch.Tensor] = {}
    enter = loop._enter

    def remember(index: int) -> None:
        if index == 1:
            stage_one.update({k: v.clone() for k, v in loop.model.state_dict().items() if not k.startswith("prior.")})
        enter(index)

    loop._enter = remember
    loop.run()
    (cache,) = (run / "cache").glob("prior-*.pt")
    cached = torch.load(cache, weights_only=True)
    # The codes a fresh pass of the trained, frozen encoder and quantizer gives, over the split in order.
    model = trained(run).module.eval()
    images = torch.cat([b["image"] for b in loop.data.__class__(**_loader_args(loop)).epoch(0)])
    with torch.no_grad():
        fresh = model.quantizer(model.encoder(images))["codes"]
    assert torch.equal(cached[source_argument("quantizer", "codes")], fresh)
    # Stage 2 left stage 1's weights alone; its log continues the step count.
    final = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(final[k], v) for k, v in stage_one.items())
    assert [r["stage"] for r in records(run)] == ["autoencoder"] * 3 + ["prior"] * 24
    prior_loss = [r["train/prior_loss"] for r in records(run) if r["stage"] == "prior"]
    assert prior_loss[-1] < prior_loss[0] - 0.1, prior_loss  # the prior learns the cached codes
    assert (run / "plots" / "samples_prior_epoch001.png").is_file()


def _loader_args(loop) -> dict:
    """An in-order loader over the training split (what the cache pass reads)."""
    from dagcv.train.data import build_dataset

    sg = loop.sg
    split = sg.training.data["train"]
    return {"dataset": build_dataset(sg, split), "split": split, "fields": sg.training.fields["train"], "seed": 0,
            "rank": 0, "world": 1, "train": False}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [2, 5], ids=["in stage 1", "in stage 2"])
def test_a_multistage_run_resumes_in_either_stage(tmp_path: Path, kill_at: int) -> None:
    spec = load_spec(VQVAE_PRIOR, [*_vqvae_prior((3, 4)), "train.samples=0", "train.checkpoint_every=1"])
    train_spec(spec, Options(run_dir=tmp_path / "straight", quiet=True))
    loop = make_loop(spec, Options(run_dir=tmp_path / "killed", quiet=True))
    loop.ctx.write_header(loop.compiled.files()["spec.resolved.yaml"])
    _die_after(loop, lambda lp: lp.step == kill_at)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["loop"]["stage"] == (kill_at > 3)
    resume_run(tmp_path / "killed", Options(quiet=True))
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("straight", "killed"))
    assert a["loop"]["step"] == b["loop"]["step"] == 7
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert records(tmp_path / "straight") == records(tmp_path / "killed") or _same_losses(tmp_path)


def _same_losses(tmp_path: Path) -> bool:
    def losses(run: str) -> list:
        return [{k: v for k, v in r.items() if k.startswith("train/")} for r in records(tmp_path / run)]

    return losses("straight") == losses("killed")


# -- dagcv sample ------------------------------------------------------------------------------------------------


def dagcv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def cgan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cgan") / "run"
    overrides = [RANDOM_DIGITS, "train.epochs=null", "train.steps=2", "train.threads=1", "blocks.generator.channels=8",
                 "blocks.critic.channels=8"]  # fmt: skip
    train_spec(load_spec(CGAN, overrides), Options(run_dir=run, quiet=True))
    return run


@pytest.mark.slow
def test_sample_writes_a_grid_and_the_tensors_of_the_requested_class(cgan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sevens.png"
    result = dagcv("sample", str(cgan_run), "-n", "8", "--class", "7", "--seed", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    saved = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saved["samples"].shape == (8, 1, 28, 28)
    assert saved["samples"].min() >= 0 and saved["samples"].max() <= 1 and saved["seed"] == 3
    compiled = trained(cgan_run)
    program = sample_program(compiled.module, compiled.built.sg)
    args = sampling_arguments(program, compiled.built.sg, compiled.built.objects, 8, seed=3, label=7)
    assert torch.equal(args["label"], torch.full((8,), 7))
    assert torch.equal(draw(compiled, 8, seed=3, label=7), saved["samples"])  # the seed decides the samples


@pytest.mark.slow
def test_sample_refuses_a_class_outside_the_label_range(cgan_run: Path, tmp_path: Path) -> None:
    result = dagcv("sample", str(cgan_run), "--class", "10", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "--class 10 is outside the label range 0–9 of 'label'" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_sampling_a_model_without_a_sampler_says_how_to_define_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = ["train.epochs=null", "train.steps=1", "train.eval_split=null", "train.metrics=[]"]
    train_spec(load_spec(ROOT / "specs" / "mlp_digits.yaml", overrides), Options(run_dir=run, quiet=True))
    result = dagcv("sample", str(run), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "defines no sampler: it has no output named 'samples'" in result.stderr
    assert "add `samples: <node>` to outputs" in result.stderr


def test_compiling_leaves_running_state_as_the_blocks_were_built() -> None:
    """Shape propagation runs train-only blocks in train mode on example values: an EMA codebook, its counters
    and batch-norm statistics must not learn from them."""
    text = (
        "dagcv: 1\nname: ema\ninputs:\n  image: Image[B, 1, 28, 28]\nblocks:\n"
        "  encoder: {type: conv_encoder, in: image, mode: train}\n"
        "  quantizer: {type: vector_quantizer_ema, in: encoder, num_codes: 8, restart_after: 1, mode: train}\n"
        "outputs:\n  loss: quantizer.commitment_loss\n"
    )
    from blocks.quantizers import VectorQuantizerEMA
    from dagcv.spec import parse_spec_text

    torch.manual_seed(0)
    compiled = compile_spec(parse_spec_text(text, "ema.yaml"))
    fresh = VectorQuantizerEMA(embedding_dim=16, num_codes=8, restart_after=1)
    for name, buffer in fresh.named_buffers():
        if name not in ("codebook", "embedding_sum"):  # drawn at random; the sums start from the codebook
            assert torch.equal(getattr(compiled.module.quantizer, name), buffer), name
    assert torch.equal(compiled.module.quantizer.embedding_sum, compiled.module.quantizer.codebook)


@pytest.mark.slow
def test_a_vae_logs_its_importance_weighted_nll_and_draws_a_grid_per_epoch(tmp_path: Path) -> None:
    """The supervised loop on vae_mnist: the IWAE bound is logged per evaluation (finite, positive, within twice
    the NLL of a coin per pixel), a sample grid is drawn per epoch, and sampling runs the `mode: sample` path
    (prior → shared decoder → sigmoid). The bound itself is tested against its formula in tests/blocks/test_vae.py."""
    data = "{dataset: {type: fake_data, size: 32, channels: 1, height: 28, width: 28}, batch_size: 16"
    overrides = [f"data.train={data}, shuffle: true}}", f"data.val={data}}}", "train.epochs=1",
                 "train.eval_every=1", "train.threads=1", "blocks.encoder.hidden=[16]", "blocks.decoder.hidden=[16]",
                 "blocks.iwae.k=10", "blocks.z_k.k=10"]  # fmt: skip
    run = tmp_path / "run"
    train_spec(load_spec(ROOT / "specs" / "vae_mnist.yaml", overrides), Options(run_dir=run, quiet=True))
    (summary,) = records(run, "epoch")
    assert 0 < summary["val/iwae_nll"] < 28 * 28 * math.log(2) * 2
    assert (run / "plots" / "samples_epoch001.png").is_file()
    samples = draw(trained(run), 5, seed=0)
    assert samples.shape == (5, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
