"""Build stage: instantiate blocks in topological order and propagate concrete shapes with meta tensors.

Constructor arguments are the validated parameters plus what the shape pass inferred (``in_channels``...).
Shapes are propagated on the ``meta`` device (no real compute, no memory): each real block is called through
:func:`torch.func.functional_call` with meta copies of its parameters and buffers. Small blocks, and blocks
whose forward cannot run on meta tensors (data-dependent control flow, say), run once on real example tensors
instead.
Each block's actual output shapes are checked against its declared contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dagcv.errors import SpecError
from dagcv.graph import INPUT_PORT, MODES, SpecGraph
from dagcv.limits import limits
from dagcv.types import KINDS, format_shape


class ContractError(RuntimeError):
    """A block's real outputs disagree with its declared contract: a bug in the block, not in the spec."""


@dataclass
class BuiltGraph:
    """The checked graph with its block instances and the concrete example value shapes of every output."""

    sg: SpecGraph
    objects: dict[str, Any] = field(default_factory=dict)  # node -> block instance (modules and others)
    shapes: dict[tuple[str, str], tuple[int, ...] | str] = field(default_factory=dict)  # (node, port) -> shape

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The modules of the model, each once: a node that shares another's module is not listed."""
        return {n: m for n, m in self.objects.items() if isinstance(m, nn.Module) and not self.sg.node(n).get("shares")}

    def kwargs(self, node: str) -> dict[str, Any]:
        """The constructor arguments a node was built with."""
        data = self.sg.node(node)
        return {**data["params"], **data.get("inferred", {})}


def build(sg: SpecGraph, *, propagate: bool = True) -> BuiltGraph:
    """Instantiate every block; with ``propagate``, run fake tensors through them and check the contracts."""
    built = BuiltGraph(sg)
    for name in sg.order():
        data = sg.node(name)
        if data["kind"] != "block":
            continue
        contract = data["contract"]
        if data.get("shares"):
            continue  # the owner's module, set below
        factory = sg.registry.implementation(contract.name)
        try:
            built.objects[name] = factory(**built.kwargs(name))
        except Exception as exc:  # the block refuses its arguments: the spec's mistake, at the block's line
            raise block_error(sg, name, "building", exc) from exc
    for name in sg.blocks():
        if sg.node(name).get("shares"):
            built.objects[name] = built.objects[sg.node(name)["shares"]]
    if propagate:
        propagate_shapes(built)
    return built


def block_error(sg: SpecGraph, node: str, doing: str, exc: BaseException, *, own: bool = True) -> SpecError:
    """A block's own exception as a diagnostic at its line, or at the parameter the message names (``own``:
    the message is the block's, not dagcv's)."""
    contract = sg.node(node)["contract"]
    message = " ".join(str(exc).split()) or type(exc).__name__
    if len(message) > 300:
        message = message[:300] + "..."
    smap = sg.spec.source
    named = [p.name for p in contract.params if own and re.search(rf"\b{re.escape(p.name)}\b", message)]
    given = [p for p in named if p in sg.spec.blocks[node].params] if node in sg.spec.blocks else []
    span = smap.value("blocks", node, given[0]) if given else smap.key("blocks", node)
    hint = f"check parameter '{(given or named)[0]}'" if named else "check the block's parameters"
    return SpecError.at(span, f"{doing} '{node}' ({contract.name}) failed: {message}", node=node,
                        hint=f"{hint} (`dagcv blocks {contract.name}`)")  # fmt: skip


def example_value(kind: str, shape: list[int], device: str = "cpu") -> Any:
    """An example value of a kind: zeros for index kinds (valid class ids), normal noise otherwise.

    ``Targets[B, H, W]`` gives ``B`` real (never meta) target dicts of two objects each, label 1, on an ``H×W``
    canvas, so losses and samplers can run on them while shapes propagate.
    """
    if kind == "Targets":
        return example_targets(*shape) if len(shape) == 3 else None
    if not KINDS[kind].tensor:
        return None
    dtype = getattr(torch, KINDS[kind].dtype)
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def example_targets(batch: int, height: int, width: int) -> list[dict[str, torch.Tensor]]:
    """Detection targets for shape propagation: two overlapping boxes per image, with their filled masks."""
    fractions = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.4, 0.3, 0.9, 0.8]])
    boxes = (fractions * torch.tensor([width, height, width, height])).floor()
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist(), strict=True):
        mask[y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)] = 1
    return [{"boxes": boxes.clone(), "labels": torch.ones(2, dtype=torch.int64), "masks": masks.clone()}
            for _ in range(batch)]  # fmt: skip


