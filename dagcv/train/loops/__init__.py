"""Training loops as plug-ins: a registry of loops, each with its own config, static check and implementation.

The ``train:`` section of a spec is a union discriminated on ``loop``: ``dagcv check`` looks the loop up here,
validates the section with that loop's Pydantic config (so a PPO spec gets PPO's keys checked, with
did-you-mean), then runs the loop's static check against the graph. Neither imports torch: a loop's config and
check are plain Python, and its implementation (``target``) is imported only when a run starts.

A loop is a class built as ``Loop(ctx, compiled, cfg)`` with ``run() -> RunResult``, ``state_dict()`` and
``load_state_dict()``; it declares the programs it runs (``programs(sg, cfg)``: name → spec outputs and mode)
and its clock (the unit of its budget), and gets every service from the :class:`~dagcv.train.context.RunContext`.
Other packages add loops through the ``dagcv.loops`` entry-point group (each entry names a :class:`LoopInfo`).

>>> sorted(loop_names())[:2]
['a2c', 'ppo']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagcv.train.config import RunConfig, SupervisedConfig
from dagcv.train.diffusion_config import DiffusionConfig
from dagcv.train.gan_config import GanConfig
from dagcv.train.multistage_config import MultistageConfig
from dagcv.train.rl_config import A2CConfig, PPOConfig, ReinforceConfig

ENTRY_POINT_GROUP = "dagcv.loops"


def _load(target: str) -> Any:
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class LoopInfo:
    """A registered loop: its name, config model, static check and implementation (``module:qualname``)."""

    name: str
    config: type[RunConfig]
    target: str
    check: str  # "module:function", called as check(sg, cfg, splits) by `dagcv check`
    clock: str  # the unit of the loop's budget: epochs, steps, env steps
    doc: str

    def implementation(self) -> Any:
        return _load(self.target)

    def static_check(self) -> Callable[..., None]:
        return _load(self.check)


LOOPS: dict[str, LoopInfo] = {}


def register_loop(info: LoopInfo) -> LoopInfo:
    if info.name in LOOPS and LOOPS[info.name].target != info.target:
        raise ValueError(f"loop '{info.name}' registered twice: {LOOPS[info.name].target} and {info.target}")
    LOOPS[info.name] = info
    return info


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        register_loop(ep.load())


def loop_info(name: str) -> LoopInfo | None:
    """The loop called ``name``; third-party loops are loaded only when the name is not built in."""
    if name not in LOOPS:
        _load_plugins()
    return LOOPS.get(name)


def loop_names() -> list[str]:
    _load_plugins()
    return sorted(LOOPS)


register_loop(LoopInfo(
    "supervised", SupervisedConfig, "dagcv.train.loops.supervised:SupervisedLoop", "dagcv.train.plan:check_supervised",
    "epochs or steps", "minimise the spec's Loss outputs over batches of a dataset, with optimizer groups",
))  # fmt: skip
register_loop(LoopInfo(
    "ppo", PPOConfig, "dagcv.train.loops.ppo:PPOLoop", "dagcv.train.rl_config:check_on_policy", "env steps",
    "proximal policy optimisation on Gymnasium vector envs: rollouts, GAE, epochs of minibatches",
))  # fmt: skip
register_loop(LoopInfo(
    "a2c", A2CConfig, "dagcv.train.loops.a2c:A2CLoop", "dagcv.train.rl_config:check_on_policy", "env steps",
    "advantage actor-critic: one gradient step per short rollout",
))  # fmt: skip
register_loop(LoopInfo(
    "reinforce", ReinforceConfig, "dagcv.train.loops.reinforce:ReinforceLoop", "dagcv.train.rl_config:check_on_policy",
    "env steps", "REINFORCE: Monte-Carlo returns of whole episodes, with an optional value baseline",
))  # fmt: skip

register_loop(LoopInfo(
    "gan", GanConfig, "dagcv.train.loops.gan:GanLoop", "dagcv.train.gan_config:check_gan", "generator steps",
    "adversarial training: n_critic critic steps on real and detached fake batches, then a generator step",
))  # fmt: skip

register_loop(LoopInfo(
    "multistage", MultistageConfig, "dagcv.train.loops.multistage:MultistageLoop",
    "dagcv.train.multistage_config:check_multistage", "steps per stage",
    "stages in order, each on its own blocks; later stages read frozen, cached outputs of earlier ones",
))  # fmt: skip

register_loop(LoopInfo(
    "diffusion", DiffusionConfig, "dagcv.train.loops.diffusion:DiffusionLoop",
    "dagcv.train.diffusion_config:check_diffusion", "epochs or steps",
    "minimise a denoising loss over batches of data, average the weights, draw samples with DDPM or DDIM",
))  # fmt: skip

PLANNED = ("episodic",)
