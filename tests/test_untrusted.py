"""Specs are untrusted input: every crash class found by mutating the shipped specs, one regression test each.

The rule under test: whatever a file holds, dagcv answers with a positioned diagnostic (``SpecError``, exit 2) or
a result; it never raises anything else, never runs text from the spec, and refuses sizes beyond its limits
before allocating them. ``tools/fuzz_specs.py`` finds new classes; ``tests/test_fuzz.py`` runs a seeded sample.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dagcv.compiler import check_file, compile_file
from dagcv.eject import py_literal
from dagcv.errors import SpecError
from dagcv.limits import Limits, set_limits
from dagcv.spec import load_spec
from tests.conftest import ROOT

LENET = """dagcv: 1
name: n
inputs:
  image: Image[B, 1, 28, 28]
  label: Labels[B]
blocks:
  features: {type: lenet_features, in: image}
  classifier: {type: mlp_head, in: features, num_classes: 10}
  loss: {type: cross_entropy, in: {logits: classifier, target: label}}
outputs:
  logits: classifier
  loss: loss
"""


def spec_error(path: Path) -> SpecError:
    """The error ``check`` raises for ``path`` (the test fails on anything else)."""
    with pytest.raises(SpecError) as info:
        check_file(path)
    return info.value


def where(error: SpecError) -> tuple[int, int]:
    span = error.diagnostics[0].span
    assert span is not None, error.format()
    return span.line, span.col


def dagcv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagcv.cli", *args], capture_output=True, text=True, cwd=cwd)


# ---------------------------------------------------------------------------------------------------------------
# Generated code


def test_the_issues_injected_output_name_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    owned = tmp_path / "owned"
    spec = tmp_path / "inject.yaml"
    spec.write_text(
        LENET.replace(
            "  logits: classifier", f"  \"a\\\": __import__('os').system('touch {owned}'), \\\"b\": classifier"
        )
    )
    for command in (["check", str(spec)], ["compile", str(spec), "-o", str(tmp_path / "out")]):
        run = dagcv(*command)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert "is not a valid Python identifier" in run.stderr and f"{spec}:11:3:" in run.stderr
    assert not owned.exists() and not (tmp_path / "out").exists()


def test_literals_are_written_so_that_python_reads_them_back() -> None:
    values = [float("nan"), float("inf"), -float("inf"), 1e308, "a\"b'c\n\"\"\"", "\u00e9\U0001f600", None, True, -3,
              [1, [2.5, "x"]], {"k": [None]}, ("t", 1)]  # fmt: skip
    for value in values:
        back = eval(py_literal(value), {"__builtins__": {"float": float}})
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(back)
        else:
            assert back == (list(value) if isinstance(value, tuple) else value)


def test_nan_and_inf_parameters_eject_as_float_calls_and_the_model_loads(tmp_path: Path) -> None:
    spec = tmp_path / "nan.yaml"
    weights = "class_weights: [.nan, .inf, -.inf, 1, 1, 1, 1, 1, 1, 1]"
    spec.write_text(LENET.replace("target: label}}", f"target: label}}, {weights}}}"))
    compiled = compile_file(spec)
    model_py = compiled.files()["model.py"]
    assert "class_weights=[float('nan'), float('inf'), -float('inf'), 1.0" in model_py
    namespace: dict = {}
    exec(compile(model_py, "model.py", "exec"), namespace)
    ejected = namespace["N"]()
    ejected.load_state_dict(compiled.module.state_dict())


def test_a_source_file_name_cannot_end_the_ejected_docstring_or_add_keys(tmp_path: Path) -> None:
    spec = tmp_path / 'x"""; import os  #\nname: evil.yaml'
    spec.write_text(LENET)
    files = compile_file(spec).files(source_name=str(spec))
    compile(files["model.py"], "model.py", "exec")  # still one docstring, then imports and the class
    assert 'x\\"\\"\\"' in files["model.py"] and "\nname: evil" not in files["model.py"]
    from dagcv.spec import parse_spec_text

    assert parse_spec_text(files["spec.resolved.yaml"], "resolved.yaml").name == "n"
    assert "\nname: evil" not in files["summary.md"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("output_ports", "is reserved"),  # DagModule's own attribute: it used to pass check and crash compile
        ("forward_train", "is reserved"),  # a method of the ejected class
        ("recompile", "is reserved"),  # a method of torch.fx.GraphModule
        ("class", "not a valid Python identifier"),
        ("\uff46eatures2", "is not in the form Python reads identifiers in"),  # fullwidth 'f': NFKC gives 'f'
    ],
)
def test_node_names_that_generated_code_cannot_hold(write_spec, name: str, message: str) -> None:
    error = spec_error(write_spec(LENET.replace("  classifier: {type: mlp_head, in: features",
                                                f"  {name}: {{type: mlp_head, in: features, num_classes: 3}}\n"
                                                "  classifier: {type: mlp_head, in: features")))  # fmt: skip
    assert message in error.diagnostics[0].message and where(error) == (8, 3)


