"""The ``train:`` section of the ``gan`` loop and its static check (part of ``dagcv check``; no torch).

A GAN spec is a graph over two players: generator blocks fed by noise sources (and labels, or a paired image),
and a critic called through shared weights on real data and on the generator's output. The section names the
players, which losses each minimises and how often the critic steps::

    train:
      loop: gan
      steps: 10000             # generator steps (or epochs: passes over the real data)
      n_critic: 5              # critic steps per generator step, each on a fresh real batch
      fake: [fake]             # spec outputs the critic step receives detached (the generated batch)
      generator: {blocks: [generator], losses: [g_loss], optimizer: {type: adam, lr: 1.0e-4, betas: [0.5, 0.9]}}
      critic: {blocks: [critic], losses: {d_loss: 1, gp: 10}, optimizer: {type: adam, lr: 1.0e-4, betas: [0.5, 0.9]}}

>>> GanConfig.model_validate({"loop": "gan", "steps": 10, "fake": "fake",
...     "generator": {"blocks": ["g"], "losses": ["g_loss"], "optimizer": {"type": "adam", "lr": 1e-4}},
...     "critic": {"blocks": ["d"], "losses": ["d_loss"], "optimizer": {"type": "adam", "lr": 1e-4}}}).fakes
['fake']
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from dagcv.errors import did_you_mean
from dagcv.train.config import _STRICT, LossWeights, OptimizerConfig, RunConfig, ScheduleConfig


class PlayerConfig(BaseModel):
    """One player: the blocks it trains, the Loss outputs it minimises (with weights) and its optimizer."""

    model_config = _STRICT
    blocks: list[str] = Field(min_length=1, description="node names whose parameters this player updates")
    losses: LossWeights
    optimizer: OptimizerConfig
    schedule: ScheduleConfig | None = None
    grad_clip: float | None = Field(default=None, gt=0, description="max global gradient norm")

    @model_validator(mode="after")
    def _some_loss(self) -> PlayerConfig:
        if not self.losses:
            raise ValueError("a player minimises at least one loss")
        return self


class CriticConfig(PlayerConfig):
    clip_weights: float | None = Field(
        default=None, gt=0, description="clamp every critic weight to [-c, c] after each step (WGAN: 0.01)"
    )


class GanConfig(RunConfig):
    """Adversarial training: ``n_critic`` critic steps on real batches and detached fakes, then a generator step."""

    loop: Literal["gan"] = "gan"
    epochs: int | None = Field(default=None, gt=0, description="passes over the real data")
    steps: int | None = Field(default=None, gt=0, description="generator steps")
    n_critic: int = Field(default=1, gt=0, description="critic steps per generator step")
    fake: str | list[str] = Field(description="spec outputs holding generated batches (detached for the critic)")
    generator: PlayerConfig
    critic: CriticConfig
    train_split: str = "train"
    log_every: int = Field(default=50, gt=0, description="generator steps between logged losses")
    checkpoint_every: int | None = Field(default=None, gt=0, description="generator steps between checkpoints")
    samples: int = Field(default=64, ge=0, description="images in the grid drawn after every epoch (0: none)")

    PROGRAMS: ClassVar[tuple[str, ...]] = ("generate", "critic_losses", "generator_losses")

    @model_validator(mode="after")
    def _budget(self) -> GanConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of 'epochs' or 'steps'")
        return self

    @property
    def fakes(self) -> list[str]:
        return [self.fake] if isinstance(self.fake, str) else list(self.fake)

    def programs(self, outputs: dict[str, str]) -> dict[str, tuple]:
        """``generate``: the fake batches; ``critic_losses``: the critic's losses given the fakes (the generator
        is not run, so no gradient reaches it); ``generator_losses``: the generator's losses through the critic."""
        return {
            "generate": (self.fakes, "train"),
            "critic_losses": (list(self.critic.losses), "train", self.fakes),
            "generator_losses": (list(self.generator.losses), "train"),
        }


