"""Editor support and formatting: the JSON Schema accepts every shipped spec and rejects broken ones; `dagcv fmt`
keeps shipped specs canonical, converts both ways, and every command takes either syntax."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from dagcv.schema import spec_schema
from tests.conftest import ROOT

YAML_SPECS = sorted((ROOT / "specs").glob("*.yaml"))
DSL_SPECS = sorted((ROOT / "specs").glob("*.dagcv"))
BAD = [
    "unknown_param",
    "bad_param_type",
    "unknown_block_type",
    "unknown_top_key",
    "bad_mode",
    "unknown_input_port",
    "missing_param",
    "missing_version",
]


def dagcv(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(spec_schema())


def test_shipped_schema_file_is_up_to_date() -> None:
    shipped = json.loads((ROOT / "docs" / "dagcv.schema.json").read_text())
    assert shipped == spec_schema(), "run `make manifest` (it regenerates docs/dagcv.schema.json)"


@pytest.mark.parametrize("spec", YAML_SPECS, ids=lambda p: p.stem)
def test_shipped_specs_validate_and_point_at_the_schema(spec, validator) -> None:
    assert list(validator.iter_errors(yaml.safe_load(spec.read_text()))) == []
    assert spec.read_text().startswith("# yaml-language-server: $schema=../docs/dagcv.schema.json\n")


@pytest.mark.parametrize("case", BAD)
def test_broken_specs_do_not_validate(case, validator) -> None:
    data = yaml.safe_load((ROOT / "tests" / "golden" / "errors" / f"{case}.yaml").read_text())
    assert list(validator.iter_errors(data)), case


def test_schema_offers_each_blocks_parameters(validator) -> None:
    blocks = spec_schema()["$defs"]
    head = blocks["Block_mlp_head"]["properties"]
    assert head["num_classes"]["type"] == "integer" and "hidden" in head and "in_features" in head
    assert blocks["Block_mlp_head"]["additionalProperties"] is False


def test_shipped_specs_are_canonically_formatted_and_twins_agree() -> None:
    run = dagcv("fmt", "--check", *map(str, YAML_SPECS + DSL_SPECS))
    assert run.returncode == 0, run.stderr
    for spec in YAML_SPECS:
        twin = dagcv("fmt", str(spec), "--to", "dsl", "-o", "-")
        assert twin.returncode == 0 and twin.stdout == spec.with_suffix(".dagcv").read_text(), spec.stem


def test_fmt_converts_both_ways_and_check_flags_unformatted(tmp_path) -> None:
    messy = tmp_path / "messy.yaml"
    messy.write_text((ROOT / "specs" / "lenet_mnist.yaml").read_text().replace("  features:   {", "  features: {"))
    assert dagcv("fmt", "--check", str(messy)).returncode == 1
    assert dagcv("fmt", str(messy), "--to", "dsl").returncode == 0
    assert (
        dagcv("fmt", str(messy.with_suffix(".dagcv")), "--to", "yaml", "-o", str(tmp_path / "back.yaml")).returncode
        == 0
    )
    original = (ROOT / "specs" / "lenet_mnist.yaml").read_text()
    assert (tmp_path / "back.yaml").read_text() == original.split("\n", 1)[1]  # all but the YAML-only schema line
    assert dagcv("fmt", str(messy)).returncode == 0 and dagcv("fmt", "--check", str(messy)).returncode == 0


def test_every_command_takes_the_dsl(tmp_path) -> None:
    spec = str(ROOT / "specs" / "lenet_mnist.dagcv")
    assert dagcv("check", spec).returncode == 0
    compiled = dagcv("compile", spec, "-o", str(tmp_path / "out"), "-q")
    assert compiled.returncode == 0, compiled.stderr
    rendered = dagcv("render", spec, "-o", str(tmp_path / "g.svg"))
    assert rendered.returncode == 0 and "classifier" in (tmp_path / "g.svg").read_text()
    broken = tmp_path / "bad.dagcv"
    broken.write_text("dagcv 1\nname bad\ninput image: Image[B, 1, 28, 28]\nfeatures = lenet_featurs <- image\n")
    result = dagcv("check", str(broken))
    assert result.returncode == 2 and f"{broken}:4:12: error: unknown block type 'lenet_featurs'" in result.stderr


def test_schema_covers_the_training_sections(validator) -> None:
    spec = yaml.safe_load((ROOT / "specs" / "lenet_mnist.yaml").read_text())
    spec["train"]["optimizer"]["lrr"] = 0.1
    assert any("lrr" in e.message for e in validator.iter_errors(spec))
    spec = yaml.safe_load((ROOT / "specs" / "lenet_mnist.yaml").read_text())
    spec["data"]["train"]["batchsize"] = 3
    assert list(validator.iter_errors(spec))