def test_nfd_and_nfc_spellings_are_one_node_and_its_weights_keep_their_key(write_spec) -> None:
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    text = LENET.replace("features: {type", f"{nfd}: {{type").replace("in: features", f"in: {nfc}")
    compiled = compile_file(write_spec(text))
    assert any(k.startswith(f"{nfc}.") for k in compiled.module.state_dict())
    assert f"self.{nfc} = " in compiled.files()["model.py"]


# ---------------------------------------------------------------------------------------------------------------
# Reading the file


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("dagcv: 1\nname: n\ndescription: a \x1b[31m b\nblocks: {}\n", (3, 16), "character U+001B is not allowed"),
        ("dagcv: 1\nname: n\n\x0c\nblocks: {}\n", (3, 1), "character U+000C"),
        ("dagcv: !!int abc\nname: n\nblocks: {}\n", (1, 8), "'abc' is not a valid int"),
        ("dagcv: 1\nname: !!float xyz\nblocks: {}\n", (2, 7), "'xyz' is not a valid float"),
        ("dagcv: 1\nname: n\ndescription: !!bool maybe\nblocks: {}\n", (3, 14), "'maybe' is not a valid bool"),
        (f"dagcv: 1\nname: n\nsizes: {{B: {'9' * 5000}}}\nblocks: {{}}\n", (3, 12), "integer too large (5000 digits)"),
        ("dagcv: 1\nname: n\nsizes: {B: 99999999999999999999}\nblocks: {}\n", (3, 12), "integer too large"),
    ],
)
def test_yaml_that_crashed_the_loader_is_a_positioned_error(write_spec, text, position, message) -> None:
    error = spec_error(write_spec(text))
    assert message in error.diagnostics[0].message and where(error) == position


def test_lone_surrogates_are_refused_before_any_stage_sees_them(write_spec) -> None:
    error = spec_error(write_spec('dagcv 1\nname n\ndescription "a\\udc80"\n', "s.dagcv"))
    assert "U+DC80 (a lone surrogate)" in error.diagnostics[0].message and where(error) == (3, 13)
    error = spec_error(write_spec('dagcv 1\nname n\ntrain {"\\ud800x": 1}\n', "t.dagcv"))
    assert "lone surrogate" in error.format() and where(error) == (3, 8)


def test_invalid_utf8_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"dagcv: 1\nname: n\ndescription: caf\xc3\xa9 \xff\nblocks: {}\n")
    error = spec_error(path)
    assert where(error) == (3, 19) and "invalid UTF-8: byte 0xff" in error.diagnostics[0].message


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.dagcv"
    path.write_text('dagcv 1\nname n\ndescription "' + "a" * 6_000_000 + '"\n')
    error = spec_error(path)
    assert "larger than 1 MiB" in error.diagnostics[0].message


def test_strings_and_nesting_have_limits_in_both_syntaxes(write_spec) -> None:
    long = spec_error(write_spec('dagcv 1\nname n\ndescription "' + "a" * 200_000 + '"\n', "long.dagcv"))
    assert "string of 200,000 characters is too long" in long.diagnostics[0].message
    deep = spec_error(write_spec("dagcv: 1\nname: n\nblocks: {}\ntrain: " + "[" * 150 + "]" * 150 + "\n"))
    assert "too deeply nested" in deep.format()


