"""The spec front ends (YAML, the Lark DSL) and the IR they produce."""

from dagcv.spec.ir import BlockDecl, Spec
from dagcv.spec.parse import load_spec, parse_spec_text, spec_from_data

__all__ = ["BlockDecl", "Spec", "load_spec", "parse_spec_text", "spec_from_data"]
