"""The spec IR: one Pydantic model whatever the surface syntax (YAML or the DSL).

Connections stay as written (``"features"``, ``"head.cls"``) and port types as text (``"Image[B, 1, 28, 28]"``);
the graph stage parses them so that its errors can point inside them. Positions live in the spec's
:class:`~dagcv.spec.source.SourceMap`, keyed by the path of each value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from dagcv.spec.source import SourceMap

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
SPEC_VERSION = 1


class BlockDecl(BaseModel):
    """One node: a registered block type (or another node whose module it calls again), where its inputs come
    from, its mode, and its parameters."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str | None = None
    shares: str | None = Field(default=None, description="another node whose module (and weights) this node calls")
    inputs: Any = Field(default=None, alias="in", description="a source ('node' or 'node.port') or port → source")
    mode: Literal["train", "eval", "both", "sample"] | None = Field(
        default=None,
        description="train: only in model.train(); eval: only in model.eval(); both (the default); "
        "sample: only when drawing samples (`dagcv sample`)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="constructor arguments of the block")

    @model_validator(mode="after")
    def _type_or_shares(self) -> BlockDecl:
        if (self.type is None) == (self.shares is None):
            raise ValueError("give a block 'type', or 'shares: <node>' to call another node's module again")
        return self


class Spec(BaseModel):
    """A whole spec file."""

    model_config = ConfigDict(extra="forbid")

    dagcv: Literal[1] = Field(description="spec format version")
    name: str = Field(pattern=IDENTIFIER, description="the model's name (a Python identifier)")
    description: str | None = None
    inputs: dict[str, str] = Field(default_factory=dict, description="input name → port type, e.g. Image[B, 3, H, W]")
    sizes: dict[str, int] = Field(default_factory=dict, description="example sizes of symbolic dims (B defaults to 2)")
    blocks: dict[str, BlockDecl] = Field(description="node name → block")
    outputs: dict[str, str] = Field(default_factory=dict, description="output name → source")
    data: dict[str, Any] | None = Field(default=None, description="datasets (used by `dagcv train`)")
    train: dict[str, Any] | None = Field(default=None, description="the training loop (used by `dagcv train`)")

    _source: SourceMap | None = PrivateAttr(default=None)
    _overrides: dict[str, str] = PrivateAttr(default_factory=dict)  # --set texts by pseudo file, for excerpts

    @property
    def source(self) -> SourceMap:
        assert self._source is not None, "spec has no source map"
        return self._source
