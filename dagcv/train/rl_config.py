"""The ``train:`` sections of the on-policy RL loops (``ppo``, ``a2c``, ``reinforce``) and their static checks.

A policy-gradient spec is a graph over an environment block: ``env -> policy -> critic``, plus objective blocks
(``ppo_clip_objective``, ``value_loss``, ``entropy_bonus``, ...) that read what the rollout stored. The loop
feeds those as spec inputs, by name::

    inputs:
      action: Action[B]            # the actions taken (Action[B, A] for continuous ones)
      old_log_prob: Value[B]       # their log-probabilities when they were taken
      advantage: Value[B]          # GAE(λ) advantages (Monte-Carlo returns minus the baseline for REINFORCE)
      returns: Value[B]            # advantage + old value: the critic's regression target
      old_value: Value[B]          # the critic's values at rollout time (for value clipping)

and reads the policy's ``Distribution`` and the critic's ``Value`` through spec outputs (``policy:`` and
``value:`` below). The losses it minimises are the spec's Loss outputs, weighted by ``losses:`` (PPO's
``vf_coef`` and ``ent_coef`` are those weights). Nothing here imports torch.

>>> PPOConfig.model_validate({"loop": "ppo", "env_steps": 1000, "optimizer": {"type": "adam", "lr": 1e-3}}).minibatches
4
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Ge, Le
from pydantic import Field

from dagcv.errors import did_you_mean
from dagcv.train.config import OptimizerConfig, RunConfig
from dagcv.types import KINDS, is_subkind

Fraction = Annotated[float, Ge(0), Le(1)]

# What a rollout stores, fed to the spec inputs of the same name: the kind each input must have.
ROLLOUT_INPUTS = {
    "action": "Action",
    "old_log_prob": "Value",
    "advantage": "Value",
    "returns": "Value",
    "old_value": "Value",
}


class OnPolicyConfig(RunConfig):
    """What the on-policy loops share: the environment, the budget, the rollout, the discount and the optimizer."""

    env: str = Field(default="env", description="the env block the loop steps")
    env_steps: int = Field(gt=0, description="total environment steps (all envs together)")
    rollout_steps: int = Field(default=128, gt=0, description="steps per env between two updates")
    gamma: Fraction = Field(default=0.99, description="discount factor")
    gae_lambda: Fraction = Field(default=0.95, description="GAE λ (1: Monte-Carlo advantages)")
    optimizer: OptimizerConfig
    anneal_lr: bool = Field(default=True, description="decay the learning rate linearly to 0 over the run")
    max_grad_norm: float | None = Field(default=0.5, gt=0, description="clip the global gradient norm")
    normalize_advantage: bool = Field(default=True, description="normalise advantages per minibatch")
    update_epochs: int = Field(default=4, gt=0, description="passes over each rollout")
    minibatches: int = Field(default=4, gt=0, description="minibatches per pass")
    target_kl: float | None = Field(default=None, gt=0, description="stop a rollout's epochs past this KL")
    losses: dict[str, float] | None = Field(default=None, description="Loss output → weight (default: all, 1.0)")
    policy: str = Field(default="policy", description="the spec output holding the action distribution")
    value: str | None = Field(default="value", description="the spec output holding the state value (or null)")
    log_every: int = Field(default=1, gt=0, description="rollouts between log records")
    checkpoint_every: int = Field(default=10, gt=0, description="rollouts between checkpoints")
    stop_at_return: float | None = Field(
        default=None, description="stop once the mean return of the last 20 episodes reaches this"
    )

    PROGRAMS: ClassVar[tuple[str, ...]] = ("act", "update", "monitor")

    def programs(self, outputs: dict[str, str]) -> dict[str, tuple[list[str], str]]:
        """``act``: the distribution and value for acting (no losses); ``update``: the weighted losses,
        distribution and value on a minibatch of the rollout; ``monitor``: the losses weighted 0 (an entropy bonus
        switched off), computed without gradients once per rollout for the log, not on every minibatch."""
        acting = [o for o in (self.policy, self.value) if o is not None]
        losses = [name for name, kind in outputs.items() if kind == "Loss"]
        weights = self.losses or dict.fromkeys(losses, 1.0)
        trained = [name for name in losses if weights.get(name, 0.0) != 0.0]
        programs = {"act": (acting, "eval"), "update": ([*trained, *acting], "train")}
        if len(trained) < len(losses):
            programs["monitor"] = ([name for name in losses if name not in trained], "train")
        return programs


class PPOConfig(OnPolicyConfig):
    """Proximal policy optimisation (Schulman et al. 2017), as CleanRL's ``ppo.py`` runs it."""

    loop: Literal["ppo"] = "ppo"


