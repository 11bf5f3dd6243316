"""One registry of blocks, filled by one decorator; contracts readable without importing torch.

A block is a plain class (usually an ``nn.Module``) or a builder function with keyword-only arguments. Its
contract sits beside it as data::

    @register_block(
        "lenet_features",
        family="backbone",
        inputs={"x": "Image[B, C, H, W]"},
        outputs={"out": "FeatureMap[B, 16, ((H-4)//2-4)//2, ((W-4)//2-4)//2]"},
        infer={"in_channels": "C"},
    )
    class LeNetFeatures(nn.Module):
        def __init__(self, *, in_channels: int = 3): ...

The parameters model is derived from the constructor signature (keyword-only arguments, their annotations,
defaults and the ``Args:`` section of the docstring); ``infer`` says how arguments follow from the symbols of
the input shapes. ``python -m dagcv.registry`` imports every block and writes ``blocks/manifest.json``; the
compiler reads that file, so ``dagcv check`` never imports torch or a block implementation. Third-party blocks
register through the ``dagcv.blocks`` entry-point group (each entry names a module to import).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import StrictBool, StrictFloat, StrictInt

from dagcv.types import PortType, parse_port_type

FAMILIES = (
    "data", "env", "backbone", "neck", "head", "layer", "loss", "postprocess",
    "policy", "critic", "encoder", "quantizer", "decoder", "prior", "generator", "discriminator", "noise",
    "schedule", "denoiser",
)  # fmt: skip
MODES = ("train", "eval", "both", "sample")
RESERVED_KEYS = ("type", "shares", "in", "mode")
MANIFEST_NAME = "manifest.json"
ENTRY_POINT_GROUP = "dagcv.blocks"


@dataclass(frozen=True)
class PortDecl:
    """A named input or output port and its type text (``"Image[B, C, H, W]"``)."""

    name: str
    type: str
    doc: str = ""

    @cached_property
    def parsed(self) -> PortType:
        return parse_port_type(self.type)


@dataclass(frozen=True)
class ParamDecl:
    """A constructor argument a spec may set."""

    name: str
    annotation: str
    required: bool
    default: Any = None
    doc: str = ""


@dataclass(frozen=True)
class Contract:
    """Everything the compiler knows about a block before importing it."""

    name: str
    family: str
    target: str  # "module:qualname"
    file: str
    line: int
    doc: str
    inputs: tuple[PortDecl, ...]
    outputs: tuple[PortDecl, ...]
    params: tuple[ParamDecl, ...]
    infer: dict[str, str] = field(default_factory=dict)
    default_mode: str = "both"
    module: bool = True  # an nn.Module that becomes part of the lowered model
    requires: dict[str, str] = field(default_factory=dict)  # rule expression -> why (dagcv.rules)
    checkpoints: tuple[str, ...] = ()  # parameters that name a torch checkpoint file
    param_count: str | None = None  # an estimate of the block's weights (a dagcv.rules expression)
    refine: str | None = None  # "module:function" giving output types from the parameters (an env's spaces)

    def input(self, name: str) -> PortDecl | None:
        return next((p for p in self.inputs if p.name == name), None)

    def output(self, name: str) -> PortDecl | None:
        return next((p for p in self.outputs if p.name == name), None)

    def param(self, name: str) -> ParamDecl | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def is_source(self) -> bool:
        """A block without inputs whose run-time outputs are fed from outside (an env, a dataset)."""
        return not self.module and not self.inputs

    def to_json(self) -> dict:
        return {
            "name": self.name, "family": self.family, "target": self.target, "file": self.file,
            "line": self.line, "doc": self.doc, "default_mode": self.default_mode, "module": self.module,
            "inputs": [_port_json(p) for p in self.inputs],
            "outputs": [_port_json(p) for p in self.outputs],
            "params": [vars(p) for p in self.params], "infer": self.infer,
            "requires": self.requires, "checkpoints": list(self.checkpoints), "param_count": self.param_count,
            "refine": self.refine,
        }  # fmt: skip

    @staticmethod
    def from_json(data: dict) -> Contract:
        return Contract(
            name=data["name"], family=data["family"], target=data["target"], file=data["file"],
            line=data["line"], doc=data["doc"], default_mode=data["default_mode"], module=data["module"],
            inputs=tuple(PortDecl(**p) for p in data["inputs"]),
            outputs=tuple(PortDecl(**p) for p in data["outputs"]),
            params=tuple(ParamDecl(**p) for p in data["params"]), infer=dict(data["infer"]),
            requires=dict(data.get("requires", {})), checkpoints=tuple(data.get("checkpoints", ())),
            param_count=data.get("param_count"), refine=data.get("refine"),
        )  # fmt: skip


def _port_json(port: PortDecl) -> dict:
    return {"name": port.name, "type": port.type, "doc": port.doc}


class Registry:
    """Block contracts by name, plus the implementations once they are imported."""

    def __init__(self) -> None:
        self.contracts: dict[str, Contract] = {}
        self.objects: dict[str, Callable[..., Any]] = {}
        self._plugins_loaded = False

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self.contracts)

    def get(self, name: str) -> Contract | None:
        """The contract of ``name``; loads third-party plugins only when the name is not built in."""
        if name not in self.contracts:
            self.load_plugins()
        return self.contracts.get(name)

    def implementation(self, name: str) -> Callable[..., Any]:
        """The class or builder registered as ``name``, importing its module on first use."""
        if name not in self.objects:
            contract = self.contracts[name]
            module_name, qualname = contract.target.split(":")
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            self.objects[name] = getattr(obj, "__dagcv_wrapped__", obj)
        return self.objects[name]

    def add(self, contract: Contract, obj: Callable[..., Any]) -> None:
        old = self.contracts.get(contract.name)
        if old is not None and old.target != contract.target:
            raise ValueError(f"block '{contract.name}' registered twice: {old.target} and {contract.target}")
        self.contracts[contract.name] = contract
        self.objects[contract.name] = obj

    def load_plugins(self) -> None:
        """Import every module named in the ``dagcv.blocks`` entry-point group (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()

    def by_family(self) -> dict[str, list[Contract]]:
        out: dict[str, list[Contract]] = {}
        for name in self.names():
            c = self.contracts[name]
            out.setdefault(c.family, []).append(c)
        return dict(sorted(out.items(), key=lambda kv: FAMILIES.index(kv[0]) if kv[0] in FAMILIES else 99))


_REGISTRY: Registry | None = None
_LIVE: Registry = Registry()  # filled by the decorator as block modules are imported


def registry() -> Registry:
    """The process-wide registry: the shipped manifest plus whatever the decorator registered since."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
        for contract in load_manifest():
            _REGISTRY.contracts[contract.name] = contract
    # Blocks imported in this process (tests, plugins, a stale manifest) win over the manifest.
    _REGISTRY.contracts.update(_LIVE.contracts)
    _REGISTRY.objects.update(_LIVE.objects)
    return _REGISTRY


# ---------------------------------------------------------------------------------------------------------------
# The decorator


def register_block(
    name: str,
    *,
    family: str,
    inputs: dict[str, str] | None = None,
    outputs: dict[str, str],
    infer: dict[str, str] | None = None,
    default_mode: Literal["train", "eval", "both", "sample"] = "both",
    module: bool = True,
    requires: dict[str, str] | None = None,
    checkpoints: tuple[str, ...] = (),
    param_count: str | None = None,
    refine: str | None = None,
) -> Callable[[Any], Any]:
    """Register a class or builder function as block ``name`` with its port contract.

    Args:
        name: the spec name, ``family_variant`` style (``resnet50``, ``retina_head``).
        family: one of :data:`FAMILIES`.
        inputs: port name to port type, in call order (``{"x": "Image[B, C, H, W]"}``); ``?`` marks optional.
        outputs: port name to port type; a block with several outputs returns a dict keyed by port name.
        infer: constructor argument to a dim expression over the input symbols (``{"in_channels": "C"}``).
        default_mode: the mode of a node that does not say (losses: ``train``).
        module: False for blocks that are not part of the model (an env, a dataset).
        requires: rules the constructor or forward would otherwise enforce at run time, as expressions over the
            parameters, inferred arguments and input symbols (:mod:`dagcv.rules`) mapped to the reason, so that
            ``dagcv check`` catches what would fail in ``dagcv compile``.
        checkpoints: parameters that name a local torch checkpoint (``weights``); ``dagcv check`` verifies the
            file is one before anything loads it.
        param_count: roughly how many weights the block holds, as an expression over its parameters and inferred
            arguments, for blocks whose layers multiply their sizes (``"1150 * width * width"``); ``dagcv check``
            refuses a spec whose estimate passes the limit. Without it a generic estimate applies.
        refine: ``"module:function"`` of a torch-free function from the block's parameters to the exact types of
            (some of) its outputs, for blocks whose ports depend on what a parameter names: an env block's
            observation and action space come from its Gymnasium id. It raises ``dagcv.envs.PortError``.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"block name '{name}' must be snake_case")
    if family not in FAMILIES:
        raise ValueError(f"block '{name}': unknown family '{family}' (one of {', '.join(FAMILIES)})")

    def decorate(obj: Any) -> Any:
        contract = _contract_for(obj, name, family, inputs or {}, outputs, infer or {}, default_mode, module)
        contract = replace(
            contract,
            requires=dict(requires or {}),
            checkpoints=tuple(checkpoints),
            param_count=param_count,
            refine=refine,
        )
        _check_rules(contract)
        _LIVE.add(contract, obj)
        if _REGISTRY is not None:
            _REGISTRY.add(contract, obj)
        return obj

    return decorate