def test_spec_limits_come_from_the_user_not_the_spec(write_spec, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_spec(LENET)
    try:
        set_limits(Limits.parse("params=1000"))
        error = spec_error(path)
        assert "above the limit 1,000" in error.diagnostics[0].message and where(error) == (8, 3)
    finally:
        set_limits(None)
    check_file(path)
    run = subprocess.run([sys.executable, "-m", "dagcv.cli", "check", str(path)], capture_output=True, text=True,
                         env={**os.environ, "DAGCV_LIMITS": "activation_gib=1e-9"})  # fmt: skip
    assert run.returncode == 2 and "above the limit 1e-09 GiB" in run.stderr
    assert dagcv("--limit", "params=oops", "check", str(path)).returncode == 2


# ---------------------------------------------------------------------------------------------------------------
# Types and shapes


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("image: Image[B, 1, " + "(" * 3000 + "28" + ")" * 3000 + ", 28]", "too long"),
        ("image: Image[B, 1, " + "-" * 2000 + "28, 28]", "nested more than 32 deep"),
        ("image: Image[B, 1, " + "-" * 40 + "28, 28]", "nested more than 32 deep"),
        ("image: Image[B, 1, 28*1099511627776, 28]", "larger than the limit"),
        ("image: Image[B, 1, rcnn_resize(28, 28, 28, 0, 0), 28]", "every size must be positive"),
        ("image: Image[B, 1, cdiv(28, 0), 28]", "division by zero"),
        ("image: Image[B, 1, H**99, 28]", "unsupported dim expression"),
    ],
)
def test_dim_expressions_that_crashed_the_checker(write_spec, inputs: str, message: str) -> None:
    error = spec_error(write_spec(LENET.replace("image: Image[B, 1, 28, 28]", inputs)))
    assert message in error.diagnostics[0].message and where(error)[0] == 4


def test_huge_example_sizes_are_refused_with_the_limit(write_spec) -> None:
    error = spec_error(write_spec(LENET.replace("blocks:", "sizes: {B: 4611686018427387904}\nblocks:")))
    assert "above the limit" in error.diagnostics[0].message and len(error.diagnostics) == 1


@pytest.mark.parametrize(
    "train",
    [
        "{epochs: 1, optimizer: {type: adam, lr: 0.1, blocks: [[features]]}}",
        "{epochs: 1, optimizer: {type: adam, lr: 0.1}, train_split: [train]}",
        "{epochs: 1, optimizer: {type: adam, lr: 0.1}, losses: {[loss]: 1}}",
    ],
)
def test_a_list_where_a_name_belongs_is_a_positioned_error(write_spec, train: str) -> None:
    data = "data: {train: {dataset: {type: digits}, transforms: [{type: {a: 1}}]}}"
    error = spec_error(write_spec(LENET + f"{data}\ntrain: {train}\n"))
    assert all(d.span is not None for d in error.diagnostics), error.format()


# ---------------------------------------------------------------------------------------------------------------
# Building


def test_a_block_that_fails_on_its_example_inputs_is_reported_at_its_line(write_spec) -> None:
    # Three levels of anchor sizes for a five-level pyramid: only the block's forward can tell.
    spec = load_spec(ROOT / "specs" / "retinanet_r18_shapes.yaml", ["blocks.anchors.sizes=[[16], [32], [64]]",
                                                                      "blocks.anchors.aspect_ratios=null"])  # fmt: skip
    from dagcv.compiler import compile_spec

    with pytest.raises(SpecError) as info:
        compile_spec(spec)
    d = info.value.diagnostics[0]
    assert d.node == "anchors" and "'anchors' (anchor_generator)" in d.message
    assert d.span is not None and d.span.file == "--set #1" and "check parameter 'sizes'" in (d.hint or "")


def test_block_rules_and_bounds_are_checked_statically(write_spec) -> None:
    error = spec_error(write_spec(LENET.replace("num_classes: 10}", "num_classes: 10, hidden: [-1]}")))
    assert where(error) == (8, 72) and "greater than 0" in error.diagnostics[0].message
    error = spec_error(write_spec(LENET.replace("num_classes: 10}", "num_classes: 10, dropout: .nan}")))
    assert "dropout" in error.diagnostics[0].message


@pytest.mark.parametrize(
    ("spec", "override", "message"),
    [  # each passed check and failed compile in the fuzzer's run of this session
        ("ppo_cartpole", "blocks.pg_loss.clip_coef=1.0e+308", "less than or equal to 10"),
        ("detr_tiny", "blocks.transformer.num_encoder_layers=0", "greater than 0"),
        ("fasterrcnn_tiny_shapes", "blocks.box_predictor.num_classes=1", "greater than or equal to 2"),
        ("maskrcnn_r50_fpn", "blocks.postprocess.detections_per_img=2147483648", "detections_per_img <= 10000"),
    ],
)
def test_bounds_the_fuzzer_found_are_in_the_contracts(spec: str, override: str, message: str) -> None:
    from dagcv.compiler import check_spec
    from dagcv.spec import load_spec

    with pytest.raises(SpecError) as info:
        check_spec(load_spec(ROOT / "specs" / f"{spec}.yaml", [override]))
    assert message in info.value.diagnostics[0].message, info.value.format()


