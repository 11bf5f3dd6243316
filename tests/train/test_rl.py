"""The on-policy RL loops: GAE against Stable-Baselines3, the objectives against their formulas, the env
semantics that fail silently (autoreset, truncation bootstraps), determinism, resume, and learning CartPole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from blocks.rl import EntropyBonus, PPOClipObjective, ValueLoss, VanillaPGObjective
from dagcv.spec import load_spec
from dagcv.train.checkpoint import load_checkpoint
from dagcv.train.rl import compute_gae, kl_and_clip_fraction, monte_carlo_returns
from dagcv.train.runner import Options, make_loop, resume_run, train_spec
from tests.conftest import ROOT

PPO = ROOT / "specs" / "ppo_cartpole.yaml"


def random_rollout(steps: int, envs: int, seed: int) -> dict[str, torch.Tensor]:
    """Rewards, values and episode ends (about one step in eight ends an episode), as a rollout stores them."""
    g = torch.Generator().manual_seed(seed)
    return {
        "rewards": torch.randn(steps, envs, generator=g),
        "values": torch.randn(steps, envs, generator=g),
        "dones": (torch.rand(steps, envs, generator=g) < 0.125).float(),
        "last_value": torch.randn(envs, generator=g),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_and_returns_equal_stable_baselines3(seed: int) -> None:
    from gymnasium import spaces
    from stable_baselines3.common.buffers import RolloutBuffer

    steps, envs, gamma, lam = 64, 4, 0.98, 0.8
    r = random_rollout(steps, envs, seed)
    ours_adv, ours_ret = compute_gae(r["rewards"], r["values"], r["dones"], r["last_value"], gamma=gamma, lam=lam)
    buffer = RolloutBuffer(steps, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), "cpu", gae_lambda=lam, gamma=gamma,
                           n_envs=envs)  # fmt: skip
    for t in range(steps):
        # SB3 marks the first step of an episode; our dones mark the last one (truncations are bootstrapped into
        # the reward before either sees it, as SB3's collect_rollouts does).
        start = r["dones"][t - 1].numpy() if t else np.ones(envs)
        buffer.add(np.zeros((envs, 3)), np.zeros((envs, 1)), r["rewards"][t].numpy(), start, r["values"][t],
                   torch.zeros(envs))  # fmt: skip
    buffer.compute_returns_and_advantage(r["last_value"], r["dones"][-1].numpy())
    assert torch.allclose(ours_adv, torch.as_tensor(buffer.advantages), atol=1e-6)
    assert torch.allclose(ours_ret, torch.as_tensor(buffer.returns), atol=1e-6)


def test_monte_carlo_returns_stop_at_episode_ends_and_mark_unfinished_steps() -> None:
    rewards = torch.ones(5, 1)
    dones = torch.tensor([[0.0], [1.0], [0.0], [0.0], [0.0]])
    returns, complete = monte_carlo_returns(rewards, dones, gamma=0.5)
    assert returns[:2, 0].tolist() == [1.5, 1.0]
    assert complete[:, 0].tolist() == [True, True, False, False, False]


def test_clipped_objective_value_clipping_and_kl_match_their_formulas() -> None:
    dist = Categorical(logits=torch.zeros(4, 2))  # π(a) = 0.5 for every action
    action = torch.tensor([0, 0, 1, 1])
    log_half = torch.log(torch.tensor(0.5))
    # Ratios 2, 0.5, 1.1, 0.9 against advantages +1, +1, -1, -1:
    old = torch.stack([log_half - np.log(2.0), log_half - np.log(0.5), log_half - np.log(1.1), log_half - np.log(0.9)])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # max(-A·r, -A·clip(r)) per sample: -1.2 (clipped), -0.5, 1.1, 0.9 (unclipped, pessimistic) -> mean 0.075
    loss = PPOClipObjective(clip_coef=0.2)(dist, action, old, adv)
    assert abs(loss.item() - 0.075) < 1e-6
    # The vanilla objective ignores the old log-probs: -mean(log 0.5 · A) = 0 here.
    assert abs(VanillaPGObjective()(dist, action, old, adv).item()) < 1e-6
    annealed = PPOClipObjective(clip_coef=0.2, anneal=True)
    annealed.set_progress(0.5)  # ε = 0.1: ratio 2 clips at 1.1
    assert abs(annealed(dist, action[:1], old[:1], adv[:1]).item() - (-1.1)) < 1e-6
    value, returns, old_value = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5])
    assert ValueLoss()(value, returns).item() == 2.0
    # clipped values: 1 + clip(1, ±0.2) = 1.2 and 0.5 + clip(-0.5, ±0.2) = 0.3; max of squares: 4 and 0.09
    assert abs(ValueLoss(clip_coef=0.2)(value, returns, old_value).item() - (4 + 0.09) / 2) < 1e-6
    kl, clipfrac = kl_and_clip_fraction(torch.log(torch.tensor([2.0, 1.0, 0.9])), 0.2)
    assert abs(kl - np.mean([(2 - 1) - np.log(2), 0.0, (0.9 - 1) - np.log(0.9)])) < 1e-6
    assert abs(clipfrac - 1 / 3) < 1e-6
    assert abs(EntropyBonus()(dist).item() + np.log(2)) < 1e-6


def test_truncated_steps_are_bootstrapped_from_the_final_observation_and_terminations_are_not() -> None:
    spec = load_spec(PPO, ["blocks.env.max_episode_steps=3", "blocks.env.num_envs=2", "train.rollout_steps=9"])
    loop = make_loop(spec, Options(quiet=True), run_dir=Path("/nonexistent"))
    critic = loop.model.critic.layers[-1]
    torch.nn.init.zeros_(critic.weight)
    torch.nn.init.constant_(critic.bias, 10.0)  # V = 10 everywhere
    rollout = loop.collect()
    # CartPole cannot fall within 3 steps: every third step is a truncation, bootstrapped with γ·V(final_obs).
    assert rollout.dones[:, 0].tolist() == [0, 0, 1] * 3 and not rollout.terminated.any()
    expected = torch.tensor([1.0, 1.0, 1.0 + 0.98 * 10.0] * 3)
    assert torch.allclose(rollout.rewards[:, 0], expected)
    # SAME_STEP autoreset: the observation after a truncation starts a new episode (CartPole resets near 0).
    assert rollout.obs[3].abs().max() < 0.05 < (rollout.obs[2] - rollout.obs[3]).abs().max() + 0.05
    loop.envs.close()
    # A policy that always pushes left drops the pole: terminations, with no bootstrap.
    loop = make_loop(load_spec(PPO, ["blocks.env.num_envs=1", "train.rollout_steps=40"]), Options(quiet=True),
                     run_dir=Path("/nonexistent"))  # fmt: skip
    last = loop.model.policy.layers[-1]
    torch.nn.init.zeros_(last.weight)
    last.bias.data = torch.tensor([20.0, -20.0])
    rollout = loop.collect()
    ends = rollout.terminated[:, 0].bool()
    assert ends.any() and torch.equal(rollout.dones[:, 0].bool(), ends)
    assert torch.all(rollout.rewards[ends, 0] == 1.0)
    loop.envs.close()


def _short(run: Path, *extra: str) -> list[dict]:
    spec = load_spec(PPO, ["train.env_steps=1024", "train.update_epochs=2", "train.checkpoint_every=1", *extra])
    train_spec(spec, Options(run_dir=run, quiet=True))
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_at_a_fixed_seed_repeats_bit_for_bit_and_resumes_exactly(tmp_path: Path) -> None:
    first, second = _short(tmp_path / "a"), _short(tmp_path / "b")
    drop = ("sps",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in first] == [
        {k: v for k, v in r.items() if k not in drop} for r in second
    ]
    a, b = (
        load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt"),
        load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt"),
    )
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # A run killed after its second checkpoint (of four), then resumed: the parameters of the uninterrupted run.
    spec = load_spec(PPO, ["train.env_steps=1024", "train.update_epochs=2", "train.checkpoint_every=1"])
    loop = make_loop(spec, Options(run_dir=tmp_path / "c", quiet=True))
    loop.ctx.write_header(loop.compiled.files()["spec.resolved.yaml"])
    save = loop.save

    def save_then_die(name: str = "last.pt") -> None:
        save(name)
        if loop.iteration == 2:
            raise KeyboardInterrupt

    loop.save = save_then_die
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")["loop"]["iteration"] == 2
    resume_run(tmp_path / "c", Options(quiet=True))
    c = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")
    assert c["loop"]["iteration"] == 4 and c["loop"]["step"] == a["loop"]["step"] == 1024
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_ppo_learns_cartpole_then_plays_films_and_is_cloned(tmp_path: Path) -> None:
    run = tmp_path / "run"
    records = _short(run, "train.env_steps=20480", "train.update_epochs=20")
    returns = [r["episodic_return"] for r in records if "episodic_return" in r]
    print(f"PPO CartPole: first {returns[0]:.1f}, last {returns[-1]:.1f} over {len(returns)} iterations")
    assert returns[0] < 50 and max(returns[-5:]) > 200  # random play scores about 22
    assert (run / "plots" / "return.png").read_bytes()[:4] == b"\x89PNG"
    from dagcv.train.rl_eval import play, record

    played = play(run, episodes=3, video=tmp_path / "episode.gif")
    assert played["mean_return"] > 200 and (tmp_path / "episode.gif").read_bytes()[:6] == b"GIF89a"
    written = record(run, tmp_path / "steps", episodes=5)
    # Behavioural cloning: the supervised loop fits the expert's actions from the recorded steps.
    data = str(tmp_path / "steps")
    overrides = [f"data.train.dataset.root={data}", f"data.val.dataset.root={data}", "train.epochs=10"]
    bc = load_spec(ROOT / "specs" / "bc_cartpole.yaml", overrides)
    result = train_spec(bc, Options(run_dir=tmp_path / "bc", quiet=True))
    assert written["steps"] > 500 and result.final["val/accuracy"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize(("loop", "steps", "log_every"), [("a2c", 40_000, 10), ("reinforce", 24_000, 1)])
def test_a2c_and_reinforce_improve_on_a_short_run(tmp_path: Path, loop: str, steps: int, log_every: int) -> None:
    spec = load_spec(
        ROOT / "specs" / f"{loop}_cartpole.yaml", [f"train.env_steps={steps}", f"train.log_every={log_every}"]
    )
    result = train_spec(spec, Options(run_dir=tmp_path / loop, quiet=True))
    returns = [r["episodic_return"] for r in result.history if "episodic_return" in r]
    assert returns and max(returns[len(returns) // 2 :]) > 1.5 * returns[0], returns


@pytest.mark.parametrize(("spec", "hidden"), [("ppo_pendulum", "[256, 256]"), ("ppo_cartpole", "[512, 512]")])
def test_a_policy_large_enough_for_meta_shape_propagation_compiles(spec: str, hidden: str) -> None:
    """A big policy's distribution is made on meta tensors at build time; its small consumers run on meta too."""
    from dagcv.compiler import compile_spec

    compiled = compile_spec(load_spec(ROOT / "specs" / f"{spec}.yaml", [f"blocks.policy.hidden={hidden}"]))
    assert sum(p.numel() for p in compiled.module.policy.parameters()) > 1 << 16


