"""The DSL front end: the same plain data and source positions as the YAML form, and errors that pinpoint the text.

Regenerate the golden files after an intended change of wording (and the `.dagcv` twins of the shipped specs
after editing a YAML spec): ``DAGCV_UPDATE_GOLDEN=1 pytest tests/spec/test_dsl.py``, then read the diff.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark.exceptions import UnexpectedToken

from dagcv.compiler import check_file, check_spec
from dagcv.errors import SpecError
from dagcv.spec import load_spec, parse_spec_text
from dagcv.spec.dsl import EXAMPLES, error_label, load_dsl, parser
from dagcv.spec.printer import to_dsl
from dagcv.spec.yaml_loader import load_yaml
from tests.conftest import ROOT, SPECS

GOLDEN = ROOT / "tests" / "golden" / "dsl"
CASES = sorted(GOLDEN.glob("*.dagcv"))
UPDATE = bool(os.environ.get("DAGCV_UPDATE_GOLDEN"))


def error_of(text: str, file: str = "t.dagcv") -> SpecError:
    with pytest.raises(SpecError) as info:
        load_dsl(text, file)
    return info.value


# ---------------------------------------------------------------------------------------------------------------
# Valid programs → the plain data of their YAML form

VALID = {
    "minimal": (
        "dagcv 1\nname tiny\nf = mlp <- x\n",
        {"dagcv": 1, "name": "tiny", "blocks": {"f": {"type": "mlp", "in": "x"}}},
    ),
    "lenet": (
        """# LeNet on MNIST digits
dagcv 1
name lenet_mnist
description "LeNet-5 style classifier for 28×28 grayscale digits"

input image: Image[B, 1, 28, 28]
input label: Labels[B]
sizes B=2, H=224

features = lenet_features <- image
classifier = mlp_head(hidden=[120, 84], num_classes=10) <- features
loss = cross_entropy() <- logits: classifier, target: label  @train

