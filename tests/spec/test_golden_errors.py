"""Every class of spec mistake, one malformed spec each, against the exact diagnostics in a golden file.

Regenerate after an intended change of wording: ``DAGCV_UPDATE_GOLDEN=1 pytest tests/spec/test_golden_errors.py``,
then read the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dagcv.compiler import check_file
from dagcv.errors import SpecError
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "errors"
CASES = sorted(GOLDEN.glob("*.yaml"))


def test_there_is_a_golden_case_per_error_class() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_diagnostics_match_golden(case, at_root) -> None:
    with pytest.raises(SpecError) as info:
        check_file(case.relative_to(ROOT))
    text = info.value.format() + "\n"
    expected_path = case.with_suffix(".expected")
    if os.environ.get("DAGCV_UPDATE_GOLDEN"):
        expected_path.write_text(text)
    assert text == expected_path.read_text()
    first = info.value.diagnostics[0]
    assert first.span is not None and first.span.file == str(case.relative_to(ROOT))


def test_check_reports_independent_errors_together(at_root) -> None:
    with pytest.raises(SpecError) as info:
        check_file("tests/golden/errors/several_errors.yaml")
    found = [(d.span.line, d.span.col, d.node) for d in info.value.diagnostics]
    assert found == [(7, 20, "features"), (8, 56, "classifier"), (9, 44, "loss"), (9, 59, "loss"), (10, 25, "head")]


def test_cli_exit_code_and_json(at_root) -> None:
    case = "tests/golden/errors/kind_mismatch.yaml"
    run = subprocess.run([sys.executable, "-m", "dagcv.cli", "check", "--json", case], capture_output=True, text=True)
    assert run.returncode == 2
    (diag,) = json.loads(run.stdout)
    assert diag == {
        "file": case, "line": 9, "col": 44, "end_line": 9, "end_col": 52, "severity": "error", "node": "loss",
        "port": "logits", "message": "kind mismatch: features.out is FeatureMap but loss.logits expects Logits",
        "hint": "'loss.logits' needs Logits; check which node should feed it", "notes": [],
    }  # fmt: skip
    plain = subprocess.run([sys.executable, "-m", "dagcv.cli", "check", case], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith(f"{case}:9:44: error: kind mismatch")
