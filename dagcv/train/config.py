"""The ``data:`` and ``train:`` sections of a spec, validated like the rest of it (errors carry positions).

data:
  train:
    dataset: {type: mnist_idx, root: ../shared/datasets/mnist-t10k}
    subset: {seed: 0, range: [0, 8000]}         # a seeded permutation, then a slice: disjoint splits
    transforms: [{type: normalize, mean: [0.1307], std: [0.3081]}]
    batch_size: 64
    shuffle: true
  val:
    dataset: {type: mnist_idx, root: ../shared/datasets/mnist-t10k}
    subset: {seed: 0, range: [8000, 10000]}
    batch_size: 500
train:
  epochs: 10
  optimizer: {type: adam, lr: 0.001}
  metrics: [{type: accuracy, output: logits, target: label}]
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, model_validator

_STRICT = ConfigDict(extra="forbid")

# The output a generative spec draws its samples through (`dagcv sample`, the loops' per-epoch grids).
SAMPLES = "samples"


def _weights_of_list(value: Any) -> Any:
    """``[a, b]`` → ``{a: 1.0, b: 1.0}``; anything else is left for pydantic to accept or reject."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return dict.fromkeys(value, 1.0)
    return value


LossWeights = Annotated[
    dict[str, float] | list[str],
    BeforeValidator(_weights_of_list),
    Field(description="Loss outputs minimised: a list (weight 1 each), or output → weight"),
]
"""A group's losses: ``[g_loss]`` or ``{d_loss: 1.0, gp: 10.0}``; always a dict once validated."""


