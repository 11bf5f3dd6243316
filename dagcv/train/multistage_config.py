"""The ``train:`` section of the ``multistage`` loop and its static check (part of ``dagcv check``; no torch).

Stages train disjoint sets of blocks in order; a block trained by one stage is frozen in every later stage. A
later stage may read what frozen blocks compute through ``cache:`` -- spec outputs computed once over the
training split by the frozen model and stored in the run directory, keyed by the hash of the weights that made
them -- so a prior over a VQ-VAE's codes never runs the encoder again::

    train:
      loop: multistage
      stages:
        - {name: autoencoder, blocks: [encoder, quantizer, decoder], losses: [recon_loss, codebook_loss,
           commitment_loss], epochs: 5, optimizer: {type: adam, lr: 1.0e-3}}
        - {name: prior, blocks: [prior], losses: [prior_loss], cache: [codes], epochs: 10,
           optimizer: {type: adam, lr: 1.0e-3}}

>>> MultistageConfig.model_validate({"loop": "multistage", "stages": [{"name": "a", "blocks": ["x"],
...     "losses": ["l"], "steps": 5, "optimizer": {"type": "sgd", "lr": 0.1}}]}).stages[0].losses
{'l': 1.0}
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from dagcv.errors import did_you_mean
from dagcv.spec.ir import IDENTIFIER
from dagcv.train.config import _STRICT, LossWeights, OptimizerConfig, RunConfig, ScheduleConfig
from dagcv.train.diffusion_config import EmaConfig, SamplerConfig, check_diffusion_graph


class StageConfig(BaseModel):
    """One stage: the blocks it trains, the losses they minimise, what it reads from earlier stages, its budget."""

    model_config = _STRICT
    name: str = Field(pattern=IDENTIFIER, description="names the stage's program and its log records")
    blocks: list[str] = Field(min_length=1, description="the nodes whose parameters this stage trains")
    losses: LossWeights
    cache: list[str] = Field(
        default_factory=list, description="spec outputs of frozen earlier stages, computed once and stored"
    )
    epochs: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, gt=0)
    optimizer: OptimizerConfig
    schedule: ScheduleConfig | None = None
    grad_clip: float | None = Field(default=None, gt=0)
    ema: EmaConfig | None = Field(default=None, description="average this stage's weights (used for sampling)")

    @model_validator(mode="after")
    def _budget(self) -> StageConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of 'epochs' or 'steps'")
        if not self.losses:
            raise ValueError("a stage minimises at least one loss")
        return self


class MultistageConfig(RunConfig):
    """Train stages in order, each on its own blocks, later ones on the frozen (and cached) outputs of earlier."""

    loop: Literal["multistage"] = "multistage"
    stages: list[StageConfig] = Field(min_length=1)
    train_split: str = "train"
    log_every: int = Field(default=50, gt=0, description="steps between logged training losses")
    checkpoint_every: int | None = Field(default=None, gt=0, description="steps between checkpoints (default: epoch)")
    samples: int = Field(default=64, ge=0, description="images in the grid drawn after every epoch of the last stage")
    sampler: SamplerConfig | None = Field(default=None, description="a diffusion stage: how samples are drawn")

    PROGRAMS: ClassVar[tuple[str, ...]] = ()

    def programs(self, outputs: dict[str, str]) -> dict[str, tuple]:
        """One program per stage, named after it: its losses, given the cached outputs."""
        return {f"stage_{s.name}": (list(s.losses), "train", s.cache) for s in self.stages}


def check_multistage(sg: Any, cfg: MultistageConfig, splits: dict | None) -> None:
    """Stage names, blocks, losses and caches exist; no stage reads a block that a later stage still trains."""
    smap = sg.spec.source
    if splits is not None and cfg.train_split not in splits:
        sg.error(f"train.train_split: no split '{cfg.train_split}' in data",
                 smap.value("train", "train_split") if "train_split" in sg.spec.train else smap.key("train"),
                 hint=did_you_mean(cfg.train_split, splits) or "add a data: split")  # fmt: skip
    losses = [o for o, (n, p) in sg.outputs.items() if (t := sg.out_type(n, p)) and t.kind == "Loss"]
    blocks = set(sg.blocks())
    stage_of: dict[str, int] = {}
    names: set[str] = set()
    for i, stage in enumerate(cfg.stages):
        where = ("train", "stages", i)
        if stage.name in names:
            sg.error(f"train.stages: two stages are named '{stage.name}'", smap.value(*where, "name"))
        if f"stage_{stage.name}" in sg.g:
            sg.error(f"stage '{stage.name}': its program `stage_{stage.name}` is also a node's name",
                     smap.value(*where, "name"),
                     hint="rename the stage or the node: the ejected model has both")  # fmt: skip
        names.add(stage.name)
        for j, block in enumerate(stage.blocks):
            if block not in blocks:
                sg.error(f"stage '{stage.name}': unknown block '{block}'", smap.value(*where, "blocks", j),
                         hint=did_you_mean(block, blocks))  # fmt: skip
            elif block in stage_of:
                sg.error(f"stage '{stage.name}': '{block}' is already trained by stage "
                         f"'{cfg.stages[stage_of[block]].name}'", smap.value(*where, "blocks", j),
                         hint="each block is trained by one stage and frozen in the stages after it")  # fmt: skip
            else:
                stage_of[block] = i
        for loss in stage.losses:
            if loss not in losses:
                sg.error(f"stage '{stage.name}': '{loss}' is not a Loss output", smap.key(*where, "losses"),
                         hint=did_you_mean(loss, losses) or f"Loss outputs: {', '.join(losses)}")  # fmt: skip
        for j, out in enumerate(stage.cache):
            if out not in sg.outputs:
                sg.error(f"stage '{stage.name}': cache '{out}' is not a spec output", smap.value(*where, "cache", j),
                         hint=did_you_mean(out, sg.outputs) or "add the frozen value to outputs:")  # fmt: skip
    if sg.diagnostics:
        return  # a wrong name above, or a graph with errors: the checks below would only repeat them
    for i in range(len(cfg.stages)):
        _check_stage_reads(sg, cfg, i, stage_of)
    check_diffusion_graph(sg, cfg.sampler, ("train", "sampler"), required=False)


def _check_stage_reads(sg: Any, cfg: MultistageConfig, i: int, stage_of: dict[str, int]) -> None:
    stage = cfg.stages[i]
    where = ("train", "stages", i)
    cut = {sg.outputs[o][0] for o in stage.cache}
    for j, out in enumerate(stage.cache):
        node = sg.outputs[out][0]
        later = sorted({stage_of[b] for b in sg.upstream([node]) if stage_of.get(b, -1) >= i})
        if later:
            other = cfg.stages[later[0]]
            sg.error(f"stage '{stage.name}' caches '{out}', which depends on blocks that stage '{other.name}' "
                     "still trains", sg.spec.source.value(*where, "cache", j),
                     hint="cache only what blocks of earlier stages compute (they are frozen by now)")  # fmt: skip
    reads = sg.upstream((sg.outputs[loss][0] for loss in stage.losses), stop=cut) - cut
    for block in sorted(reads):
        if stage_of.get(block, -1) > i:
            other = cfg.stages[stage_of[block]]
            sg.error(f"stage '{stage.name}' reads '{block}', which the later stage '{other.name}' trains: it would "
                     "run with untrained weights", sg.spec.source.key(*where, "losses"), node=block,
                     hint=f"train '{block}' in '{stage.name}' or an earlier stage, or move the loss")  # fmt: skip