def _contract_for(
    obj: Any, name: str, family: str, inputs: dict[str, str], outputs: dict[str, str],
    infer: dict[str, str], default_mode: str, module: bool,
) -> Contract:  # fmt: skip
    for port_type in [*inputs.values(), *outputs.values()]:
        parse_port_type(port_type)  # fail at import time on a malformed contract
    doc = inspect.getdoc(obj) or ""
    init = obj.__init__ if inspect.isclass(obj) else obj
    arg_docs = _arg_docs(doc) | _arg_docs(inspect.getdoc(init) or "")
    params = []
    for pname, p in inspect.signature(init, eval_str=True).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is not p.KEYWORD_ONLY:
            raise TypeError(f"block '{name}': constructor argument '{pname}' must be keyword-only")
        if pname in RESERVED_KEYS:
            raise TypeError(f"block '{name}': argument '{pname}' clashes with a reserved spec key")
        if p.annotation is inspect.Parameter.empty:
            raise TypeError(f"block '{name}': argument '{pname}' needs a type annotation")
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        json.dumps(default)  # defaults must be plain data
        params.append(ParamDecl(pname, annotation_text(p.annotation), required, default, arg_docs.get(pname, "")))
    for arg in infer:
        if not any(p.name == arg for p in params):
            raise TypeError(f"block '{name}': infer names '{arg}', which is not a constructor argument")
    src = inspect.getsourcefile(obj) or "?"
    root = Path(importlib.util.find_spec("blocks").origin).parent.parent if _has_blocks() else Path.cwd()
    try:
        file = str(Path(src).resolve().relative_to(root.resolve()))
    except ValueError:
        file = src
    return Contract(
        name=name, family=family, target=f"{obj.__module__}:{obj.__qualname__}", file=file,
        line=_definition_line(obj), doc=doc.split("\n\n")[0].replace("\n", " "),
        inputs=tuple(PortDecl(k, v) for k, v in inputs.items()),
        outputs=tuple(PortDecl(k, v) for k, v in outputs.items()),
        params=tuple(params), infer=dict(infer), default_mode=default_mode, module=module,
    )  # fmt: skip


