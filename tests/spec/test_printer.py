"""The printers: canonical DSL and YAML text of the IR, kept comments, and round trips that are identities.

Property tests generate random valid IR graphs (identifiers, every literal kind, strings that need quotes) and
check IR → text → IR in both syntaxes.
"""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagcv.spec import Spec, load_spec, parse_spec_text, spec_from_data
from dagcv.spec.dsl import KEYWORDS
from dagcv.spec.printer import dsl_value, to_dsl, to_yaml, yaml_flow
from dagcv.spec.sanitize import nfc
from dagcv.spec.source import SourceMap
from tests.conftest import SPECS


def same(a: Spec, b: Spec) -> None:
    """Equal IR, down to the types and order of values (1 vs 1.0 vs True, -0.0 vs 0.0)."""
    assert a.model_dump() == b.model_dump()
    assert repr(a.model_dump()) == repr(b.model_dump())


def via_dsl(spec: Spec) -> Spec:
    return parse_spec_text(to_dsl(spec), "printed.dagcv")


def via_yaml(spec: Spec) -> Spec:
    return parse_spec_text(to_yaml(spec), "printed.yaml")


# ---------------------------------------------------------------------------------------------------------------
# The shipped specs


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_shipped_specs_round_trip_through_both_syntaxes(path) -> None:
    spec = load_spec(path)
    dsl, yaml_text = to_dsl(spec), to_yaml(spec)
    same(via_dsl(spec), spec)
    same(via_yaml(spec), spec)
    from_dsl = via_dsl(spec)
    # DSL → YAML gives the same YAML, comments included (the editor's schema line is YAML-only: it is not carried
    # through the DSL, so it is given back explicitly).
    schema = (
        yaml_text.split("\n", 1)[0].split("$schema=")[1] if yaml_text.startswith("# yaml-language-server") else None
    )
    assert to_yaml(from_dsl, schema_comment=schema) == yaml_text
    assert to_dsl(via_yaml(spec)) == dsl  # canonical text is a fixed point
    assert to_yaml(via_yaml(spec)) == yaml_text


CANONICAL_YAML = """\
# yaml-language-server: $schema=../docs/dagcv.schema.json
# A spec in canonical form: every comment here survives both printers.
dagcv: 1
name: commented
description: 'yes: a description that needs quotes'
# the inputs
inputs:
  # pixels
  image: Image[B, 1, 28, 28]
  label: Labels[B]
sizes: {B: 4}  # a small batch
blocks:
  # the body
  features:   {type: lenet_features, in: image, size: '12', flag: 'True'}   # the trunk
  classifier: {type: mlp_head, in: features, hidden: [120, 84], num_classes: 10, note: '1e3', tag: 'null'}
  a_block_with_a_long_name:
    type: mlp_head
    in: features
    hidden: [120, 84]
    num_classes: 10
    note: this block does not fit on one line, so it is written one key a line
  # only while training
  loss:       {type: cross_entropy, in: {logits: classifier, target: label}, mode: train}
outputs:
  logits: classifier
  # the loss, for the loop
  loss: loss
data:
  # where the images come from
  train:
    dataset: {type: mnist_idx, root: data/mnist}
    batch_size: 64
train:
  epochs: 2     # short: a smoke run
  # plain SGD
  optimizer: {type: sgd, lr: 0.01}
  metrics:
    - {type: accuracy, output: logits, target: label}
    - {type: accuracy, output: logits, target: label, top_k: 5, note: a long enough entry to break the line}
# trailing notes stay at the end
"""


def test_canonical_yaml_is_reproduced_with_its_comments() -> None:
    spec = parse_spec_text(CANONICAL_YAML, "c.yaml")
    assert to_yaml(spec) == CANONICAL_YAML
    dsl = to_dsl(spec)
    back = to_yaml(parse_spec_text(dsl, "c.dagcv"), schema_comment="../docs/dagcv.schema.json")
    assert back == CANONICAL_YAML  # YAML → DSL → YAML keeps every comment (the DSL has no schema line)


def test_dsl_keeps_comments_above_their_elements() -> None:
    dsl = to_dsl(parse_spec_text(CANONICAL_YAML, "c.yaml"))
    lines = dsl.splitlines()
    assert lines[0] == "# A spec in canonical form: every comment here survives both printers."
    assert "yaml-language-server" not in dsl
    for comment, element in [
        ("# the inputs", ""), ("# pixels", "input image: Image[B, 1, 28, 28]"),
        ("# the body", 'features = lenet_features(size="12", flag=True) <- image   # the trunk'),
        ("# only while training", "loss = cross_entropy <- logits: classifier, target: label @train"),
        ("# the loss, for the loop", "output loss = loss"),
        ("  # where the images come from", '  train: {dataset: {type: mnist_idx, root: "data/mnist"}, batch_size: 6'
                                            "4},"),
        ("  # plain SGD", "  optimizer: {type: sgd, lr: 0.01},"),
    ]:  # fmt: skip
        assert lines[lines.index(comment) + 1] == element
    assert lines[-1] == "# trailing notes stay at the end"


