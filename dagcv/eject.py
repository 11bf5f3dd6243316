"""Eject: write a lowered spec as a standalone PyTorch file that reads like hand-written code.

The file imports only torch and the block library; loaded with the dagcv model's ``state_dict`` it computes
the same outputs. It is emitted from the same per-mode :class:`~dagcv.lower.Program` as the fx graphs.
"""

from __future__ import annotations

import json
import math
from typing import Any

from dagcv import __version__
from dagcv.build import BuiltGraph
from dagcv.graph import SpecGraph
from dagcv.lower import Program, Value, class_name_for, make_program, output_ports

# The methods an ejected class may have: node names must not shadow them (dagcv.names derives its list from this).
METHODS = ("forward", "forward_train", "forward_eval")


def eject(built: BuiltGraph, source_name: str | None = None) -> str:
    """The Python source of a standalone ``nn.Module`` equivalent to the lowered spec."""
    sg = built.sg
    name = class_name_for(sg.spec.name)
    imports: dict[str, set[str]] = {}
    lines_init = []
    for node in built.modules:
        contract = sg.node(node)["contract"]
        mod, qualname = contract.target.split(":")
        imports.setdefault(mod, set()).add(qualname.split(".")[0])
        args = ", ".join(f"{k}={py_literal(v)}" for k, v in _explicit_kwargs(built, node).items())
        lines_init.append(f"        self.{node} = {qualname}({args})")
    programs = {mode: make_program(sg, mode) for mode in ("train", "eval")}
    ports = output_ports(sg)
    source = json.dumps(str(source_name or sg.spec.source.file))[1:-1]  # escaped: no quote can end the docstring
    out = [
        f'"""{sg.spec.name}: ejected by dagcv {__version__} from {source}.',
        "",
        "Plain PyTorch, free to edit. Weights of the dagcv model load as they are:",
        f"    model = {name}(); model.load_state_dict(torch.load(path, weights_only=True))",
        "(the block classes are plain nn.Modules from the `blocks` package, usable without dagcv).",
        '"""',
        "",
        "from torch import nn",
        "",
        *(f"from {mod} import {', '.join(sorted(names))}" for mod, names in sorted(imports.items())),
        "",
        "",
        f"class {name}(nn.Module):",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *lines_init,
        "",
    ]
    if programs["train"].signature() == programs["eval"].signature():
        out += _method("forward", programs["train"], ports)
    else:
        train, evaluate = programs["train"], programs["eval"]
        params = _params(train, evaluate)
        out += [
            f"    def forward(self, {params}):",
            "        if self.training:",
            f"            return self.forward_train({_call_args(train)})",
            f"        return self.forward_eval({_call_args(evaluate)})",
            "",
            *_method("forward_train", train, ports, only_used=True),
            "",
            *_method("forward_eval", evaluate, ports, only_used=True),
        ]
    for name, (outputs, mode, *given) in loop_programs(sg).items():
        out += ["", *_method(name, make_program(sg, mode, outputs, *given), ports)]
    return "\n".join(out).rstrip() + "\n"


def loop_programs(sg: SpecGraph) -> dict[str, tuple]:
    """The named programs of the spec's training loop (``act`` and ``update`` for PPO), if it has one: name →
    (outputs, mode) or (outputs, mode, given nodes)."""
    plan = getattr(sg, "training", None)
    cfg = plan.train if plan is not None else None
    if cfg is None:
        return {}
    kinds = {name: t.kind for name, (n, p) in sg.outputs.items() if (t := sg.out_type(n, p)) is not None}
    return cfg.programs(kinds)


def _explicit_kwargs(built: BuiltGraph, node: str) -> dict[str, Any]:
    """Arguments that differ from the constructor's defaults, and every inferred one."""
    data = built.sg.node(node)
    contract = data["contract"]
    inferred = data.get("inferred", {})
    out = {}
    for p in contract.params:
        value = inferred.get(p.name, data["params"].get(p.name))
        if p.name in inferred or p.required or _jsonable(value) != _jsonable(p.default):
            out[p.name] = value
    return out


def _jsonable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def py_literal(value: Any) -> str:
    """Python source that evaluates to ``value`` (plain data), ``float('nan')`` and ``float('inf')`` included.

    >>> py_literal({"a": [1.5, float("nan"), -float("inf")], "b": ("x", None)})
    "{'a': [1.5, float('nan'), -float('inf')], 'b': ['x', None]}"
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "float('nan')" if math.isnan(value) else ("-" if value < 0 else "") + "float('inf')"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise TypeError(f"not plain data: {type(value).__name__}")


def _key(name: str) -> str:
    """A dict key in double quotes, as hand-written code has it; anything but an identifier goes through repr."""
    return f'"{name}"' if name.isidentifier() else repr(name)


def _params(*programs: Program) -> str:
    """The ``forward`` signature: an argument is optional if any mode can do without it (and after that)."""
    out, optional = [], False
    for args in zip(*(p.inputs for p in programs), strict=True):
        optional = optional or any(a.optional for a in args)
        out.append(f"{args[0].name}=None" if optional else args[0].name)
    return ", ".join(out)


def _call_args(program: Program) -> str:
    return ", ".join(a.name for a in program.inputs if a.used)


def _method(name: str, program: Program, ports: dict[str, list[str]], only_used: bool = False) -> list[str]:
    names = {a.value: a.name for a in program.inputs}
    params = _call_args(program) if only_used else _params(program)

    def ref(v: Value | None) -> str:
        if v is None:
            return "None"
        if v in names:
            return names[v]
        return f"{v.node}[{_key(v.port)}]" if len(ports[v.node]) > 1 else v.node

    lines = [f"    def {name}(self, {params}):" if params else f"    def {name}(self):"]
    for step in program.steps:
        lines.append(f"        {step.node} = self.{step.target}({', '.join(ref(a) for a in step.args)})")
    items = [f"{_key(k)}: {ref(v)}" for k, v in program.outputs.items()]
    one_line = f"        return {{{', '.join(items)}}}"
    if len(one_line) <= 110:
        lines.append(one_line)
    else:
        lines += ["        return {", *(f"            {item}," for item in items), "        }"]
    return lines
