"""What `dagcv compile` writes besides the model: the resolved spec and the summary table."""

from __future__ import annotations

import json
from typing import Any

import yaml

from dagcv import __version__
from dagcv.build import BuiltGraph, parameter_count
from dagcv.graph import INPUT_PORT
from dagcv.types import format_shape


def _flow(value: Any) -> str:
    """One YAML scalar or flow collection, as it would be written by hand."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def resolved_spec(built: BuiltGraph) -> str:
    """The spec with every default, inferred value and connection spelled out; itself a valid spec."""
    sg = built.sg
    spec = sg.spec
    sizes = {"B": 2, **spec.sizes}
    lines = [
        f"# Resolved by dagcv {__version__} from {_one_line(spec.source.file)}: "
        "every default and inferred value filled in.",
        "dagcv: 1",
        f"name: {spec.name}",
    ]
    if spec.description:
        lines.append(f"description: {_flow(spec.description)}")
    lines.append("inputs:" if spec.inputs else "inputs: {}")
    lines += [f"  {name}: {_flow(text)}  # {_shape(built, name, INPUT_PORT)}" for name, text in spec.inputs.items()]
    lines.append(f"sizes: {_flow(sizes)}")
    lines.append("blocks:")
    for name in spec.blocks:
        data = sg.node(name)
        contract = data["contract"]
        inferred = data.get("inferred", {})
        lines.append(f"  {name}:")
        shares = data.get("shares")
        lines.append(f"    shares: {shares}  # {contract.name}" if shares else f"    type: {contract.name}")
        wires = {d["dst_port"]: (u if d["src_port"] == INPUT_PORT else f"{u}.{d['src_port']}")
                 for u, d in sg.in_edges(name)}  # fmt: skip
        if wires:
            ordered = {p.name: wires[p.name] for p in contract.inputs if p.name in wires}
            lines.append(f"    in: {_flow(ordered)}")
        lines.append(f"    mode: {data['mode']}")
        for p in contract.params if not shares else ():
            value = inferred.get(p.name, data["params"].get(p.name))
            note = f"  # inferred: {contract.infer[p.name]}" if p.name in inferred else ""
            lines.append(f"    {p.name}: {_flow(value)}{note}")
        single = len(contract.outputs) == 1
        outs = ", ".join(("" if single else f"{p.name}: ") + _shape(built, name, p.name) for p in contract.outputs)
        lines.append(f"    # output: {outs}")
    if spec.outputs:
        lines.append(f"outputs: {_flow(dict(spec.outputs))}")
    for section in ("data", "train"):
        value = getattr(spec, section)
        if value is not None:
            lines.append(yaml.safe_dump({section: value}, sort_keys=False, allow_unicode=True).rstrip())
    return "\n".join(lines) + "\n"


def _one_line(path: str) -> str:
    """A file name as it can stand in a comment: escaped like a JSON string if it holds a line break or a quote."""
    return path if path.isprintable() and '"' not in path and "`" not in path else json.dumps(path)


def _shape(built: BuiltGraph, node: str, port: str) -> str:
    data = built.sg.node(node)
    dims = data.get("shapes", {}).get(port)
    concrete = built.shapes.get((node, port))
    kind = built.sg.out_type(node, port).kind  # type: ignore[union-attr]
    if isinstance(concrete, tuple):
        return f"{kind} {format_shape(dims)} = {'×'.join(map(str, concrete)) or '[]'}"
    return f"{kind} {format_shape(dims)}" if dims is not None else kind


def summary_rows(built: BuiltGraph) -> list[dict[str, Any]]:
    """Per block: type, mode, output shapes, parameter count."""
    rows = []
    for name in built.sg.order():
        data = built.sg.node(name)
        if data["kind"] != "block":
            continue
        contract = data["contract"]
        shapes = "; ".join(
            (f"{p.name}: " if len(contract.outputs) > 1 else "") + _shape(built, name, p.name) for p in contract.outputs
        )
        shares = data.get("shares")
        rows.append({"node": name, "block": f"{contract.name} (shares {shares})" if shares else contract.name,
                     "family": contract.family, "mode": data["mode"], "output": shapes,
                     "params": 0 if shares else parameter_count(built.objects.get(name))})  # fmt: skip
    return rows


def summary_markdown(built: BuiltGraph) -> str:
    rows = summary_rows(built)
    total = sum(r["params"] for r in rows)
    out = [
        f"# {built.sg.spec.name}",
        "",
        f"Compiled by dagcv {__version__} from `{_one_line(built.sg.spec.source.file)}`.",
        "",
        "| node | block | mode | output | parameters |",
        "|---|---|---|---|---:|",
        *(f"| {r['node']} | {r['block']} | {r['mode']} | {r['output']} | {r['params']:,} |" for r in rows),
        f"| **total** | | | | **{total:,}** |",
    ]
    return "\n".join(out) + "\n"