@pytest.mark.parametrize(
    ("spec", "override", "message"),
    [
        ("wgan_gp_8gaussians", "train.generator.losses=[[H]]", "generator.losses: input should be a valid dict"),
        ("vqvae_prior_mnist", "train.stages.1.losses=[[H]]", "stages.1.losses: input should be a valid dict"),
        ("wgan_gp_8gaussians", "blocks.critic.type=x", "unknown block type 'x'"),
        ("vqvae_prior_mnist", "blocks.grid.height=1000000", "needs height * width <= 1024"),
    ],
)
def test_generative_sections_the_fuzzer_broke_are_errors(spec: str, override: str, message: str) -> None:
    """Seeds 7070 and 9090 of tools/fuzz_specs.py: a value that fits no form of a union was reported by no one
    (check said ok), a player's block of an unknown type crashed the gan loop's check, and a huge grid of unknown
    codes made compile fill it position by position (memory blow-up)."""
    from dagcv.compiler import check_spec
    from dagcv.spec import load_spec

    with pytest.raises(SpecError) as info:
        check_spec(load_spec(ROOT / "specs" / f"{spec}.yaml", [override]))
    assert any(message in d.message for d in info.value.diagnostics), info.value.format()


@pytest.mark.parametrize(
    ("spec", "override", "message"),
    [
        ("cfg_mnist", "blocks.x0.type=pixelcnn_prior", "kind mismatch: image is Image but x0.codes expects Codes"),
        ("cfg_mnist", "blocks.denoiser.num_classes=null", "reads class labels at 'y' but has no num_classes"),
        ("cfg_mnist", "blocks.denoiser.num_classes=null train=null data=null", "has no num_classes"),
    ],
)
def test_diffusion_graphs_the_fuzzer_broke_are_errors(spec: str, override: str, message: str) -> None:
    """Seed 1515 of tools/fuzz_specs.py: a schedule whose x0 no block fed crashed the diffusion check, and a
    conditional denoiser left without num_classes passed check, then failed to build (with or without a train:
    section: the check is a graph pass)."""
    from dagcv.compiler import check_spec
    from dagcv.spec import load_spec

    with pytest.raises(SpecError) as info:
        check_spec(load_spec(ROOT / "specs" / f"{spec}.yaml", override.split()))
    assert any(message in d.message for d in info.value.diagnostics), info.value.format()


def test_weights_must_be_a_torch_checkpoint(write_spec, tmp_path: Path) -> None:
    base = "dagcv: 1\nname: n\ninputs:\n  image: Image[B, 3, 32, 32]\nblocks:\n"
    base += "  trunk: {{type: resnet18, in: image, weights: {}}}\n"
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for path, message in [("/dev/zero", "not a regular file"), (str(text), "not a torch checkpoint"),
                          (str(tmp_path / "missing.pt"), "no such file"), ("a" * 5000, "cannot read")]:  # fmt: skip
        error = spec_error(write_spec(base.format(path)))
        assert message in error.diagnostics[0].message and where(error) == (6, 47)
    good = tmp_path / "trunk.pt"
    from blocks.backbones import resnet18

    torch.save(resnet18().state_dict(), good)
    compile_file(write_spec(base.format(good)))


def test_compile_output_has_normal_permissions(tmp_path: Path, write_spec) -> None:
    out = tmp_path / "out"
    assert dagcv("compile", str(write_spec(LENET)), "-o", str(out), "-q").returncode == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}


def test_huge_labels_and_control_characters_still_render(tmp_path: Path, write_spec) -> None:
    path = write_spec(LENET.replace("name: n", 'name: n\ndescription: "' + "\\x07" * 3 + "d" * 60_000 + '"'))
    out = tmp_path / "g.svg"
    run = dagcv("render", str(path), "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert "\x07" not in out.read_text()


@pytest.mark.parametrize("name", ["lenet_mnist", "mlp_digits", "fcos_tiny_shapes", "unet_shapes", "vqvae_mnist"])
def test_the_parameter_estimate_of_check_is_near_the_real_count(name: str) -> None:
    compiled = compile_file(ROOT / "specs" / f"{name}.yaml")
    sg = compiled.built.sg
    estimate = sum(sg.node(n)["estimate"]["params"] for n in sg.blocks())
    real = sum(p.numel() for p in compiled.module.parameters())
    assert real / 2 <= estimate <= 4 * real, (estimate, real)  # measured 0.94-3.3 over the small shipped specs