output logits = classifier
output loss = loss
train {epochs: 10, optimizer: {type: sgd, lr: 0.01}}
""",
        {
            "dagcv": 1, "name": "lenet_mnist", "description": "LeNet-5 style classifier for 28×28 grayscale digits",
            "inputs": {"image": "Image[B, 1, 28, 28]", "label": "Labels[B]"}, "sizes": {"B": 2, "H": 224},
            "blocks": {
                "features": {"type": "lenet_features", "in": "image"},
                "classifier": {"type": "mlp_head", "in": "features", "hidden": [120, 84], "num_classes": 10},
                "loss": {"type": "cross_entropy", "in": {"logits": "classifier", "target": "label"}, "mode": "train"},
            },
            "outputs": {"logits": "classifier", "loss": "loss"},
            "train": {"epochs": 10, "optimizer": {"type": "sgd", "lr": 0.01}},
        },
    ),
    "chains": (
        "dagcv 1\nname c\ninput image: Image[B, 3, H, W]\n"
        "image -> backbone: resnet18 -> head: global_pool_head(num_classes=10)     # a chain\n"
        "enc.z -> q: vector_quantizer(num_codes=64) @eval -> dec: conv_decoder\n"
        "output codes = q.codes\n",
        {
            "dagcv": 1, "name": "c", "inputs": {"image": "Image[B, 3, H, W]"},
            "blocks": {
                "backbone": {"type": "resnet18", "in": "image"},
                "head": {"type": "global_pool_head", "in": "backbone", "num_classes": 10},
                "q": {"type": "vector_quantizer", "in": "enc.z", "mode": "eval", "num_codes": 64},
                "dec": {"type": "conv_decoder", "in": "q"},
            },
            "outputs": {"codes": "q.codes"},
        },
    ),
    "literals": (
        'dagcv 1\nname lit\nf = t(a=1, b=-2, c=+3, d=1.5, e=-1e-3, f=2E5, g=inf, h=-inf, s="q\\"uote\\n\\u00e9", '
        "w=relu, yes=true, no=false, none=null, l=[1, [2, []], {}], m={x: 1, \"odd key\": [a, \"b c\"]}, "
        'n="1e3", t="true", k="") <- x\n',
        {
            "dagcv": 1, "name": "lit",
            "blocks": {"f": {
                "type": "t", "in": "x", "a": 1, "b": -2, "c": 3, "d": 1.5, "e": -1e-3, "f": 2e5, "g": math.inf,
                "h": -math.inf, "s": 'q"uote\né', "w": "relu", "yes": True, "no": False, "none": None,
                "l": [1, [2, []], {}], "m": {"x": 1, "odd key": ["a", "b c"]}, "n": "1e3", "t": "true", "k": "",
            }},
        },
    ),
    "continuation": (
        "dagcv 1\nname cont\n"
        "f = mlp(\n    hidden=[8,\n            16],   # comments inside brackets\n    out_features=4,\n) <- x\n"
        "loss = cross_entropy <- (\n    logits: f,\n    target: y.out,\n)  @train\n"
        "data {\n  train: {batch_size: 32,\n          shuffle: true},\n}\n",
        {
            "dagcv": 1, "name": "cont",
            "blocks": {
                "f": {"type": "mlp", "in": "x", "hidden": [8, 16], "out_features": 4},
                "loss": {"type": "cross_entropy", "in": {"logits": "f", "target": "y.out"}, "mode": "train"},
            },
            "data": {"train": {"batch_size": 32, "shuffle": True}},
        },
    ),
    "keywords_as_names": (
        "dagcv 1\nname name\ninput input: Image[B, 1, 8, 8]\nsizes sizes=3\nsizes B=4\n"
        "data = mlp(name=data, train=true) <- input\n"
        "loss = mse_loss <- input: data, target: input\n"
        "output output = data\ndata {}\n",
        {
            "dagcv": 1, "name": "name", "inputs": {"input": "Image[B, 1, 8, 8]"}, "sizes": {"sizes": 3, "B": 4},
            "blocks": {
                "data": {"type": "mlp", "in": "input", "name": "data", "train": True},
                "loss": {"type": "mse_loss", "in": {"input": "data", "target": "input"}},
            },
            "outputs": {"output": "data"}, "data": {},
        },
    ),
    "crlf_and_no_final_newline": (
        "# windows line endings\r\ndagcv 1\r\nname w\r\n\r\nf = mlp <- x\r\noutput y = f",
        {"dagcv": 1, "name": "w", "blocks": {"f": {"type": "mlp", "in": "x"}}, "outputs": {"y": "f"}},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", VALID)
def test_valid_programs_give_the_yaml_data(name) -> None:
    text, expected = VALID[name]
    data, _ = load_dsl(text, f"{name}.dagcv")
    assert data == expected


def test_nan_and_keyword_values() -> None:
    data, _ = load_dsl("dagcv 1\nname n\nf = t(a=nan, b=-nan, c=input) <- x\n", "n.dagcv")
    params = data["blocks"]["f"]
    assert math.isnan(params["a"]) and math.isnan(params["b"]) and params["c"] == "input"


def test_dsl_and_yaml_forms_give_the_same_ir() -> None:
    dsl, yaml = VALID["lenet"][0], VALID["lenet"][1]
    import yaml as pyyaml

    spec = parse_spec_text(dsl, "lenet.dagcv")
    assert spec.model_dump() == parse_spec_text(pyyaml.safe_dump(yaml, allow_unicode=True), "lenet.yaml").model_dump()
    assert spec.blocks["classifier"].params == {"hidden": [120, 84], "num_classes": 10}


# ---------------------------------------------------------------------------------------------------------------
# Source positions: every path the later stages look up points at the DSL token


def where(span) -> tuple[int, int, int | None]:
    return span.line, span.col, span.end_col


def test_spans_of_the_paths_the_graph_stage_looks_up() -> None:
    _, smap = load_dsl(VALID["lenet"][0], "lenet.dagcv")
    assert where(smap.key("inputs", "image")) == (6, 7, 12)
    assert where(smap.value("inputs", "image")) == (6, 14, 33)  # the type text, verbatim
    assert where(smap.key("sizes", "H")) == (8, 12, 13) and where(smap.value("sizes", "H")) == (8, 14, 17)
    assert where(smap.key("blocks", "classifier")) == (11, 1, 11)
    assert where(smap.value("blocks", "classifier", "type")) == (11, 14, 22)
    assert where(smap.value("blocks", "classifier", "in")) == (11, 60, 68)
    assert where(smap.key("blocks", "classifier", "num_classes")) == (11, 41, 52)
    assert where(smap.value("blocks", "classifier", "num_classes")) == (11, 53, 55)
    assert where(smap.value("blocks", "classifier", "hidden", 1)) == (11, 36, 38)
    assert where(smap.key("blocks", "loss", "in", "target")) == (12, 47, 53)
    assert where(smap.value("blocks", "loss", "in", "target")) == (12, 55, 60)
    assert where(smap.value("blocks", "loss", "mode")) == (12, 63, 68)
    assert where(smap.key("outputs", "loss")) == (15, 8, 12) and where(smap.value("outputs", "loss")) == (15, 15, 19)
    assert where(smap.key("train")) == (16, 1, 6) and where(smap.value("train", "optimizer", "lr")) == (16, 47, 51)
    assert where(smap.key("dagcv")) == (2, 1, 6) and where(smap.value("description")) == (4, 13, 66)


def test_chain_steps_are_wired_to_the_previous_step_token() -> None:
    _, smap = load_dsl(VALID["chains"][0], "c.dagcv")
    assert where(smap.value("blocks", "backbone", "in")) == (4, 1, 6)  # `image`
    assert where(smap.value("blocks", "head", "in")) == (4, 10, 18)  # the step name `backbone`
    assert where(smap.key("blocks", "head")) == (4, 32, 36)
    assert where(smap.value("blocks", "q", "mode")) == (5, 45, 49)


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("image -> backbone: resnet51 -> head: global_pool_head(num_classes=10)", "unknown block type", (20, 28)),
        ("features = lenet_features <- image\nloss = cross_entropy <- logit: features, target: label",
         "has no input port 'logit'", (25, 30)),
        ("encoder = conv_encoder <- image\nq = vector_quantizer <- encoder\ndec = conv_decoder <- q.quantised",
         "has no output port 'quantised'", (25, 34)),
        ("f = lenet_features <- imag", "unknown node 'imag'", (23, 27)),
        ("features = lenet_features <- image\nhead = mlp_head(num_classes=10, hiden=3) <- features",
         "unknown parameter 'hiden'", (33, 38)),
        ("features = lenet_features <- image @evl", "input should be 'train', 'eval', 'both' or 'sample'", (37, 40)),
    ],
)  # fmt: skip
def test_later_stage_errors_point_at_the_dsl_token(text, message, position) -> None:
    head = "dagcv 1\nname n\ninput image: Image[B, 1, 28, 28]\ninput label: Labels[B]\n"
    with pytest.raises(SpecError) as info:
        check_spec(parse_spec_text(head + text + "\n", "n.dagcv"))
    diag = next(d for d in info.value.diagnostics if message in d.message)
    assert (diag.span.line, diag.span.col, diag.span.end_col) == (4 + text.count("\n") + 1, *position)


def test_errors_inside_the_input_type_point_inside_it() -> None:
    with pytest.raises(SpecError) as info:
        check_spec(parse_spec_text("dagcv 1\nname n\ninput image: Image[B, 1, 28, 2x]\nf = lenet_features <- image\n",
                                   "n.dagcv"))  # fmt: skip
    (diag,) = info.value.diagnostics
    assert diag.span.line == 3 and "Image[B, 1, 28, 2x]"[diag.span.col - 14] in "2x]"


# ---------------------------------------------------------------------------------------------------------------
# Syntax errors


@pytest.mark.parametrize("label", EXAMPLES)
def test_every_error_example_is_classified_as_its_own_message(label) -> None:
    for example in EXAMPLES[label]:
        with pytest.raises(UnexpectedToken) as info:
            parser().parse(example)
        assert error_label(info.value) == label, example


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dagcv 1\nname n\n\n\n# later in the file\nx -> f: t(a=1) ->\n", "'->' at the end of the line"),
        ("dagcv 1\nsizes H=224, W=\n", "'W=' has no value"),
        ("dagcv 1\ntrain {lr: }\n", "'lr:' has no value"),
        ("dagcv 1\nf = t(a=1) <- @train\n", "'<-' has no source"),
        ("dagcv 1\nf = t <- logits: x, target:\n", "port 'target' has no source"),
        ("dagcv 1\nouptut y = x\n", "unknown statement 'ouptut'"),
        ("dagcv 1\nbackbone: resnet18 <- image\n", "expected '=' after 'backbone'"),
        ("dagcv 1\nf = <- x\n", "missing block type after 'f ='"),
        ("dagcv: 1\n", "'dagcv' takes its value without ':'"),
        ("dagcv 1\ninput x Image[B]\n", "expected ':' after input name 'x'"),
        ("dagcv 1\ninput x:\n", "input 'x' has no port type"),
        ("dagcv 1\noutput y x\n", "expected '=' after output name 'y'"),
        ("dagcv 1\nx -> a t\n", "expected ':' after chain step 'a'"),
        ("dagcv 1\nf = t(a=1 b=2) <- x\n", "missing ',' before 'b'"),
        ("dagcv 1\nf = t(a=[1, 2) <- x\n", "unclosed '[': missing ']'"),
        ("dagcv 1\nf = t(a={k: 1) <- x\n", "unclosed '{': missing '}'"),
        ("dagcv 1\nf = t(a=1 -> g: u\n", "missing ')' before '->'"),
        ("dagcv 1\nf = t(a='x') <- y\n", "strings are written in double quotes"),
        ("dagcv 1\nf = t(a=leaky-relu) <- y\n", "unexpected character '-'"),
        ('dagcv 1\nname "a\\qb"\n', "invalid escape in string"),
        ("dagcv 1\nf = t(a=1) <- x @train @eval\n", "unexpected '@'"),
    ],
)  # fmt: skip
def test_syntax_error_messages(text, message) -> None:
    (diag,) = error_of(text).diagnostics
    assert message in diag.message
    assert diag.span is not None and diag.span.line == text.count("\n", 0, text.rfind("\n", 0, len(text) - 1) + 1) + 1


@pytest.mark.parametrize(
    ("text", "message", "first_line"),
    [
        ("dagcv 1\nf = t <- x\nf = v <- g\ng = u <- f\n", "duplicate node 'f'", 2),
        ("dagcv 1\nx -> f: t\nf = v <- x\n", "duplicate node 'f'", 2),
        ("dagcv 1\ninput x: A[B]\ninput x: C[B]\n", "duplicate input 'x'", 2),
        ("dagcv 1\noutput y = a\noutput y = b\n", "duplicate output 'y'", 2),
        ("dagcv 1\nsizes H=1\nsizes W=2, H=3\n", "duplicate size 'H'", 2),
        ("dagcv 1\nname a\nname b\n", "duplicate 'name' statement", 2),
        ("dagcv 1\nf = t(a=1,\n      a=2) <- x\n", "duplicate parameter 'a'", 2),
        ("dagcv 1\nf = t <- (p: x,\n  p: y)\n", "duplicate port 'p'", 2),
        ("dagcv 1\ntrain {k: 1,\n  k: 2}\n", "duplicate key 'k'", 2),
    ],
)  # fmt: skip
def test_duplicates_point_at_both_definitions(text, message, first_line) -> None:
    (diag,) = error_of(text).diagnostics
    assert diag.message == message and diag.span.line == 3 and diag.notes[0][0].line == first_line


def test_reserved_parameters_and_independent_errors_are_reported_together() -> None:
    err = error_of("dagcv 1\nf = t(mode=eval, type=x) <- y\ng = u(in=f) <- f\nf = w\n")
    assert [d.message for d in err.diagnostics] == [
        "'mode' is not a parameter", "'type' is not a parameter", "'in' is not a parameter", "duplicate node 'f'",
    ]  # fmt: skip


FRAGMENTS = ["dagcv", "1", "-2", "1.5", "name", "x", "y.p", "=", "(", ")", "[", "]", "{", "}", ",", ":", "<-",
             "->", "@", "train", "input", "sizes", "\n", " ", "#c\n", '"s"', "'", "-", "Image[B, 3]", "true",
             "\r\n"]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=25).map(" ".join))
def test_any_text_gives_a_spec_or_a_located_spec_error(text) -> None:
    try:
        parse_spec_text("dagcv 1\nname n\n" + text, "fuzz.dagcv")
    except SpecError as exc:
        assert all(d.span is not None for d in exc.diagnostics) and exc.format()


def test_empty_and_deeply_nested_programs() -> None:
    assert error_of("# nothing here\n\n").diagnostics[0].message == "the spec is empty"
    assert "nested too deeply" in error_of(f"dagcv 1\ntrain {{a: {'[' * 120}{']' * 120}}}\n").format()


def test_error_format_names_file_line_and_caret() -> None:
    text = error_of("dagcv 1\nf = t(a=1 <- x\n", "specs/x.dagcv").format()
    assert text.splitlines()[:3] == [
        "specs/x.dagcv:2:11: error: missing ')' before '<-'",
        "  2 | f = t(a=1 <- x",
        "    |           ^~",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Golden error files (syntax errors and later-stage errors in .dagcv files)


def test_there_are_golden_dsl_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_dsl_diagnostics_match_golden(case, at_root) -> None:
    with pytest.raises(SpecError) as info:
        check_file(case.relative_to(ROOT))
    text = info.value.format() + "\n"
    expected_path = case.with_suffix(".expected")
    if UPDATE:
        expected_path.write_text(text)
    assert text == expected_path.read_text()
    first = info.value.diagnostics[0]
    assert first.span is not None and first.span.file == str(case.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------------------------
# The shipped specs' DSL twins


@pytest.mark.parametrize("yaml_path", SPECS, ids=lambda p: p.stem)
def test_dsl_twins_of_the_shipped_specs(yaml_path) -> None:
    """Each specs/X.dagcv is the canonical DSL of specs/X.yaml: same IR, same text."""
    spec = load_spec(yaml_path)
    twin = yaml_path.with_suffix(".dagcv")
    if UPDATE:
        twin.write_text(to_dsl(spec))
    assert load_dsl(twin.read_text(), "twin.dagcv")[0] == load_yaml(yaml_path.read_text(), "twin.yaml")[0]
    assert load_spec(twin).model_dump() == spec.model_dump()
    assert twin.read_text() == to_dsl(spec)
    check_file(twin)


# ---------------------------------------------------------------------------------------------------------------
# The parser: package data, cached, no torch, fast


def test_grammar_is_package_data_and_the_parser_is_built_once() -> None:
    assert resources.files("dagcv.spec").joinpath("dagcv.lark").is_file()
    assert parser() is parser()


def test_parsing_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom dagcv.spec import load_spec\nfrom dagcv.spec.printer import to_yaml\n"
        "to_yaml(load_spec('specs/lenet_mnist.dagcv'))\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_long_file_parses_in_linear_time() -> None:
    """A guard against accidental slowdowns; the figure to quote comes from tools/bench_dsl.py (<= 0.5 s)."""
    from tools.bench_dsl import generate_dsl

    text = generate_dsl(2500)
    assert text.count("\n") == 2500
    parser()
    start = time.process_time()
    data, smap = load_dsl(text, "big.dagcv")
    elapsed = time.process_time() - start
    assert len(data["blocks"]) > 2000 and smap.key("blocks", "n2").line == 11
    assert elapsed < 2.0, f"parsing 2,500 lines took {elapsed:.2f} s of CPU"