def test_envs_with_every_wrapper_pickle_and_clip_action_clips() -> None:
    """Checkpoints keep the envs (and their normalisers' statistics) only if they pickle: Gymnasium's ClipAction
    holds a lambda, dagcv's does not."""
    import pickle

    from dagcv.envs import make_vector_env

    wrappers = [{"type": "clip_action"}, {"type": "normalize_observation"}, {"type": "normalize_reward"}]
    envs = make_vector_env("Pendulum-v1", {}, wrappers, None, num_envs=2, seed=0)
    envs.step(np.full((2, 1), 5.0, dtype=np.float32))
    copy = pickle.loads(pickle.dumps(envs))
    inner = copy.envs[0]
    while not hasattr(inner, "low"):
        inner = inner.env
    assert inner.action(np.array([5.0], dtype=np.float32)) == 2.0 and copy.single_action_space.high[0] == np.inf


def test_eval_reports_the_envs_own_return_under_reward_normalisation(tmp_path: Path) -> None:
    """`dagcv eval` sums the env's rewards, not the normalised ones the wrapper hands the learner."""
    from dagcv.train.rl_eval import TrainedPolicy, play

    spec = load_spec(ROOT / "specs" / "ppo_pendulum.yaml", ["train.env_steps=4096", "train.threads=1"])
    run = train_spec(spec, Options(quiet=True, run_dir=tmp_path / "run")).run_dir
    played = play(run, episodes=1, seed=3)
    import gymnasium as gym

    policy = TrainedPolicy(run)
    env = gym.make("Pendulum-v1")  # without the spec's wrappers: the env's own rewards (it clips torques itself)
    obs, _ = env.reset(seed=3)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.action(obs))
        total, done = total + float(reward), terminated or truncated
    assert played["mean_return"] == pytest.approx(total, rel=1e-5) and played["mean_length"] == 200
