"""Parse a spec file (YAML, or the DSL by extension) into the :class:`~dagcv.spec.ir.Spec` IR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dagcv.errors import Diagnostic, Span, SpecError, did_you_mean
from dagcv.spec.ir import BlockDecl, Spec
from dagcv.spec.source import SourceMap
from dagcv.spec.yaml_loader import load_yaml

_BLOCK_KEYS = ("type", "in", "mode")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read and validate a spec file (with ``--set`` overrides applied); raises :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError.at(None, f"no such spec file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError.at(None, f"cannot read {path}: {exc}") from None
    return parse_spec_text(text, str(path), overrides)


def parse_spec_text(text: str, file: str, overrides: list[str] | None = None) -> Spec:
    """Parse spec source ``text``; ``file`` names it in diagnostics (``.dagcv`` selects the DSL)."""
    extra: dict[str, str] = {}
    try:
        if file.endswith(".dagcv"):
            from dagcv.spec.dsl import load_dsl

            data, smap = load_dsl(text, file)
        else:
            data, smap = load_yaml(text, file)
        if overrides:
            from dagcv.spec.overrides import apply_overrides

            if not isinstance(data, dict):
                raise SpecError.at(smap.value(), "a spec must be a mapping at the top level")
            extra = apply_overrides(data, smap, overrides)
        spec = spec_from_data(data, smap)
        spec._overrides = extra
        return spec
    except SpecError as exc:
        exc.sources.setdefault(file, text)
        exc.sources.update(extra)
        raise


def spec_from_data(data: Any, smap: SourceMap) -> Spec:
    """Validate plain data (from any front end) into a Spec, mapping Pydantic errors to spans."""
    if not isinstance(data, dict):
        raise SpecError.at(smap.value(), "a spec must be a mapping at the top level", hint="start with 'dagcv: 1'")
    data = dict(data)
    if isinstance(data.get("blocks"), dict):
        data["blocks"] = {name: _split_params(decl) for name, decl in data["blocks"].items()}
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(validation_diagnostics(exc, smap, Spec)) from None
    spec._source = smap
    return spec


def _split_params(decl: Any) -> Any:
    """Block entries write parameters inline; the IR keeps them under ``params``."""
    if not isinstance(decl, dict):
        return decl
    out = {k: v for k, v in decl.items() if k in _BLOCK_KEYS}
    out["params"] = {k: v for k, v in decl.items() if k not in _BLOCK_KEYS}
    return out


def validation_diagnostics(
    exc: ValidationError, smap: SourceMap, model: type[BaseModel] | None, prefix: tuple = (), node: str | None = None
) -> list[Diagnostic]:
    """One diagnostic per Pydantic error, located through the source map.

    ``prefix`` is the data path of the validated object (block params validate at ``("blocks", name)``).
    """
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p != "params")
        path = (*prefix, *loc)
        kind = err["type"]
        field = str(loc[-1]) if loc else ""
        where = ".".join(str(p) for p in loc) or "spec"
        hint = None
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1]) if model else []
            message = f"unknown key '{field}'" + (f" in {'.'.join(map(str, loc[:-1]))}" if len(loc) > 1 else "")
            hint = did_you_mean(field, allowed) or (f"allowed keys: {', '.join(allowed)}" if allowed else None)
            span = smap.key(*path)
        elif kind == "missing":
            parent = ".".join(str(p) for p in loc[:-1])
            message = f"missing required key '{field}'" + (f" in {parent}" if parent else "")
            span = smap.key(*path[:-1]) if len(path) > 1 else Span(smap.file, 1, 1)
            if field == "dagcv" and not parent:
                hint = "the first line of a spec is 'dagcv: 1'"
        else:
            found = err.get("input")
            message = f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}"
            if not isinstance(found, dict | list):
                message += f", found {found!r}"
            span = smap.value(*path)
            if kind == "literal_error":
                import re

                hint = did_you_mean(str(found), re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
            if field == "name" and kind == "string_pattern_mismatch":
                hint = "use letters, digits and '_', not starting with a digit"
        port = None
        out.append(Diagnostic(message, span, hint=hint, node=node or _node_of(path), port=port))
    return out


def _node_of(path: tuple) -> str | None:
    return str(path[1]) if len(path) > 1 and path[0] == "blocks" else None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (by alias) of the model found at ``loc`` (mapping keys in ``loc`` are skipped)."""
    if model is Spec and len(loc) == 2 and loc[0] == "blocks":
        return list(_BLOCK_KEYS)
    if model is Spec and loc:
        return []
    if model is BlockDecl:
        return list(_BLOCK_KEYS)
    return [f.alias or name for name, f in model.model_fields.items()]