def call_args(sg: SpecGraph, node: str, values: dict[tuple[str, str], Any]) -> list[Any]:
    """Positional arguments of a block call: its run-time input ports in order (missing optional → None)."""
    contract = sg.node(node)["contract"]
    wired = {d["dst_port"]: (u, d["src_port"]) for u, d in sg.in_edges(node)}
    args = []
    for port in contract.inputs:
        if KINDS[port.parsed.kind].static:
            continue
        src = wired.get(port.name)
        args.append(values.get(src) if src else None)
    while args and args[-1] is None:
        args.pop()
    return args


def propagate_shapes(built: BuiltGraph) -> None:
    """Run every block once on example values, as each mode runs it.

    The eval pass runs the nodes of evaluation in eval mode. The train pass then reruns, in train mode, only what
    can differ: train-only nodes (losses), nodes that gave ``None`` in evaluation (a sampler's training targets)
    and everything downstream of a rerun node. Tensor shapes of the other nodes do not depend on the mode.
    """
    sg = built.sg
    values: dict[tuple[str, str], Any] = {}
    memo: dict = {}
    was_training = {n: m.training for n, m in built.modules.items()}
    # Running state (batch-norm statistics, an EMA codebook, a step counter) must not learn from example values.
    buffers = {(n, k): b.clone() for n, m in built.modules.items() for k, b in m.named_buffers() if not b.is_meta}
    for m in built.modules.values():
        m.eval()
    try:
        for name in sg.order():
            data = sg.node(name)
            if data["kind"] == "input":
                shape = data["shapes"][INPUT_PORT]
                kind = data["type"].kind if data.get("type") else "Tensor"
                if shape is not None:
                    values[(name, INPUT_PORT)] = example_value(kind, [d.value for d in shape], "meta")
            elif data["contract"].is_source:
                for port in data["contract"].outputs:
                    dims = data["shapes"].get(port.name)
                    if KINDS[port.parsed.kind].tensor and dims is not None:
                        values[(name, port.name)] = example_value(port.parsed.kind, [d.value for d in dims], "meta")
            elif MODES[data["mode"]] & {"eval", "sample"}:
                _run_block(built, name, values, memo, "eval")
            for port, value in _outputs_of(sg, name, values):
                built.shapes[(name, port)] = describe(value)
        _train_pass(built, values, memo)
    finally:
        for n, m in built.modules.items():
            m.train(was_training[n])
            with torch.no_grad():
                for k, b in m.named_buffers():
                    if (n, k) in buffers:
                        b.copy_(buffers[(n, k)])


def _train_pass(built: BuiltGraph, values: dict, memo: dict) -> None:
    sg = built.sg
    rerun: set[str] = set()
    for name in sg.order():
        data = sg.node(name)
        if data["kind"] != "block" or data["contract"].is_source or "train" not in MODES[data["mode"]]:
            continue
        outputs = _outputs_of(sg, name, values)
        if (
            data["mode"] == "train"
            or any(v is None for _, v in outputs)
            or any(u in rerun for u, _ in sg.in_edges(name))
        ):
            module = built.objects[name]
            if isinstance(module, nn.Module):
                module.train()
            try:
                _run_block(built, name, values, memo, "train")
            finally:
                if isinstance(module, nn.Module):
                    module.eval()
            rerun.add(name)
            for port, value in _outputs_of(sg, name, values):
                built.shapes[(name, port)] = describe(value)


def _run_block(built: BuiltGraph, name: str, values: dict, memo: dict, mode: str) -> None:
    sg = built.sg
    contract = sg.node(name)["contract"]
    args = call_args(sg, name, values)
    ports = [p.name for p in contract.outputs]
    # Output shapes are a function of the block type, its arguments, its input shapes and the mode: blocks
    # repeated with the same arguments on the same shapes (a stack of identical layers) run once.
    key = _memo_key(contract.name, built.kwargs(name), args, mode)
    if key is not None and key in memo:
        for port, (shape, dtype) in zip(ports, memo[key], strict=True):
            values[(name, port)] = torch.empty(shape, dtype=dtype, device="meta")
        return
    module = built.objects[name]
    # Boxes and detections come out of data-dependent steps (NMS, top-k) whose meta results would feed the next
    # block sizes it cannot use: such blocks run on real values.
    structured = any(p.parsed.kind in ("Boxes", "Detections") for p in contract.outputs)
    cap = limits().real_values
    if (structured or _is_small(module, args)) and _values(args) > cap:
        raise block_error(sg, name, "propagating shapes through", RuntimeError(
            f"it runs on real values, and its inputs hold {_values(args):,} at the example sizes (limit {cap:,}); "
            "give smaller example sizes (sizes:) or a lighter graph"
        ), own=False)  # fmt: skip
    with torch.no_grad():
        try:
            if (structured or _is_small(module, args)) and not _holds_meta_distribution(args):
                out = module(*[_realize(a) for a in args])
            else:
                try:
                    out = _meta_call(module, args)
                except Exception:
                    if _values(args) > cap:
                        raise RuntimeError(f"it cannot run on meta tensors, and its inputs hold {_values(args):,} "
                                           f"values at the example sizes (limit {cap:,})") from None  # fmt: skip
                    out = module(*[_realize(a) for a in args])
        except ContractError:
            raise
        except Exception as exc:  # the block fails on inputs of the checked shapes: its arguments do not fit them
            raise block_error(sg, name, f"running ({mode} mode)", exc) from exc
    if len(ports) == 1:
        out = {ports[0]: out}
    elif not isinstance(out, dict) or set(out) != set(ports):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ContractError(f"block '{contract.name}' ({contract.target}) must return a dict with keys {ports}, "
                            f"got {got}")  # fmt: skip
    for port in contract.outputs:
        value = out[port.name]
        values[(name, port.name)] = value
        dims = sg.node(name)["shapes"].get(port.name)
        if dims is not None and isinstance(value, torch.Tensor) and not _fits(value.shape, dims):
            raise ContractError(
                f"node '{name}': block '{contract.name}' ({contract.target}) returned {port.name} of shape "
                f"{tuple(value.shape)}, but its contract {port.type} says {format_shape(dims, concrete=True)} "
                f"({format_shape(dims)}); fix the block or its contract"
            )
    if key is not None and all(isinstance(out[p], torch.Tensor) for p in ports):
        memo[key] = [(tuple(out[p].shape), out[p].dtype) for p in ports]


