"""The registry: manifest in step with the code, plugins through entry points, contracts that make sense."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import blocks  # noqa: F401 - registers every shipped block
from dagcv import registry as reg
from dagcv.names import derive_reserved_names, reserved_names
from tests.conftest import ROOT


def test_manifest_is_up_to_date() -> None:
    data = json.loads((ROOT / "blocks" / reg.MANIFEST_NAME).read_text())
    assert data["sources"] == reg._source_hashes(ROOT / "blocks"), "run `make manifest`"
    live = {c.name: c.to_json() for c, _ in reg.iter_live() if c.target.startswith("blocks.")}
    assert {c["name"]: c for c in data["blocks"]} == json.loads(json.dumps(live))


def test_reserved_names_are_derived_from_the_generated_classes() -> None:
    assert sorted(reserved_names()) == derive_reserved_names(), "run `make manifest`"
    public = {n for n in [*dir(torch.nn.Module), *vars(torch.nn.Module())] if not n.startswith("_")}
    assert public <= reserved_names(), sorted(public - reserved_names())
    assert {"code", "graph", "recompile", "output_ports", "spec_name", "forward_train", "forward_eval", "self"} <= (
        reserved_names()
    )


def test_contract_rejects_positional_or_unannotated_arguments() -> None:
    import pytest

    with pytest.raises(TypeError, match="keyword-only"):

        @reg.register_block("bad_positional", family="layer", outputs={"out": "Tensor"})
        class Bad:
            def __init__(self, width: int): ...

    with pytest.raises(TypeError, match="unsupported parameter type"):

        @reg.register_block("bad_type", family="layer", outputs={"out": "Tensor"})
        class Bad2:
            def __init__(self, *, fn: object = None): ...


def test_annotation_text_round_trips_to_strict_types() -> None:
    from typing import Literal

    from pydantic import StrictBool, StrictFloat, StrictInt

    pairs = [
        (int, StrictInt), (float | None, StrictFloat | None), (list[int], list[StrictInt]),
        (tuple[int, ...], tuple[StrictInt, ...]), (dict[str, float], dict[str, StrictFloat]),
        (Literal["a", "b"], Literal["a", "b"]), (bool, StrictBool),
    ]  # fmt: skip
    for tp, strict in pairs:
        assert reg.annotation_type(reg.annotation_text(tp)) == strict
    sizes = reg.annotation_type(reg.annotation_text(tuple[reg.Size, ...]))
    from pydantic import TypeAdapter, ValidationError

    assert TypeAdapter(sizes).validate_python([1, 2]) == (1, 2)
    for bad in ([0], [True], [2.0]):
        with pytest.raises(ValidationError):
            TypeAdapter(sizes).validate_python(bad)


PLUGIN = '''
from torch import nn
from dagcv.registry import register_block


@register_block("scale_by", family="layer", inputs={"x": "Tensor[B, *F]"}, outputs={"out": "Tensor[B, *F]"})
class ScaleBy(nn.Module):
    """Multiply by a constant.

    Args:
        factor: the constant.
    """

    def __init__(self, *, factor: float = 2.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor
'''


def test_third_party_block_through_entry_point(tmp_path) -> None:
    """An installed distribution with a `dagcv.blocks` entry point is found; its block compiles and runs."""
    site = tmp_path / "site"
    (site / "dagcv_scale_plugin").mkdir(parents=True)
    (site / "dagcv_scale_plugin" / "__init__.py").write_text(PLUGIN)
    info = site / "dagcv_scale_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dagcv-scale-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dagcv.blocks]\nscale = dagcv_scale_plugin\n")
    spec = tmp_path / "plugin.yaml"
    spec.write_text(
        textwrap.dedent("""\
        dagcv: 1
        name: plugged
        inputs:
          x: Embedding[B, 3]
        blocks:
          scaled: {type: scale_by, in: x, factor: 3.0}
        outputs: {y: scaled}
        """)
    )
    script = textwrap.dedent(f"""\
        import torch
        from dagcv.compiler import compile_file
        m = compile_file({str(spec)!r}).module
        print(m(torch.ones(2, 3))["y"].sum().item())
        """)
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "18.0"
    listing = subprocess.run([sys.executable, "-m", "dagcv.cli", "blocks", "scale_by"], capture_output=True,
                             text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert "dagcv_scale_plugin.ScaleBy" in listing.stdout
    assert "factor: float (default 2.0)" in listing.stdout and "the constant." in listing.stdout
