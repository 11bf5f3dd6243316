"""A JSON Schema of the spec format, generated from the Pydantic IR and each block's parameters model.

Blocks are a discriminated union on ``type``: an editor running yaml-language-server completes block types,
then that block's parameters (with their docs and defaults), and flags unknown keys.

    dagcv schema -o dagcv.schema.json
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from dagcv.graph import params_model
from dagcv.registry import Contract, Registry, registry
from dagcv.spec.ir import IDENTIFIER, Spec
from dagcv.train.config import SplitConfig
from dagcv.train.loops import LOOPS

SOURCE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
SCHEMA_ID = "https://dagcv.dev/schema/spec-1.json"

Source = Annotated[str, Field(pattern=SOURCE, description="'node' or 'node.port'")]


def block_model(contract: Contract) -> type:
    """The model of one block entry: reserved keys plus the block's own parameters, inline."""
    ports = [p.name for p in contract.inputs]
    wires: Any = Source | dict[Literal[tuple(ports)], Source] | None if ports else None  # type: ignore[valid-type]
    fields: dict[str, Any] = {
        "type": (Literal[contract.name], Field(description=contract.doc)),
        "in_": (wires, Field(default=None, alias="in", description=_wiring_doc(contract))),
        "mode": (Literal["train", "eval", "both", "sample"] | None,
                 Field(default=None, description=f"when the node runs (default: {contract.default_mode})")),
    }  # fmt: skip
    base = params_model(contract)
    for name, info in base.model_fields.items():
        fields[name] = (info.annotation, info)
    return create_model(
        f"Block_{contract.name}", __config__=ConfigDict(extra="forbid", title=contract.name, populate_by_name=True),
        **fields,
    )  # fmt: skip


class SharedBlock(BaseModel):
    """A node that calls another node's module again (shared weights): ``{shares: critic, in: fake}``."""

    model_config = ConfigDict(extra="forbid", title="shared block", populate_by_name=True)
    shares: Annotated[str, Field(pattern=IDENTIFIER, description="the node whose module (and weights) it calls")]
    in_: Source | dict[str, Source] | None = Field(default=None, alias="in", description="its own inputs")
    mode: Literal["train", "eval", "both", "sample"] | None = None


def _wiring_doc(contract: Contract) -> str:
    ports = ", ".join(f"{p.name}: {p.type}" for p in contract.inputs) or "none"
    return f"one source, or a mapping port → source. Inputs: {ports}"


def spec_schema(reg: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec, with one entry per registered block."""
    reg = reg or registry()
    models = [block_model(reg.contracts[name]) for name in reg.names()]
    typed = Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007 - a runtime tuple of types
    block = typed | SharedBlock
    fields = {name: (info.annotation, info) for name, info in Spec.model_fields.items()}
    fields["blocks"] = (dict[Annotated[str, Field(pattern=IDENTIFIER)], block], Spec.model_fields["blocks"])
    # The training sections, with their own models (dataset entries stay open: their keys depend on the block).
    fields["data"] = (dict[str, SplitConfig] | None, Spec.model_fields["data"])
    # One model per loop; `loop` may be left out (supervised), so the union is not discriminated.
    train = Union[tuple(info.config for _, info in sorted(LOOPS.items()))]  # noqa: UP007 - a runtime tuple
    fields["train"] = (train | None, Spec.model_fields["train"])
    model = create_model("DagcvSpec", __config__=ConfigDict(extra="forbid", title="dagcv spec"), **fields)
    schema = TypeAdapter(model).json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