def _fits(shape: torch.Size, dims: list) -> bool:
    """A real shape against contract dims; a run-time dim (the number of RoIs) fits any size."""
    return len(shape) == len(dims) and all(d.runtime or d.value == n for n, d in zip(shape, dims, strict=True))


def _memo_key(block: str, kwargs: dict, args: list[Any], mode: str) -> tuple | None:
    """A hashable key for (block, arguments, input shapes, mode), or None when an input is not a tensor."""
    if not all(a is None or isinstance(a, torch.Tensor) for a in args):
        return None
    try:
        shapes = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)
        return (block, _hashable(kwargs), shapes, mode)
    except TypeError:
        return None


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    hash(value)
    return value


# Below this many elements (parameters, and input values) a real forward costs microseconds, less than the meta
# kernels' Python decompositions (about 2 ms for a meta linear): small blocks run on real example tensors.
SMALL = 1 << 16


def _is_small(module: Any, args: list[Any]) -> bool:
    if not isinstance(module, nn.Module):
        return True
    n_params = sum(p.numel() for p in module.parameters())
    n_inputs = sum(a.numel() for a in args if isinstance(a, torch.Tensor))
    return n_params <= SMALL and n_inputs <= SMALL


def _meta_call(module: Any, args: list[Any]) -> Any:
    """Call ``module`` with its parameters and buffers swapped for meta copies (shapes only, no compute)."""
    args = [_map_tensors(a, lambda t: t.to("meta")) for a in args]
    if not isinstance(module, nn.Module):
        return module(*args)
    state = {k: v.to("meta") for k, v in [*module.named_parameters(), *module.named_buffers()]}
    return torch.func.functional_call(module, state, tuple(args))


def _holds_meta_distribution(args: list[Any]) -> bool:
    """A distribution made on meta tensors upstream (a large policy) cannot be realised: its consumer runs on meta."""

    def meta(value: Any) -> bool:
        if isinstance(value, torch.distributions.Distribution):
            return any(meta(v) for v in vars(value).values())
        return isinstance(value, torch.Tensor) and value.is_meta

    return any(isinstance(a, torch.distributions.Distribution) and meta(a) for a in args)


def _map_tensors(value: Any, fn: Any) -> Any:
    """``fn`` applied to every tensor inside lists, tuples and dicts (a feature pyramid, targets)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return type(value)((k, _map_tensors(v, fn)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _values(value: Any) -> int:
    """Elements of every tensor inside ``value`` (meta tensors count as what they stand for)."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(_values(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_values(v) for v in value)
    return 0


def _realize_tensor(value: torch.Tensor) -> torch.Tensor:
    if not value.is_meta:
        return value
    if value.dtype.is_floating_point:
        return torch.randn(value.shape, dtype=value.dtype)
    return torch.zeros(value.shape, dtype=value.dtype)


def _realize(value: Any) -> Any:
    """Real tensors standing in for meta ones (same shapes and dtypes), also inside containers."""
    return _map_tensors(value, _realize_tensor)


def _outputs_of(sg: SpecGraph, name: str, values: dict) -> list[tuple[str, Any]]:
    data = sg.node(name)
    ports = [INPUT_PORT] if data["kind"] == "input" else [p.name for p in data["contract"].outputs]
    return [(p, values.get((name, p))) for p in ports]


def describe(value: Any) -> tuple[int, ...] | str:
    """A concrete shape for tensors, a short description for anything else."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, torch.distributions.Distribution):
        return f"{type(value).__name__}{tuple(value.batch_shape)}"
    if value is None:
        return "static"
    return type(value).__name__


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
