"""Parse a spec file (YAML, or the DSL by extension) into the :class:`~dagcv.spec.ir.Spec` IR."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dagcv.errors import Diagnostic, Span, SpecError, did_you_mean
from dagcv.limits import limits
from dagcv.spec.ir import Spec
from dagcv.spec.sanitize import sanitize
from dagcv.spec.source import SourceMap, position
from dagcv.spec.yaml_loader import load_yaml

_BLOCK_KEYS = ("type", "shares", "in", "mode")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read and validate a spec file (with ``--set`` overrides applied); raises :class:`SpecError`."""
    return parse_spec_text(read_spec_file(Path(path)), str(path), overrides)


def read_spec_file(path: Path) -> str:
    """The text of a spec file within the size limit; any problem is a :class:`SpecError`."""
    cap = int(limits().file_mib * 2**20)
    try:
        if not path.is_file():
            what = "no such spec file" if not path.exists() else "not a regular file"
            raise SpecError.at(None, f"{what}: {path}")
        with path.open("rb") as f:
            raw = f.read(cap + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise SpecError.at(None, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > cap:
        raise SpecError.at(
            Span(str(path), 1, 1),
            f"spec file is larger than {limits().file_mib:g} MiB",
            hint="a spec describes a model; data belongs in files it names (see `dagcv --limit`)",
        )
    return decode(raw, str(path))


def decode(raw: bytes, file: str) -> str:
    """UTF-8 ``raw`` as text; invalid bytes are an error at their line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8", "replace")
        line, col = position(before, len(before))
        raise SpecError.at(
            Span(file, line, col, line, col + 1),
            f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} ({exc.reason})",
            hint="save the spec as UTF-8",
        ) from None


def parse_spec_text(text: str, file: str, overrides: list[str] | None = None) -> Spec:
    """Parse spec source ``text``; ``file`` names it in diagnostics (``.dagcv`` selects the DSL)."""
    extra: dict[str, str] = {}
    try:
        if len(text) > limits().file_mib * 2**20:
            raise SpecError.at(Span(file, 1, 1), f"spec is larger than {limits().file_mib:g} MiB")
        data, smap, bases = plain_spec(text, file)
        extra.update(bases)
        if overrides:
            from dagcv.spec.overrides import apply_overrides

            if not isinstance(data, dict):
                raise SpecError.at(smap.value(), "a spec must be a mapping at the top level")
            extra.update(apply_overrides(data, smap, overrides))
        data, smap = sanitize(data, smap)
        spec = spec_from_data(data, smap)
        spec._overrides = extra
        return spec
    except SpecError as exc:
        exc.sources.setdefault(file, text)
        exc.sources.update(extra)
        raise


def load_plain(text: str, file: str) -> tuple[Any, SourceMap]:
    """Spec source as plain data and positions, in the syntax its file name says (``.dagcv``: the DSL)."""
    if file.endswith(".dagcv"):
        from dagcv.spec.dsl import load_dsl

        return load_dsl(text, file)
    return load_yaml(text, file)


def plain_spec(text: str, file: str) -> tuple[Any, SourceMap, dict[str, str]]:
    """:func:`load_plain` with ``extends:`` merged; also returns the texts of the specs it extends."""
    data, smap = load_plain(text, file)
    if isinstance(data, dict) and "extends" in data:
        from dagcv.spec.extends import resolve_extends

        return resolve_extends(data, smap)
    return data, smap, {}


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
        raise SpecError(validation_diagnostics(exc, smap, Spec, data=data)) from None
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
    exc: ValidationError,
    smap: SourceMap,
    model: type[BaseModel] | None,
    prefix: tuple = (),
    node: str | None = None,
    data: Any = None,
) -> list[Diagnostic]:
    """One diagnostic per Pydantic error, located through the source map.

    ``prefix`` is the data path of the validated object (block params validate at ``("blocks", name)``);
    ``data`` is the validated value, used to tell real keys from the union-member tags Pydantic adds to paths.
    """
    out = []
    errors = [(e, _data_loc(data, e["loc"])) for e in exc.errors(include_url=False)]
    located = {loc for e, (loc, tagged) in errors if not tagged}
    wrong_branch = [
        tagged and err["type"].endswith("_type") and (loc in located or len(errors) > 1)
        for err, (loc, tagged) in errors
    ]
    if all(wrong_branch):  # a value no branch of a union fits (`losses: [[x]]`): say so once, with every form
        err, (loc, _) = errors[0]
        forms = " or ".join(dict.fromkeys(e["msg"][0].lower() + e["msg"][1:] for e, _ in errors))
        where = ".".join(str(p) for p in loc if p != "params") or "spec"
        span = smap.value(*prefix, *(p for p in loc if p != "params"))
        return [Diagnostic(f"{where}: {forms}", span, node=node or _node_of((*prefix, *loc)))]
    for (err, (loc, _)), skip in zip(errors, wrong_branch, strict=True):
        if skip:
            continue  # "should be a list": the branch of a union the value was never meant for
        loc = tuple(p for p in loc if p != "params")
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


def _data_loc(data: Any, loc: tuple) -> tuple[tuple, bool]:
    """``loc`` without the union-member tags (``OptimizerConfig``, ``list[...]``) that are not keys of ``data``."""
    if data is None:
        return tuple(loc), False
    out, node, tagged = [], data, False
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        elif isinstance(part, str) and (not isinstance(node, dict) or "[" in part or part[:1].isupper()):
            tagged = True
            continue
        out.append(part)
    return tuple(out), tagged


def _node_of(path: tuple) -> str | None:
    return str(path[1]) if len(path) > 1 and path[0] == "blocks" else None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (by alias) of the model found at ``loc``, walking fields, mapping values and list items."""
    if model is Spec and len(loc) == 2 and loc[0] == "blocks":
        return list(_BLOCK_KEYS)
    if model is Spec and loc and loc[0] != "blocks":
        return []
    found = _model_at(model, loc)
    return [f.alias or name for name, f in found.model_fields.items()] if found else []


def _model_at(tp: Any, loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        tp = _member(tp, part)
        if tp is None:
            return None
    models = [t for t in _flatten(tp) if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _member(tp: Any, part: Any) -> Any:
    for t in _flatten(tp):
        if isinstance(t, type) and issubclass(t, BaseModel):
            if "root" in t.model_fields and len(t.model_fields) == 1:  # a RootModel: look through it
                found = _member(t.model_fields["root"].annotation, part)
            else:
                field = t.model_fields.get(part) or next((f for f in t.model_fields.values() if f.alias == part), None)
                found = field.annotation if field else None
        elif typing.get_origin(t) is dict:
            found = typing.get_args(t)[1]
        elif typing.get_origin(t) in (list, tuple) and isinstance(part, int):
            found = typing.get_args(t)[0]
        else:
            found = None
        if found is not None:
            return found
    return None


def _flatten(tp: Any) -> list[Any]:
    """The members of a union (``X | list[X] | None``), or the type itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _flatten(a)]
    return [tp]