class SubsetConfig(BaseModel):
    """A deterministic part of a dataset: permute its indices with ``seed``, then take ``range`` or ``fraction``."""

    model_config = _STRICT
    seed: int = 0
    range: tuple[int, int] | None = Field(default=None, description="[start, end) of the permuted indices")
    fraction: tuple[float, float] | None = Field(default=None, description="[start, end) as fractions of the size")

    @model_validator(mode="after")
    def _one_of(self) -> SubsetConfig:
        if (self.range is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'range' or 'fraction'")
        lo, hi = self.range or self.fraction  # type: ignore[misc]
        if not 0 <= lo <= hi or (self.fraction is not None and hi > 1):
            raise ValueError(f"bad bounds [{lo}, {hi}]")
        return self


class SplitConfig(BaseModel):
    """One named split: a dataset block, an optional subset, transforms, and how to batch it."""

    model_config = _STRICT
    dataset: dict[str, Any] = Field(description="a dataset block: {type: mnist_idx, root: ...}")
    subset: SubsetConfig | None = None
    transforms: list[dict[str, Any]] = Field(default_factory=list, description="torchvision.transforms.v2 steps")
    batch_size: int = Field(default=32, gt=0)
    shuffle: bool = False
    workers: int = Field(default=0, ge=0)
    drop_last: bool = False
    fields: dict[str, str] | None = Field(
        default=None, description="spec input → dataset output; default: same names, else the same order"
    )


class DataConfig(RootModel[dict[str, SplitConfig]]):
    pass


class OptimizerConfig(BaseModel):
    """An optimizer over the parameters of some blocks, stepped every ``every`` steps on some losses."""

    model_config = _STRICT
    type: Literal["sgd", "adam", "adamw", "rmsprop"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.0, ge=0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    blocks: list[str] | None = Field(default=None, description="node names whose parameters it updates (all)")
    losses: list[str] | None = Field(default=None, description="Loss outputs it minimises (all)")
    every: int = Field(default=1, gt=0, description="step it every N training steps (WGAN's n_critic)")


class ScheduleConfig(BaseModel):
    """A learning-rate schedule, stepped per training step."""

    model_config = _STRICT
    type: Literal["constant", "step", "multistep", "cosine", "onecycle"]
    step_size: int | None = Field(default=None, gt=0, description="step: steps between decays")
    milestones: list[int] | None = None
    gamma: float = 0.1
    warmup_steps: int = Field(default=0, ge=0)
    min_lr: float = 0.0


class MetricConfig(BaseModel):
    """A torchmetrics metric over an output and a spec input, computed on the evaluation split."""

    model_config = _STRICT
    type: Literal[
        "accuracy", "f1", "precision", "recall", "confusion_matrix", "mse", "mae", "map", "mean_iou", "dice", "mean"
    ]
    output: str = Field(description="a spec output, e.g. logits (Detections for map; a Metric output for mean)")
    target: str | None = Field(default=None, description="a spec input, e.g. label (Targets for map; mean: none)")
    iou_type: Literal["bbox", "segm"] = Field(default="bbox", description="map: boxes or instance masks")
    top_k: int = Field(default=1, gt=0)
    average: Literal["micro", "macro", "weighted"] | None = Field(
        default=None, description="default: micro for accuracy (the fraction correct), macro for f1/precision/recall"
    )
    name: str | None = Field(default=None, description="the logged name (default: the type, with top_k)")

    @model_validator(mode="after")
    def _target(self) -> MetricConfig:
        if (self.target is None) != (self.type == "mean"):
            raise ValueError("'mean' averages an output on its own (no target)" if self.target is not None
                             else f"{self.type} compares an output with a 'target' input")  # fmt: skip
        return self

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        if self.type == "mean":
            return self.output
        return f"{self.type}_top{self.top_k}" if self.top_k > 1 else self.type

    @property
    def logged(self) -> list[str]:
        """The names this metric is logged under (COCO mAP logs several)."""
        if self.type != "map":
            return [self.key]
        subs = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"]
        return [renamed(self.key, s) for s in subs]


def renamed(key: str, sub: str) -> str:
    """``map_50`` of a metric logged as ``mask_map`` is ``mask_map_50``."""
    if key == "map":
        return sub
    return key + sub[3:] if sub.startswith("map") else f"{key}_{sub}"


class EarlyStoppingConfig(BaseModel):
    model_config = _STRICT
    metric: str = Field(description="a logged metric of the evaluation split, e.g. val/accuracy")
    mode: Literal["min", "max"] = "max"
    patience: int = Field(default=3, gt=0)
    min_delta: float = 0.0


class RunConfig(BaseModel):
    """What every loop's ``train:`` section has: the loop's name, the seed, the device and threads, logging and
    checkpoint intervals. Each loop's config adds its own keys (its budget, its optimizer, its algorithm)."""

    model_config = _STRICT
    PROGRAMS: ClassVar[tuple[str, ...]] = ()  # the named programs the loop runs (methods of the ejected model)

    loop: str = Field(default="supervised", description="the training loop (`dagcv loops` lists them)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, gt=0, description="torch CPU threads (default: torch's)")

    def programs(self, outputs: dict[str, str]) -> dict[str, tuple[list[str], str]]:
        """Program name → (spec outputs, mode), given the spec's outputs and their kinds."""
        return {}


class SupervisedConfig(RunConfig):
    """How to train: the loop, its budget, optimizers, schedule, metrics, evaluation and checkpoints."""

    loop: Literal["supervised"] = "supervised"
    epochs: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, gt=0, description="a step budget instead of epochs")
    optimizer: OptimizerConfig | list[OptimizerConfig]
    schedule: ScheduleConfig | None = None
    grad_clip: float | None = Field(default=None, gt=0, description="max global gradient norm")
    amp: bool = Field(default=False, description="mixed precision (CUDA only; ignored on CPU)")
    losses: dict[str, float] | None = Field(default=None, description="Loss output → weight (default: all, 1.0)")
    metrics: list[MetricConfig] = Field(default_factory=list)
    train_split: str = "train"
    eval_split: str | None = "val"
    eval_every: int = Field(default=1, gt=0, description="evaluate every N epochs")
    checkpoint_every: int | None = Field(default=None, gt=0, description="steps between checkpoints (default: epoch)")
    log_every: int = Field(default=10, gt=0, description="steps between logged training losses")
    early_stopping: EarlyStoppingConfig | None = None

    @model_validator(mode="after")
    def _budget(self) -> SupervisedConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of 'epochs' or 'steps'")
        return self

    @property
    def optimizers(self) -> list[OptimizerConfig]:
        return self.optimizer if isinstance(self.optimizer, list) else [self.optimizer]


TrainConfig = SupervisedConfig  # the name of the supervised loop's config before loops were plug-ins