class A2CConfig(OnPolicyConfig):
    """Advantage actor-critic: one synchronous gradient step per short rollout (Mnih et al. 2016, SB3's defaults)."""

    loop: Literal["a2c"] = "a2c"
    rollout_steps: int = Field(default=5, gt=0)
    gae_lambda: Fraction = 1.0
    update_epochs: Literal[1] = 1
    minibatches: Literal[1] = 1
    normalize_advantage: bool = False


class ReinforceConfig(OnPolicyConfig):
    """REINFORCE (Williams 1992): Monte-Carlo returns of whole episodes, minus the critic's value when the spec has
    one (the baseline). The steps of an episode still running when a rollout ends are left out of that update."""

    loop: Literal["reinforce"] = "reinforce"
    rollout_steps: int = Field(default=500, gt=0)
    gae_lambda: Literal[1.0] = 1.0
    update_epochs: Literal[1] = 1
    minibatches: Literal[1] = 1
    value: str | None = None


def check_on_policy(sg: Any, cfg: OnPolicyConfig, splits: dict | None) -> None:
    """The env block, the policy and value outputs, the Loss outputs and the rollout inputs exist with their kinds."""
    smap = sg.spec.source
    env = sg.g.nodes[cfg.env] if cfg.env in sg.g else None
    contract = env.get("contract") if env else None
    if contract is None or contract.family != "env":
        envs = [n for n in sg.blocks() if (c := sg.node(n).get("contract")) and c.family == "env"]
        sg.error(
            f"train.env: no env block '{cfg.env}'",
            smap.value("train", "env") if "env" in (sg.spec.train or {}) else smap.key("train"),
            hint=did_you_mean(cfg.env, envs) or (f"env blocks: {', '.join(envs)}" if envs else "add a gym_env block"),
        )
    else:
        num_envs = env.get("params", {}).get("num_envs", 1) or 1
        batch = cfg.rollout_steps * num_envs
        if cfg.minibatches > batch:
            sg.error(
                f"train.minibatches: {cfg.minibatches} minibatches of a rollout of {batch} steps "
                f"({cfg.rollout_steps} steps × {num_envs} envs)",
                smap.value("train", "minibatches"),
                hint=f"at most {batch}; a minibatch holds rollout_steps × num_envs / minibatches steps",
            )
    for key, want in (("policy", "Distribution"), ("value", "Value")):
        name = getattr(cfg, key)
        if name is None:
            continue
        found = sg.outputs.get(name)
        kind = sg.out_type(*found).kind if found and sg.out_type(*found) else None
        if found is None or kind is None or not is_subkind(kind, want):
            sg.error(
                f"train.{key}: '{name}' is not an output of kind {want}" + (f" (it is {kind})" if kind else ""),
                smap.value("train", key) if key in (sg.spec.train or {}) else smap.key("train"),
                hint=did_you_mean(name, sg.outputs) or f"add `{name}: <{want.lower()} node>` to outputs:",
            )
    losses = [o for o, (n, p) in sg.outputs.items() if (t := sg.out_type(n, p)) and t.kind == "Loss"]
    if not losses:
        sg.error("train: the spec has no output of kind Loss to minimise", smap.key("train"),
                 hint="add the objective nodes (ppo_clip_objective, value_loss, ...) to outputs:")  # fmt: skip
    for name in cfg.losses or {}:
        if name not in losses:
            sg.error(f"train.losses: '{name}' is not a Loss output", smap.key("train", "losses", name),
                     hint=did_you_mean(name, losses) or f"Loss outputs: {', '.join(losses)}")  # fmt: skip
    for name in sg.spec.inputs:
        port_type = sg.node(name).get("type")
        if port_type is None or KINDS[port_type.kind].static:
            continue
        if name not in ROLLOUT_INPUTS:
            sg.error(
                f"input '{name}': the {cfg.loop} loop feeds only {', '.join(ROLLOUT_INPUTS)}",
                smap.key("inputs", name),
                hint=did_you_mean(name, ROLLOUT_INPUTS) or "observations come from the env block, not from inputs",
            )
        elif not is_subkind(port_type.kind, ROLLOUT_INPUTS[name]) and not is_subkind(
            ROLLOUT_INPUTS[name], port_type.kind
        ):
            sg.error(f"input '{name}' is {port_type.kind}, but the rollout stores {ROLLOUT_INPUTS[name]}",
                     smap.value("inputs", name), hint=f"write {name}: {ROLLOUT_INPUTS[name]}[B]")  # fmt: skip
    if splits:
        sg.error(f"data: the {cfg.loop} loop takes no dataset; its data comes from the env",
                 smap.key("data"), hint="remove the data: section")  # fmt: skip
