"""Gymnasium environments from a spec, without torch: building them, and their ports at check time.

An env block names a registered Gymnasium id, how many copies run in lockstep, its wrappers and keyword
arguments. ``dagcv check`` makes one environment to read its spaces (:func:`env_ports`), so a policy's input
size and number of actions are inferred from the env, and a categorical policy on a continuous action space is
a kind error at the policy's line. An unknown id is an error with close ids suggested; an env whose extra is not
installed (Atari, MuJoCo) says which package to install.

Vector envs are built in Gymnasium's ``SAME_STEP`` autoreset mode: the step that ends an episode returns the
first observation of the next one and puts the true last observation in ``info["final_obs"]``, so no step of a
rollout is a dummy step and truncated episodes can be bootstrapped from their real last state.

>>> env_ports({"id": "CartPole-v1", "wrappers": [], "kwargs": {}, "max_episode_steps": None})
{'observation': 'Observation[B, 4]', 'action_space': 'DiscreteSpace[2]'}
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PortError(ValueError):
    """An env block whose ports cannot be known; ``param`` names the parameter to point at."""

    def __init__(self, message: str, param: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.param, self.hint = param, hint


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormalizeObservationArgs(_Args):
    epsilon: float = Field(default=1e-8, gt=0)


class NormalizeRewardArgs(_Args):
    gamma: float = Field(default=0.99, ge=0, le=1)
    epsilon: float = Field(default=1e-8, gt=0)


class FrameStackArgs(_Args):
    stack_size: int = Field(gt=0, le=64)


class NoArgs(_Args):
    pass


# name -> (where it applies, its arguments, how to wrap). Every wrapper wraps each env, as CleanRL's make_env does:
# Gymnasium's vector normalisations refuse SAME_STEP autoreset, and a per-env statistic is what checkpoints keep
# (each env's running mean and variance, `env_statistics`).
WRAPPERS: dict[str, tuple[str, type[BaseModel], str]] = {
    "normalize_observation": ("env", NormalizeObservationArgs, "gymnasium.wrappers:NormalizeObservation"),
    "normalize_reward": ("env", NormalizeRewardArgs, "gymnasium.wrappers:NormalizeReward"),
    "clip_action": ("env", NoArgs, "dagcv.env_wrappers:ClipAction"),  # Gymnasium's does not pickle
    "frame_stack": ("env", FrameStackArgs, "gymnasium.wrappers:FrameStackObservation"),
    "flatten_observation": ("env", NoArgs, "gymnasium.wrappers:FlattenObservation"),
}


def _load(target: str) -> Callable[..., Any]:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def wrapper_args(step: dict[str, Any]) -> tuple[str, BaseModel]:
    """A wrapper entry ``{type: name, ...}`` validated; raises PortError naming the problem."""
    name = step.get("type")
    if not isinstance(name, str) or name not in WRAPPERS:
        close = difflib.get_close_matches(str(name), list(WRAPPERS), n=1)
        raise PortError(f"unknown wrapper {name!r}", "wrappers",
                        f"did you mean '{close[0]}'?" if close else f"wrappers: {', '.join(WRAPPERS)}")  # fmt: skip
    try:
        return name, WRAPPERS[name][1].model_validate({k: v for k, v in step.items() if k != "type"})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or name
        raise PortError(f"wrapper {name}: {where}: {first['msg']}", "wrappers") from None


def make_env(id: str, kwargs: dict[str, Any], wrappers: list[dict[str, Any]], max_episode_steps: int | None,
             render_mode: str | None = None) -> Any:  # fmt: skip
    """One environment with its episode statistics (recorded first, so they count the env's own rewards, before
    any normalisation) and then the spec's wrappers in order."""
    import gymnasium as gym
    from gymnasium.wrappers import RecordEpisodeStatistics

    extra = {"render_mode": render_mode} if render_mode else {}
    env = RecordEpisodeStatistics(gym.make(id, max_episode_steps=max_episode_steps, **kwargs, **extra))
    for step in wrappers:
        name, args = wrapper_args(step)
        where, _, target = WRAPPERS[name]
        if where == "env":
            env = _load(target)(env, **args.model_dump())
    return env


def make_vector_env(id: str, kwargs: dict[str, Any], wrappers: list[dict[str, Any]], max_episode_steps: int | None,
                    num_envs: int, vectorization: str = "sync", seed: int | None = None) -> Any:  # fmt: skip
    """``num_envs`` copies in SAME_STEP autoreset mode; an ended episode's statistics are in
    ``info["final_info"]["episode"]``.

    With a ``seed``, env ``i`` is seeded with ``seed + i`` and the action space with ``seed``.
    """
    import gymnasium as gym

    fns = [partial(make_env, id, kwargs, wrappers, max_episode_steps)] * num_envs  # picklable, for checkpoints
    kind = gym.vector.AsyncVectorEnv if vectorization == "async" else gym.vector.SyncVectorEnv
    envs = kind(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if seed is not None:
        envs.reset(seed=seed)
        envs.action_space.seed(seed)
    return envs


def env_ports(params: dict[str, Any]) -> dict[str, str]:
    """The port types of an env block with these parameters: its observation and action space."""
    key = json.dumps({k: params.get(k) for k in ("id", "kwargs", "wrappers", "max_episode_steps")}, sort_keys=True)
    return dict(_ports(key))


@lru_cache(maxsize=64)
def _ports(key: str) -> tuple[tuple[str, str], ...]:
    import gymnasium as gym
    from gymnasium import spaces

    params = json.loads(key)
    env_id = params["id"]
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see gymnasium.registry for the ids"
        raise PortError(f"unknown Gymnasium env id {env_id!r}", "id", hint)
    try:
        env = make_env(
            env_id, params.get("kwargs") or {}, params.get("wrappers") or [], params.get("max_episode_steps")
        )
    except PortError:
        raise
    except gym.error.DependencyNotInstalled as exc:
        hint = "install the Gymnasium extra it names, e.g. pip install 'gymnasium[box2d]'"
        raise PortError(f"{env_id} needs a package that is not installed: {exc}", "id", hint) from None
    except Exception as exc:  # the env's own constructor refuses its kwargs
        raise PortError(f"making {env_id} failed: {' '.join(str(exc).split())[:200]}", "kwargs") from None
    try:
        obs, act = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs, spaces.Box):
        raise PortError(f"{env_id}'s observation space {obs} is not a Box", "id",
                        "add a wrapper that turns it into a Box (flatten_observation)")  # fmt: skip
    if isinstance(act, spaces.Discrete):
        action = f"DiscreteSpace[{int(act.n)}]"
    elif isinstance(act, spaces.Box) and len(act.shape) == 1:
        action = f"BoxSpace[{act.shape[0]}]"
    else:
        raise PortError(f"{env_id}'s action space {act} is neither Discrete nor a flat Box", "id")
    shape = ", ".join(str(d) for d in obs.shape)
    return (("observation", f"Observation[B, {shape}]"), ("action_space", action))
