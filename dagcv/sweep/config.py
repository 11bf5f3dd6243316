"""The sweep file: a base spec, axes of edits into it, seeds, exclusions, a baseline and the metric to compare.

::

    sweep: 1
    base: ../specs/lenet_mnist.yaml          # relative to the sweep file
    axes:
      backbone: {at: blocks.features, variants: {lenet: {type: lenet_features}, r18: {type: resnet18}}}
      lr:       {at: train.optimizer.lr, values: [0.01, 0.003], zip_with: warmup}   # zipped, not crossed
      warmup:   {at: train.schedule.warmup_steps, values: [100, 300]}
    seeds: [0, 1, 2]
    exclude: [{backbone: r18, lr: 0.01}]
    baseline: {backbone: lenet}
    metric: {name: val/accuracy, mode: max}

An axis without ``at:`` edits several paths per variant (``{blocks.features: {...}, blocks.classifier.in: x}``).
Everything here is plain Pydantic: ``dagcv sweep plan`` validates a sweep without torch, with positioned errors
like a spec's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

_STRICT = ConfigDict(extra="forbid")
AxisName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
DottedPath = Annotated[str, StringConstraints(pattern=r"^[^.\s]+(\.[^.\s]+)*$", max_length=1000)]


class Axis(BaseModel):
    """One dimension of the study: values at a path, or named variants (a whole block swapped, or several edits)."""

    model_config = _STRICT

    at: DottedPath | None = Field(default=None, description="the dotted path the axis edits (as in --set)")
    values: list[Any] | None = Field(default=None, min_length=1, description="values at `at`, each its own point")
    variants: dict[str, Any] | None = Field(
        default=None, min_length=1, description="name → value at `at`, or name → {path: value} without `at`"
    )
    zip_with: AxisName | None = Field(default=None, description="another axis stepped together with this one")


class Metric(BaseModel):
    model_config = _STRICT

    name: str = Field(description="a key of the runs' summary records, e.g. val/accuracy or episodic_return")
    mode: Literal["max", "min"] = "max"


class Executor(BaseModel):
    model_config = _STRICT

    type: Literal["local", "ray"] = Field(
        default="local", description="local worker processes, or Ray Tune trials (pip install 'dagcv[ray]')"
    )
    workers: Annotated[int, Ge(1)] = Field(default=1, description="points trained at once")
    threads: Annotated[int, Ge(1)] = Field(default=1, description="torch threads (CPUs) per point")
    address: str | None = Field(default=None, description="ray: the address of a running Ray cluster")


class SweepConfig(BaseModel):
    model_config = _STRICT

    sweep: Literal[1] = Field(description="the sweep format version")
    name: AxisName | None = Field(default=None, description="the study's name (default: the file's stem)")
    base: str = Field(description="the base spec, relative to the sweep file")
    set: dict[DottedPath, Any] = Field(default_factory=dict, description="edits applied to every point")
    axes: dict[AxisName, Axis] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="train.seed of each repeat")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="partial points to leave out")
    baseline: dict[str, Any] | None = Field(default=None, description="the variant each difference is taken to")
    metric: Metric
    executor: Executor = Field(default_factory=Executor)