def check_gan(sg: Any, cfg: GanConfig, splits: dict | None) -> None:
    """Players, losses, fakes and the shared critic, each error at the spec text that causes it."""
    from dagcv.check import WEIGHTED_FAMILIES

    smap = sg.spec.source
    reported = len(sg.diagnostics)
    if splits is not None and cfg.train_split not in splits:
        sg.error(f"train.train_split: no split '{cfg.train_split}' in data",
                 smap.value("train", "train_split") if "train_split" in sg.spec.train else smap.key("train"),
                 hint=did_you_mean(cfg.train_split, splits) or "the critic needs real data: add a split")  # fmt: skip
    losses = [o for o, (n, p) in sg.outputs.items() if (t := sg.out_type(n, p)) and t.kind == "Loss"]
    fake_nodes: set[str] = set()
    for i, name in enumerate(cfg.fakes):
        path = ("train", "fake", i) if isinstance(cfg.fake, list) else ("train", "fake")
        if name not in sg.outputs:
            sg.error(f"train.fake: '{name}' is not a spec output", smap.value(*path),
                     hint=did_you_mean(name, sg.outputs) or "add the generator's output to outputs:")  # fmt: skip
        else:
            fake_nodes.add(sg.outputs[name][0])
    blocks = set(sg.blocks())
    owner: dict[str, str] = {}
    for role in ("generator", "critic"):
        player = getattr(cfg, role)
        for j, block in enumerate(player.blocks):
            if block not in blocks:
                sg.error(f"train.{role}.blocks: unknown block '{block}'", smap.value("train", role, "blocks", j),
                         hint=did_you_mean(block, blocks))  # fmt: skip
            elif block in owner:
                sg.error(f"train.{role}.blocks: '{block}' is already trained by the {owner[block]}",
                         smap.value("train", role, "blocks", j),
                         hint="each block belongs to one player")  # fmt: skip
            elif sg.node(block).get("shares"):
                root = sg.node(block)["shares"]
                sg.error(f"train.{role}.blocks: '{block}' shares the module of '{root}'",
                         smap.value("train", role, "blocks", j), hint=f"name the owner, '{root}'")  # fmt: skip
            else:
                owner[block] = role
        for loss in player.losses:
            if loss not in losses:
                sg.error(f"train.{role}.losses: '{loss}' is not a Loss output", smap.key("train", role, "losses"),
                         hint=did_you_mean(loss, losses) or f"Loss outputs: {', '.join(losses)}")  # fmt: skip
    both = set(cfg.generator.losses) & set(cfg.critic.losses)
    if both:
        sg.error(f"train: {', '.join(sorted(both))} is minimised by both players",
                 smap.key("train", "critic", "losses"),
                 hint="an adversarial objective has one loss per player (critic_loss and generator_loss)")  # fmt: skip
    if sg.diagnostics:
        return  # a wrong name above, or a graph with errors: the checks below would only repeat them
    _check_coverage(sg, owner, WEIGHTED_FAMILIES)
    _check_shared_critic(sg, cfg, fake_nodes, reported)
    _check_objectives(sg, cfg)


def _check_coverage(sg: Any, owner: dict[str, str], weighted: frozenset) -> None:
    """A block of a player's type that no player trains is a copy with weights of its own: the usual slip is a
    critic for fakes written without ``shares:``. (Whether other blocks hold weights is not known before build.)"""
    for name in sg.blocks():
        data = sg.node(name)
        contract = data.get("contract")
        if contract is None or not contract.module or contract.family not in weighted or data.get("shares"):
            continue
        same = [b for b in owner if getattr(sg.node(b).get("contract"), "name", None) == contract.name]
        same.sort(key=lambda b: owner[b] != "critic")
        if name in owner or not same:
            continue
        sg.error(
            f"'{name}' ({contract.name}) has weights of its own that neither player trains",
            data["span"],
            node=name,
            hint=f"to call the {owner[same[0]]}'s module again write `shares: {same[0]}`",
        )


def _check_shared_critic(sg: Any, cfg: GanConfig, fake_nodes: set[str], reported: int) -> None:
    """Each critic module scores real data and fakes: one module, called through ``shares:`` on both."""
    fake_side = sg.downstream(fake_nodes)
    for critic in cfg.critic.blocks:
        users = {critic} | {n for n in sg.blocks() if sg.node(n).get("shares") == critic}
        on_fakes = users & fake_side
        if on_fakes and on_fakes != users:
            continue
        what = "fakes" if on_fakes else "real data"
        other = "real data" if on_fakes else "the generator's output"
        sg.error(
            f"critic '{critic}' scores only {what}: the critic must be one module scoring real and fake batches",
            sg.node(critic)["span"],
            node=critic,
            hint=f"add a node `{{shares: {critic}, in: <{other}>}}` and feed its scores to the critic loss",
        )
    if len(sg.diagnostics) > reported:
        return  # a critic that is not shared is the cause; that its scores do not reach the generator follows
    needed = sg.upstream(sg.outputs[loss][0] for loss in cfg.generator.losses)
    if not needed & (set(cfg.critic.blocks) | _sharers(sg, cfg)):
        sg.error("train.generator.losses: no generator loss reads the critic's scores",
                 sg.spec.source.key("train", "generator", "losses"),
                 hint="add a generator_loss block over the critic's scores of the fakes")  # fmt: skip


def _sharers(sg: Any, cfg: GanConfig) -> set[str]:
    return {n for n in sg.blocks() if sg.node(n).get("shares") in cfg.critic.blocks}


def _side(objective: str) -> str:
    """minimax and non_saturating differ only in the generator's loss; their critics minimise the same BCE."""
    return "bce" if objective in ("minimax", "non_saturating") else objective


def _check_objectives(sg: Any, cfg: GanConfig) -> None:
    """The critic's and the generator's loss blocks play the same game (hinge with hinge, ...)."""

    def objectives(block_type: str, loss_names: dict[str, float]) -> dict[str, str]:
        nodes = {sg.outputs[loss][0] for loss in loss_names}
        return {
            n: sg.node(n)["params"].get("objective", "non_saturating")
            for n in sorted(nodes)
            if sg.node(n).get("contract") is not None and sg.node(n)["contract"].name == block_type
        }

    critic = objectives("critic_loss", cfg.critic.losses)
    generator = objectives("generator_loss", cfg.generator.losses)
    sides = {_side(o) for o in critic.values()}
    for node, objective in generator.items():
        if sides and _side(objective) not in sides:
            theirs = ", ".join(f"'{n}' uses {o}" for n, o in critic.items())
            given = "objective" in sg.spec.blocks[node].params
            sg.error(f"'{node}' plays the {objective} objective, but the critic's loss {theirs}",
                     sg.spec.source.value("blocks", node, "objective") if given else sg.node(node)["span"],
                     node=node, hint="give both loss blocks the same `objective:`")  # fmt: skip