def test_schema_comment() -> None:
    spec = parse_spec_text("dagcv: 1\nname: n\nblocks:\n  f: {type: mlp, in: x}\n", "s.yaml")
    assert to_yaml(spec, schema_comment="../docs/dagcv.schema.json").splitlines()[:2] == [
        "# yaml-language-server: $schema=../docs/dagcv.schema.json", "dagcv: 1",
    ]  # fmt: skip
    kept = parse_spec_text(CANONICAL_YAML, "c.yaml")
    assert to_yaml(kept).startswith("# yaml-language-server: $schema=../docs/dagcv.schema.json\n")
    assert to_yaml(kept, schema_comment="s.json").count("yaml-language-server") == 1


def test_end_of_line_comments_go_with_the_leftmost_element_of_their_line() -> None:
    spec = parse_spec_text("dagcv: 1\nname: n  # the name\nblocks:\n  f: {type: mlp, in: x, note: 'a # b'}  # f\n"
                           "train:\n  opt: {lr: 0.1}   # slow\n  steps: [1, 2]  # two\n", "s.yaml")  # fmt: skip
    dsl = to_dsl(spec)
    assert "name n  # the name" in dsl and 'f = mlp(note="a # b") <- x  # f' in dsl
    assert "  opt: {lr: 0.1},   # slow\n  steps: [1, 2],  # two\n" in dsl
    assert to_yaml(parse_spec_text(dsl, "s.dagcv")) == to_yaml(spec)
    assert "  f: {type: mlp, in: x, note: 'a # b'}  # f\n" in to_yaml(spec)


def test_dsl_source_comments_survive_to_yaml() -> None:
    text = (
        "# header\ndagcv 1\nname n\n\n# the input\ninput x: Embedding[B, 8]\n\n# first block\n"
        "f = mlp(hidden=[8]) <- x\n# a chain\nf -> g: mlp -> h: mlp\ntrain {\n  # the length\n  epochs: 3,\n}\n"
    )
    yaml_text = to_yaml(parse_spec_text(text, "n.dagcv"))
    assert yaml_text.startswith("# header\ndagcv: 1\nname: n\ninputs:\n  # the input\n  x: Embedding[B, 8]\n")
    assert "blocks:\n  # first block\n  f: {type: mlp, in: x, hidden: [8]}\n  # a chain\n  g: " in yaml_text
    assert yaml_text.endswith("train:\n  # the length\n  epochs: 3\n")


# ---------------------------------------------------------------------------------------------------------------
# Formatting


def test_long_blocks_break_in_both_syntaxes() -> None:
    wide = {"type": "mlp", "in": "x", "hidden": list(range(30)), "note": "n" * 40}
    spec = spec_from_data({"dagcv": 1, "name": "w", "blocks": {"f": wide, "g": {"type": "relu", "in": "f"}}},
                          SourceMap("w.yaml", ""))  # fmt: skip
    yaml_text, dsl = to_yaml(spec), to_dsl(spec)
    assert "  f:\n    type: mlp\n    in: x\n    hidden: [0, 1, 2" in yaml_text
    assert "  g: {type: relu, in: f}" in yaml_text
    assert "f = mlp(\n    hidden=[\n      0, 1, 2," in dsl and "\n) <- x\n" in dsl
    assert max(len(line) for line in dsl.splitlines()) <= 110
    same(via_dsl(spec), spec)
    same(via_yaml(spec), spec)


@pytest.mark.parametrize(
    "value",
    ["yes", "No", "on", "null", "~", "true", "True", "1e3", "0x1F", "1_000", "12:30", "2001-12-14", ".inf", "inf",
     "nan", "-inf", "", " lead", "trail ", "#x", "a #b", "a: b", "- x", "[a]", "{a}", "@x", "`x", "!x", "&x", "*x",
     "|", ">", "%x", "?", ",", "'", '"', "multi\nline", "tab\there", "back\\slash", "ü 28×28", "\u2028", "\x85",
     "\x7f", "data", "input"],
)  # fmt: skip
def test_strings_that_need_quotes_round_trip(value) -> None:
    data = {"dagcv": 1, "name": "q", "description": value, "blocks": {"f": {"type": "t", "in": "x", "p": value,
            "m": {value: [value]}}}, "train": {value: value}}  # fmt: skip
    spec = spec_from_data(data, SourceMap("q.yaml", ""))
    same(via_dsl(spec), spec)
    same(via_yaml(spec), spec)