def _check_rules(contract: Contract) -> None:
    """Rules parse, and read only parameters and input symbols; checkpoints name string parameters."""
    from dagcv.rules import names

    known = {p.name for p in contract.params}
    for port in contract.inputs:
        known |= {d.expr for d in port.parsed.dims or () if d.symbol or d.variadic}
    for expr in [*contract.requires, *([contract.param_count] if contract.param_count else [])]:
        unknown = [n for n in names(expr) if n not in known]
        if unknown:
            raise TypeError(f"block '{contract.name}': rule {expr!r} reads {unknown}, not parameters or input symbols")
    for name in contract.checkpoints:
        param = contract.param(name)
        if param is None or "str" not in param.annotation:
            raise TypeError(f"block '{contract.name}': checkpoint parameter '{name}' must be a str parameter")


def _definition_line(obj: Any) -> int:
    """The line of the ``class``/``def`` statement itself (getsourcelines starts at the first decorator)."""
    lines, start = inspect.getsourcelines(obj)
    for offset, text in enumerate(lines):
        if text.lstrip().startswith(("class ", "def ")):
            return start + offset
    return start


def _has_blocks() -> bool:
    spec = importlib.util.find_spec("blocks")
    return spec is not None and spec.origin is not None


def _arg_docs(doc: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring as name → text."""
    out: dict[str, str] = {}
    match = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", doc, re.M)
    if not match:
        return out
    current = None
    for line in match.group(1).splitlines():
        m = re.match(r"^\s{2,8}(\w+)(?: \(.*?\))?:\s*(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


_SIMPLE = {int: "int", float: "float", bool: "bool", str: "str", type(None): "None", Any: "Any"}
_BOUNDS = (at.Gt, at.Ge, at.Lt, at.Le, at.MinLen, at.MaxLen)

# Parameter types with bounds, for block signatures: Pydantic checks them, so `dagcv check` does too.
Size = Annotated[int, at.Gt(0)]  # a width, a count of layers or classes: at least 1
Count = Annotated[int, at.Ge(0)]  # zero or more
Fraction = Annotated[float, at.Ge(0), at.Le(1)]  # a probability or a ratio in [0, 1]
PositiveFloat = Annotated[float, at.Gt(0)]


def annotation_text(tp: Any) -> str:
    """A spec-expressible annotation as text (``list[int] | None``); anything else is a registration error."""
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        bounds = tp.__metadata__
        if not all(isinstance(b, _BOUNDS) for b in bounds):
            raise TypeError(f"unsupported annotation metadata in {tp!r}: use {', '.join(b.__name__ for b in _BOUNDS)}")
        return f"Annotated[{annotation_text(args[0])}, {', '.join(repr(b) for b in bounds)}]"
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(annotation_text(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else annotation_text(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    raise TypeError(f"unsupported parameter type {tp!r}: use int, float, bool, str, list, tuple, dict, Literal")


# Strict scalars: a spec's `true` is no 1 and its `2.5` no 2 (Pydantic's lax mode would convert both).
_TYPE_NAMESPACE = {"int": StrictInt, "float": StrictFloat, "bool": StrictBool, "str": str, "None": None, "Any": Any,
                   "list": list, "tuple": tuple, "dict": dict, "Literal": Literal, "Annotated": Annotated,
                   **{b.__name__: b for b in _BOUNDS}}  # fmt: skip


_BOUND_TEXT = {"Gt": ">", "Ge": ">=", "Lt": "<", "Le": "<=", "MinLen": "len >=", "MaxLen": "len <="}


def readable_annotation(text: str) -> str:
    """An annotation as `dagcv blocks` shows it: bounds written out.

    >>> readable_annotation("tuple[Annotated[int, Gt(gt=0)], ...] | None")
    'tuple[int > 0, ...] | None'
    >>> readable_annotation("Annotated[float, Ge(ge=0), Le(le=1)]")
    'float >= 0, <= 1'
    """

    def bounds(match: re.Match) -> str:
        parts = re.findall(r"(\w+)\(\w+=([^,()]+)\)", match.group(2))
        return f"{match.group(1)} " + ", ".join(f"{_BOUND_TEXT[name]} {value}" for name, value in parts)

    return re.sub(r"Annotated\[(\w+), ((?:\w+\([^()]*\)(?:, )?)+)\]", bounds, text)


def annotation_type(text: str) -> Any:
    """The inverse of :func:`annotation_text` (manifest text → a type pydantic validates against)."""
    return eval(text, {"__builtins__": {}}, _TYPE_NAMESPACE)


# ---------------------------------------------------------------------------------------------------------------
# The manifest: contracts as a JSON file next to the block library


def blocks_dir() -> Path | None:
    """The ``blocks`` package folder, found without importing it (importing it imports torch)."""
    spec = importlib.util.find_spec("blocks")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _source_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(root.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def load_manifest() -> list[Contract]:
    """Contracts of the shipped blocks; falls back to importing them when the manifest is stale."""
    root = blocks_dir()
    if root is None:
        return []
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text()) if path.exists() else None
    if data is None or data.get("sources") != _source_hashes(root):
        print(
            f"dagcv: warning: {path} is out of date with the block sources; importing blocks instead "
            "(run `make manifest`)",
            file=sys.stderr,
        )
        importlib.import_module("blocks")
        return list(_LIVE.contracts.values())
    return [Contract.from_json(c) for c in data["blocks"]]


def write_manifest() -> Path:
    """Import every shipped block and write ``blocks/manifest.json``."""
    importlib.import_module("blocks")
    root = blocks_dir()
    assert root is not None
    shipped = [c for c in _LIVE.contracts.values() if c.target.startswith("blocks.")]
    data = {
        "note": "generated by `python -m dagcv.registry`; do not edit",
        "sources": _source_hashes(root),
        "blocks": [c.to_json() for c in sorted(shipped, key=lambda c: c.name)],
    }
    path = root / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def iter_live() -> Iterator[tuple[Contract, Any]]:
    """Contracts and implementations of every block imported in this process (for registry-wide tests)."""
    for name, contract in sorted(_LIVE.contracts.items()):
        yield contract, _LIVE.objects[name]


if __name__ == "__main__":
    # Run as a script this file is `__main__`, a second copy of the module: the blocks register with the
    # importable `dagcv.registry`, so write through that one.
    from dagcv import registry as _registry

    print(f"wrote {_registry.write_manifest()}")