def test_literal_texts() -> None:
    assert dsl_value([None, True, 1, -0.0, 1e-7, math.inf, -math.inf, "a", "a b", "true", {"k k": {}}]) == (
        '[null, true, 1, -0.0, 1e-07, inf, -inf, a, "a b", "true", {"k k": {}}]'
    )
    assert yaml_flow({"a": "yes", "b": [1.0, None], "c": "x: y"}) == "{a: 'yes', b: [1.0, null], c: 'x: y'}"


@pytest.mark.parametrize(
    "blocks",
    [
        {"my-node": {"type": "mlp"}},
        {"f": {"type": "mlp", "in": "a.b.c"}},
        {"f": {"type": "mlp", "in": ["a", "b"]}},
        {"f": {"type": "mlp", "in": {}}},
        {"f": {"type": "resnet-18"}},
        {},
    ],
)
def test_what_the_dsl_cannot_write_is_a_value_error(blocks) -> None:
    spec = spec_from_data({"dagcv": 1, "name": "n", "blocks": blocks}, SourceMap("n.yaml", ""))
    with pytest.raises(ValueError):
        to_dsl(spec)
    same(via_yaml(spec), spec)  # YAML writes anything the IR holds


def test_parameters_named_like_block_keys_are_refused() -> None:
    spec = Spec.model_validate({"dagcv": 1, "name": "n", "blocks": {"f": {"type": "t", "params": {"mode": 1}}}})
    for printer in (to_dsl, to_yaml):
        with pytest.raises(ValueError, match="'mode'"):
            printer(spec)


# ---------------------------------------------------------------------------------------------------------------
# Property tests: random valid IR graphs print and parse back to themselves

# Composed rather than regex strategies: regex generation would take most of the time budget.
IDENT = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters + "_"),
    st.text(string.ascii_letters + string.digits + "_", max_size=7),
) | st.sampled_from([*KEYWORDS, "true", "false", "null", "inf", "nan", "yes", "on", "in", "type"])
TRICKY = st.sampled_from(["", "yes", "null", "1e3", "0x10", " x", "a: b", "#c", "- d", "[e]", "true", "2001-01-01"])
INTS = st.integers(-(2**63) + 1, 2**63 - 1)  # a spec's integers fit in 64 bits


def texts(*args, **kwargs) -> st.SearchStrategy[str]:
    """Text as a spec holds it: strings are NFC-normalised on reading."""
    return st.text(*args, **kwargs).map(nfc)


SCALARS = st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | texts(max_size=10) | TRICKY | IDENT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=6) | IDENT, inner, max_size=4),
    max_leaves=10,
)
TYPE_TEXT = st.builds(
    lambda kind, dims: f"{kind}[{', '.join(dims)}]" if dims else kind,
    st.sampled_from(["Image", "Labels", "FeatureMap", "True", "Null", "No", "On"]),
    st.lists(st.sampled_from(["B", "C", "H", "W", "1", "3", "28", "H/8"]), max_size=4),
)
PARAM_KEY = IDENT.filter(lambda k: k not in ("type", "in", "mode"))


@st.composite
def specs(draw) -> Spec:
    inputs = draw(st.dictionaries(IDENT, TYPE_TEXT, max_size=3))
    names = draw(st.lists(IDENT, min_size=1, max_size=6, unique=True))
    known = [*inputs, *names]
    source = st.builds(lambda n, p: n if p is None else f"{n}.{p}", st.sampled_from(known), st.none() | IDENT)
    blocks = {}
    for name in names:
        block: dict = {"type": draw(IDENT)}
        wiring = draw(st.none() | source | st.dictionaries(IDENT, source, min_size=1, max_size=3))
        if wiring is not None:
            block["in"] = wiring
        mode = draw(st.sampled_from([None, "train", "eval", "both"]))
        if mode is not None:
            block["mode"] = mode
        block.update(draw(st.dictionaries(PARAM_KEY, VALUES, max_size=4)))
        blocks[name] = block
    data = {"dagcv": 1, "name": draw(IDENT), "blocks": blocks}
    optional = {
        "description": texts(max_size=20) | TRICKY,
        "inputs": st.just(inputs),
        "sizes": st.dictionaries(IDENT, INTS, max_size=3),
        "outputs": st.dictionaries(IDENT, source, max_size=3),
        "data": st.dictionaries(st.text(string.printable, max_size=6) | IDENT, VALUES, max_size=3),
        "train": st.dictionaries(texts(max_size=6) | IDENT, VALUES, max_size=3),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            data[key] = draw(strategy)
    return spec_from_data(data, SourceMap("generated.yaml", ""))


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(specs())
def test_ir_to_dsl_to_ir_is_the_identity(spec) -> None:
    back = via_dsl(spec)
    same(back, spec)
    assert to_dsl(back) == to_dsl(spec)  # canonical text is a fixed point


@PROPERTY
@given(specs())
def test_ir_to_yaml_to_ir_is_the_identity(spec) -> None:
    back = via_yaml(spec)
    same(back, spec)
    assert to_yaml(back) == to_yaml(spec)
