"""Mutate the shipped specs at random and run ``dagcv check``, ``compile`` and ``render`` on every mutant.

The contract under test (issue 11): whatever the file, dagcv answers with a positioned diagnostic (exit 2) or a
result (exit 0) -- never a traceback (exit 1), a hang or a memory blow-up -- leaves no files behind when it
fails, and writes a ``model.py`` that holds no executable text taken from the spec. A mutant that ``check``
accepts must also ``compile``.

    python tools/fuzz_specs.py --count 20000 --workers 2           # the large run
    python tools/fuzz_specs.py --count 300 --seed 7 --save /tmp/f  # keep the failing mutants
    python tools/fuzz_specs.py --show 1234                         # print mutant 1234 of seed 0

Mutants are a pure function of ``(seed, index)``: the parent hands each worker process indices, the worker
builds the mutant, runs both commands in-process (torch imported once) and reports one JSON line. The parent
kills a worker that takes longer than ``--timeout`` seconds on one mutant (a hang) or grows past ``--max-rss``
(a blow-up), records the case and starts another worker.

Mutations, one to three per mutant, stacked: text edits in either syntax (control characters, invalid UTF-8,
deleted or repeated lines, numbers and names swapped for troublesome ones, YAML tags and alias bombs, deep
nesting, huge strings, dim expressions nested or dividing by zero, names that try to inject code) and edits of
the parsed data (keys deleted or renamed, values of another type, block types swapped for other registered
blocks, parameters set to zero, negative, huge or mismatched values, ``weights:`` paths that are no
checkpoint), printed back as YAML or, where the IR allows, as DSL.
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import json
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------------------------------------------------------
# Troublesome values

NUMBERS = [
    "0", "-1", "-0", "1", "2", "3", "7", "255", "65536", "2147483647", "2147483648", "9223372036854775808",
    "100000000000000000000", "1" + "0" * 4400, "1e308", "1e400", "-1e400", ".nan", "nan", "inf", "-.inf", "0.0",
    "1.5", "-2.5", "1e-300", "0x10", "1_000", "0o17", "10000", "1000000", "2000000000",
]  # fmt: skip
NAMES = [
    "self", "output_ports", "forward", "forward_train", "training", "state_dict", "class", "None", "True", "_x",
    "__init__", "__import__", "eval", "code", "graph", "spec_name", "type", "in", "mode", "x", "caf\u00e9",
    "cafe\u0301", "\u00c5ngstr\u00f6m", "A\u030angstro\u0308m", "1abc", "a-b", "a.b", "a b", "\u4e2d\u6587",
    "n\u00e4me",
    "\U0001f600", "a" * 300, "torch", "nn", "print", "Model", "loss", "out", "data", "train", "inputs", "blocks",
]  # fmt: skip
INJECTIONS = [
    "a\": __import__('os').system('touch /tmp/dagcv_owned'), \"b",
    "a'] = __import__('os').system('touch /tmp/dagcv_owned') #",
    'x"""\nimport os; os.system("touch /tmp/dagcv_owned")\n"""',
    "x\nimport os\n",
    "__import__('os').system('touch /tmp/dagcv_owned')",
    "x}; __import__('os'); {",
]
CHARS = [
    "\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\t",
    "\r", "\n", ":", "#", "&", "*", "!", "%", "@", "`", "|", ">", "'", '"', "[", "]", "{", "}", "(", ")", ",",
    "-", "?", "=", "<", ".", "\\", "\u00e9", "\u0301", "\U0001f600", "\u4e2d", "\ud800",
]  # fmt: skip
TAGS = [
    "!!int abc", "!!float xyz", "!!bool maybe", "!!null x", "!!binary @@@", "!!timestamp 2001-13-45", "!!set",
    "!!omap", "!!str", "!custom", "!!python/object/apply:os.system ['touch /tmp/dagcv_owned']",
    "!!python/name:os.system", "!!int 0x", "!!float .", "!!int", "!!bool",
]  # fmt: skip
DIM_EXPRS = [
    "(" * 3000 + "H" + ")" * 3000, "H" + "+1" * 5000, "H**H", "H**99", "1/0", "H//0", "H%0", "cdiv(H, 0)",
    "rcnn_resize(H, H, W, 0, 0)", "rcnn_resize(H, 0, 0, 1, 1)", "rcnn_resize(H, H, W, 10**400, 1)", "prod()",
    "foo(H)", "lambda: 0", "__import__('os')", "H.real", "'H'", "H if H else W", "[H]", "-H", "0", "10**30",
    "2**63", "min()", "max(H)", "cdiv(H)", "prod(H, W, 99999999999)", "*H", "H, W", "-" * 2000 + "H",
]  # fmt: skip
WEIGHTS = ["/etc/passwd", "/dev/zero", "/dev/null", "/", "/proc/self/mem", "../../x.pt", "nonexistent.pt", ""]


# ---------------------------------------------------------------------------------------------------------------
# Mutants


@dataclass
class Mutant:
    index: int
    base: str  # the shipped spec it came from
    syntax: str  # "yaml" or "dsl"
    ops: list[str]
    data: bytes


def shipped_specs() -> list[Path]:
    """Every shipped spec, the variants that extend another (``specs/variants/``) included; with ``--only`` (the
    environment's ``DAGCV_FUZZ_ONLY``, which the workers inherit) the specs of those names."""
    specs = sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/*.dagcv"), *ROOT.glob("specs/variants/*")])
    only = os.environ.get("DAGCV_FUZZ_ONLY", "").split()
    return [p for p in specs if p.stem in only] if only else specs


_PARSED: dict[Path, Any] = {}


def _parsed(path: Path) -> Any:
    """The plain data of a shipped spec (cached)."""
    if path not in _PARSED:
        from dagcv.spec.dsl import load_dsl
        from dagcv.spec.yaml_loader import load_yaml

        text = path.read_text(encoding="utf-8")
        _PARSED[path] = (load_dsl if path.suffix == ".dagcv" else load_yaml)(text, path.name)[0]
    return _PARSED[path]


_BLOCK_TYPES: list[str] = []


def _block_types() -> list[str]:
    if not _BLOCK_TYPES:
        from dagcv.registry import registry

        _BLOCK_TYPES.extend(registry().contracts)
    return _BLOCK_TYPES


EXTENDS_TARGETS = [
    "mutant.yaml", "mutant.dagcv", "/etc/passwd", "/dev/zero", "/", "..", "../lenet_mnist.yaml",
    "../retinanet_r18_shapes.dagcv", "lenet_mnist.yaml", "", 3, ["a.yaml"], {"a": 1}, "\x00", "a" * 5000,
    "../mlp_digits.yaml",
]  # fmt: skip


def make_mutant(seed: int, index: int) -> Mutant:
    """Mutant ``index`` of ``seed``: a shipped spec with one to three mutations."""
    rng = random.Random(f"{seed}:{index}")
    specs = shipped_specs()
    path = specs[index % len(specs)]
    syntax = "dsl" if path.suffix == ".dagcv" else "yaml"
    ops: list[str] = []
    data: Any = None
    text = path.read_text(encoding="utf-8")
    roll = rng.random()
    if roll < 0.6:  # edits of the parsed data, printed back; often one gentle edit that check may accept
        data = json.loads(json.dumps(_parsed(path)))
        for _ in range(1 if roll < 0.35 else rng.choice((1, 2, 3))):
            ops.append(_mutate_data(rng, data, gentle=roll < 0.35))
        printed = _print(data, syntax, rng)
        if printed is None and syntax == "dsl":
            syntax, printed = "yaml", _print(data, "yaml", rng)
            ops.append("printed as yaml")
        if printed is None:
            ops.append("unprintable: original text")
        text = printed or text
    raw: bytes | None = None
    for _ in range((0 if roll < 0.35 else rng.choice((0, 1, 1, 2))) if ops else rng.choice((1, 1, 2, 3))):
        op, text, raw = _mutate_text(rng, text, syntax)
        ops.append(op)
    if raw is None:
        raw = text.encode("utf-8", "surrogatepass")
    return Mutant(index, str(path.relative_to(ROOT / "specs")), syntax, ops, raw)


def _print(data: Any, syntax: str, rng: random.Random) -> str | None:
    import yaml

    try:
        if syntax == "yaml":
            return yaml.safe_dump(
                data, sort_keys=False, allow_unicode=rng.random() < 0.5, width=rng.choice((80, 10**6))
            )
        from dagcv.spec.parse import spec_from_data
        from dagcv.spec.printer import to_dsl
        from dagcv.spec.source import SourceMap

        return to_dsl(spec_from_data(data, SourceMap("m.dagcv", "")))
    except Exception:
        return None


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts and lists."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _get(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


def _set(data: Any, path: tuple, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _interesting(rng: random.Random, like: Any = None) -> Any:
    pool: list[Any] = [
        0, -1, 1, 2, 10**6, 2**31, 2**63, -(2**63), 10**30, 0.0, -0.5, 1e308, float("inf"), float("-inf"),
        float("nan"), True, False, None, "", "x", "a" * 100_000 if rng.random() < 0.05 else "a" * 300, [], {},
        [0], [-1], [10**9], [1, 2, 3], [[1]], {"a": 1}, rng.choice(NAMES), rng.choice(INJECTIONS),
        rng.choice(DIM_EXPRS), rng.choice(WEIGHTS), "Image[B, 3, H, W]", "Labels[B]", [2000000000], [0.5] * 7,
    ]  # fmt: skip
    if isinstance(like, int) and not isinstance(like, bool):
        pool += [like + 1, like - 1, like * 1000, -like, like * 10**9]
    if isinstance(like, list) and like:
        pool += [like[:-1], like * 2, [like[0]] * 50, list(reversed(like))]
    return rng.choice(pool)


def _mutate_data(rng: random.Random, data: Any, gentle: bool = False) -> str:
    paths = [p for p in _paths(data) if p]
    if not paths:
        return "nothing"
    blocks = data.get("blocks") if isinstance(data, dict) else None
    ops = ["delete", "value", "value", "retype", "rename", "block_type", "block_type", "param", "param", "param",
           "new_param", "copy_block", "names", "nest", "wiring", "weights", "sizes", "extends"]  # fmt: skip
    if gentle:
        ops = ["param", "param", "param", "param", "block_type", "names", "sizes", "weights", "value"]
    op = rng.choice(ops)
    if op in ("block_type", "param", "new_param", "copy_block", "wiring", "weights") and not (
        isinstance(blocks, dict) and blocks and all(isinstance(b, dict) for b in blocks.values())
    ):
        op = "value"
    if op == "extends" and isinstance(data, dict):  # a base that is itself, missing, not a spec, not a file
        data["extends"] = rng.choice(EXTENDS_TARGETS)
        if rng.random() < 0.2 and isinstance(data.get("blocks"), dict):
            data["blocks"][rng.choice(["x", *data["blocks"]])] = {"remove": True}
        return f"extends {data['extends']!r:.40}"
    if op == "delete":
        path = rng.choice(paths)
        parent = _get(data, path[:-1])
        del parent[path[-1]]
        return f"delete {path}"
    if op == "value":
        path = rng.choice(paths)
        value = _interesting(rng, _get(data, path))
        _set(data, path, value)
        return f"set {path} = {value!r:.60}"
    if op == "retype":
        path = rng.choice(paths)
        old = _get(data, path)
        new = rng.choice([str(old), [old], {"x": old}, None, 1, 1.5, True])
        _set(data, path, new)
        return f"retype {path}"
    if op == "rename":
        path = rng.choice([p for p in paths if isinstance(p[-1], str)] or paths)
        parent = _get(data, path[:-1])
        if not isinstance(parent, dict):
            return "rename skipped"
        new = rng.choice([*NAMES, *INJECTIONS, path[-1] + "x", path[-1][:-1] or "k"])
        items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
        return f"rename {path} -> {new!r:.40}"
    needs_block = ("block_type", "param", "new_param", "copy_block", "wiring", "weights")
    name = rng.choice(list(blocks)) if op in needs_block else ""
    block = blocks[name] if op in needs_block else {}
    if op == "block_type":
        block["type"] = rng.choice(_block_types())
        return f"type of {name} = {block['type']}"
    if op in ("param", "new_param"):
        params = [k for k in block if k not in ("type", "in", "mode")]
        if op == "new_param" or not params:
            key = rng.choice(["hidden", "num_classes", "in_channels", "out_channels", "kernel_size", "dropout",
                              "weights", "num_codes", "latent_dim", "channels", "sizes", "aspect_ratios"])  # fmt: skip
        else:
            key = rng.choice(params)
        block[key] = _interesting(rng, block.get(key))
        return f"param {name}.{key} = {block[key]!r:.60}"
    if op == "copy_block":
        new = rng.choice([*NAMES, name + "2"])
        blocks[new] = json.loads(json.dumps(block))
        return f"copy {name} -> {new!r:.40}"
    if op == "wiring":
        inputs = data.get("inputs")
        sources = [*blocks, *(inputs if isinstance(inputs, dict) else {})]
        block["in"] = rng.choice([rng.choice(sources), f"{rng.choice(sources)}.{rng.choice(NAMES)}", [name], name,
                                  {"x": rng.choice(sources)}, rng.choice(INJECTIONS)])  # fmt: skip
        return f"wire {name} <- {block['in']!r:.40}"
    if op == "weights":
        block["weights"] = rng.choice(WEIGHTS)
        return f"weights {name} = {block['weights']}"
    if op == "names":
        section = rng.choice(["outputs", "inputs", "blocks"])
        target = data.get(section)
        if isinstance(target, dict) and target:
            key = rng.choice(list(target))
            new = rng.choice([*INJECTIONS, *NAMES])
            target[new] = target.pop(key)
            return f"name {section}.{key} -> {new!r:.40}"
        return "names skipped"
    if op == "sizes":
        sizes = data.setdefault("sizes", {}) if isinstance(data, dict) else {}
        if isinstance(sizes, dict):
            sizes[rng.choice(["B", "H", "W", "Z", "C"])] = rng.choice([0, -1, 1, 3, 10**6, 10**9, 2**62, 10**30])
        return "sizes"
    # nest
    path = rng.choice(paths)
    depth = rng.choice((20, 99, 150, 300))  # deeper nests come from text edits (printing recurses)
    value: Any = 1
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    _set(data, path, value)
    return f"nest {path} depth {depth}"


def _mutate_text(rng: random.Random, text: str, syntax: str) -> tuple[str, str, bytes | None]:
    import re

    lines = text.split("\n")
    op = rng.choice(
        ["char", "char", "delete", "line", "number", "number", "name", "name", "tag", "alias", "nest", "dim",
         "utf8", "big", "inject", "indent", "dup_key"]
    )  # fmt: skip
    pos = rng.randrange(len(text) + 1)
    if op == "char":
        c = rng.choice(CHARS)
        return f"insert {c!r}", text[:pos] + c * rng.choice((1, 1, 3)) + text[pos:], None
    if op == "delete":
        n = rng.randint(1, 20)
        return f"delete {n} chars at {pos}", text[:pos] + text[pos + n :], None
    if op == "line" and len(lines) > 1:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        how = rng.choice(["drop", "dup", "swap"])
        if how == "drop":
            del lines[i]
        elif how == "dup":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return f"line {how} {i},{j}", "\n".join(lines), None
    if op == "number":
        found = list(re.finditer(r"(?<![\w.])-?\d+(\.\d+)?(e-?\d+)?(?![\w.])", text))
        if found:
            m = rng.choice(found)
            new = rng.choice(NUMBERS)
            return f"number {m.group()} -> {new:.20}", text[: m.start()] + new + text[m.end() :], None
    if op == "name":
        found = list(re.finditer(r"\b[A-Za-z_][A-Za-z0-9_]*\b", text))
        if found:
            m = rng.choice(found)
            new = rng.choice([rng.choice(found).group(), *NAMES])
            if rng.random() < 0.5:  # every occurrence, so references stay consistent
                return f"rename all {m.group()} -> {new!r:.30}", re.sub(rf"\b{m.group()}\b", new, text), None
            return f"name {m.group()} -> {new!r:.30}", text[: m.start()] + new + text[m.end() :], None
    if op == "tag" and syntax == "yaml":
        found = list(re.finditer(r"(?<=: )[^\s{}\[\],#]+", text))
        if found:
            m = rng.choice(found)
            tag = rng.choice(TAGS)
            keep = rng.random() < 0.5
            return f"tag {tag:.30}", text[: m.start()] + tag + (" " + m.group() if keep else "") + text[m.end() :], None
    if op == "alias" and syntax == "yaml":
        levels = rng.choice((3, 6, 9))
        bomb = ["x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        bomb += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
        where = rng.choice(["top", "param"])
        if where == "top":
            return f"alias bomb {levels}", text + "\n" + "\n".join(bomb) + f"\nzz: *a{levels - 1}\n", None
        return f"alias bomb {levels} in description", "\n".join(bomb) + f"\ndescription: *a{levels - 1}\n" + text, None
    if op == "nest":
        depth = rng.choice((50, 101, 1000, 100_000))
        opener, closer = rng.choice([("[", "]"), ("{a: ", "}"), ("(", ")")])
        return f"nest {opener}x{depth}", text[:pos] + opener * depth + "1" + closer * depth + text[pos:], None
    if op == "dim":
        found = list(re.finditer(r"(?<=\[)[^\[\]\n]*(?=\])", text))
        if found:
            m = rng.choice(found)
            parts = m.group().split(",")
            parts[rng.randrange(len(parts))] = " " + rng.choice(DIM_EXPRS)
            return "dim expression", text[: m.start()] + ",".join(parts) + text[m.end() :], None
    if op == "utf8":
        raw = text.encode("utf-8", "surrogatepass")
        p = rng.randrange(len(raw) + 1)
        junk = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xff", b"\xef\xbb\xbf"])
        return f"bytes {junk!r}", text, raw[:p] + junk + raw[p:]
    if op == "big":
        size = rng.choice((10_000, 1_000_000, 6_000_000 if rng.random() < 0.1 else 100_000))
        filler = rng.choice(["a", "x ", "[", "1", "é", "\n"]) * (size // 2)
        if syntax == "dsl":
            filler = '"' + filler.replace("\n", " ").replace('"', "") + '"' if rng.random() < 0.5 else filler
        return f"big {size}", text[:pos] + filler + text[pos:], None
    if op == "inject":
        found = list(re.finditer(r"\b[A-Za-z_][A-Za-z0-9_]*\b", text))
        if found:
            m = rng.choice(found)
            new = rng.choice(INJECTIONS)
            quoted = json.dumps(new) if rng.random() < 0.7 else new
            return f"inject at {m.group()}", text[: m.start()] + quoted + text[m.end() :], None
    if op == "indent" and len(lines) > 1:
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(["", " ", "\t", "    "]) + lines[i] if rng.random() < 0.5 else lines[i].lstrip()
        return f"indent line {i}", "\n".join(lines), None
    if op == "dup_key" and len(lines) > 1:
        i = rng.randrange(len(lines))
        return f"dup line {i}", "\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]), None
    c = rng.choice(CHARS)
    return f"insert {c!r}", text[:pos] + c + text[pos:], None


# ---------------------------------------------------------------------------------------------------------------
# Running one mutant


@dataclass
class Result:
    index: int
    base: str
    syntax: str
    ops: list[str]
    check: int | None = None  # exit codes
    compile: int | None = None
    render: int | None = None
    problems: list[str] = field(default_factory=list)  # crash signatures, leftovers, unsafe model.py...
    seconds: float = 0.0


def _invoke(args: list[str]) -> tuple[int, str]:
    """Run the dagcv CLI in this process; returns (exit code, a traceback signature or '')."""
    from click.testing import CliRunner

    from dagcv.cli import main

    result = CliRunner().invoke(main, args, catch_exceptions=True)
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        etype, exc, tb = result.exc_info
        frames = traceback.extract_tb(tb)
        where = next((f for f in reversed(frames) if "/dagcv/" in f.filename or "/blocks/" in f.filename), frames[-1])
        short = where.filename.split("/main/")[-1]
        return 1, f"{etype.__name__} at {short}:{where.lineno} ({where.name}): {str(exc)[:120]}"
    return code, ""


def run_mutant(mutant: Mutant, workdir: Path) -> Result:
    """``check`` then ``compile`` one mutant in a fresh folder; every contract violation lands in ``problems``."""
    res = Result(mutant.index, mutant.base, mutant.syntax, mutant.ops)
    start = time.perf_counter()
    case = workdir / f"case{mutant.index}"
    case.mkdir()
    try:
        # Beside copies of the shipped specs, in a folder like theirs, so that `extends: ../base.yaml` resolves.
        for shipped in [*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/*.dagcv")]:
            shutil.copy(shipped, case / shipped.name)
        (case / "variants").mkdir()
        spec = case / "variants" / f"mutant.{'dagcv' if mutant.syntax == 'dsl' else 'yaml'}"
        spec.write_bytes(mutant.data)
        res.check, crash = _invoke(["check", str(spec)])
        if crash:
            res.problems.append(f"check traceback: {crash}")
        out = case / "out"
        res.compile, crash = _invoke(["compile", str(spec), "-o", str(out), "-q"])
        if crash:
            res.problems.append(f"compile traceback: {crash}")
        if res.compile == 0:
            res.problems += _audit_output(out)
            if res.check != 0:
                res.problems.append("compile accepted what check rejected")
        else:
            left = sorted(p.name for p in (case / "variants").iterdir() if p != spec)
            left += sorted(
                p.name for p in case.iterdir() if p.suffix not in (".yaml", ".dagcv") and p.name != "variants"
            )
            if left:
                res.problems.append(f"files left after a failed compile: {left}")
            if res.check == 0 and not crash:
                res.problems.append("check accepted, compile rejected")
        # render draws invalid specs too (with their errors): the DOT text only, without running dot
        res.render, crash = _invoke(["render", str(spec), "-o", str(case / "graph.dot")])
        if crash:
            res.problems.append(f"render traceback: {crash}")
    finally:
        shutil.rmtree(case, ignore_errors=True)
        res.seconds = time.perf_counter() - start
    if Path("/tmp/dagcv_owned").exists():
        res.problems.append("injected code ran (/tmp/dagcv_owned exists)")
    return res


def _audit_output(out: Path) -> list[str]:
    """What compile wrote: normal permissions, and a model.py whose code comes from dagcv alone."""
    problems = []
    for p in out.iterdir():
        mode = stat.S_IMODE(p.stat().st_mode)
        if not mode & stat.S_IRGRP:
            problems.append(f"{p.name} has mode {oct(mode)}")
    mode = stat.S_IMODE(out.stat().st_mode)
    if not mode & stat.S_IXGRP:
        problems.append(f"output folder has mode {oct(mode)}")
    model = out / "model.py"
    problems += [f"model.py: {p}" for p in audit_model_py(model.read_text(encoding="utf-8"))]
    return problems


def audit_model_py(text: str) -> list[str]:
    """Code in an ejected model that dagcv does not write: calls other than block constructors in ``__init__``
    and ``self.<node>(...)`` in the forward methods, statements other than assignments and returns, names that
    are neither arguments nor earlier results."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return [f"not valid Python: {exc}"]
    problems = []
    imported = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom):
            imported.update(a.asname or a.name for a in stmt.names)
        elif isinstance(stmt, ast.ClassDef):
            problems += _audit_class(stmt, imported)
        elif not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            problems.append(f"unexpected top-level statement at line {stmt.lineno}")
    return problems


def _audit_class(cls: ast.ClassDef, imported: set[str]) -> list[str]:
    problems = []
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef):
            problems.append(f"class body holds {type(fn).__name__} at line {fn.lineno}")
            continue
        known = {a.arg for a in fn.args.args} | imported | {"super", "None"}
        for stmt in fn.body:
            if isinstance(stmt, ast.If):
                stmts = [*stmt.body]
                tests = [stmt.test]
            else:
                stmts, tests = [stmt], []
            for test in tests:
                if ast.unparse(test) != "self.training":
                    problems.append(f"{fn.name}: unexpected condition {ast.unparse(test)}")
            for s in stmts:
                if not isinstance(s, ast.Assign | ast.Return | ast.Expr):
                    problems.append(f"{fn.name}: unexpected {type(s).__name__} at line {s.lineno}")
                    continue
                for node in ast.walk(s):
                    if isinstance(node, ast.Call):
                        f = node.func
                        ok = (isinstance(f, ast.Name) and f.id in imported | {"super", "float"}) or (
                            isinstance(f, ast.Attribute) and ast.unparse(f.value) in ("self", "super()")
                        )
                        if not ok:
                            problems.append(f"{fn.name}: unexpected call {ast.unparse(f)!r:.60}")
                    elif (
                        isinstance(node, ast.Name)
                        and isinstance(node.ctx, ast.Load)
                        and node.id not in known | {"float"}
                    ):
                        problems.append(f"{fn.name}: unknown name {node.id!r:.40}")
                for target in getattr(s, "targets", []):
                    for node in ast.walk(target):
                        if isinstance(node, ast.Name):
                            known.add(node.id)
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Workers and the driver


def worker(seed: int) -> None:
    """Read indices on stdin, write one JSON result per line on stdout."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: F401  (once, before the first case)

    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # blocks that print must not break the protocol
    os.dup2(devnull, 2)
    with tempfile.TemporaryDirectory(prefix="dagcv-fuzz-") as tmp:
        os.chdir(tmp)
        for line in sys.stdin:
            index = int(line)
            try:
                mutant = make_mutant(seed, index)
            except Exception as exc:  # a bug in the mutator, not in dagcv: report it and go on
                res = Result(index, "?", "?", [], problems=[f"fuzzer error: {type(exc).__name__}: {exc}"])
            else:
                res = run_mutant(mutant, Path(tmp))
            out.write(json.dumps(asdict(res)) + "\n")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Worker:
    def __init__(self, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--seed", str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.index: int | None = None
        self.since = 0.0

    def send(self, index: int) -> None:
        self.index, self.since = index, time.monotonic()
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def fuzz(seed: int, indices: list[int], workers: int, timeout: float, max_rss: int, progress: bool) -> list[Result]:
    todo = collections.deque(indices)
    pool = [_Worker(seed) for _ in range(min(workers, len(indices)))]
    results: list[Result] = []
    start = time.monotonic()
    for w in pool:
        if todo:
            w.send(todo.popleft())
    while any(w.index is not None for w in pool):
        busy = {w.proc.stdout: w for w in pool if w.index is not None}
        ready, _, _ = select.select(list(busy), [], [], 0.2)
        for stream in ready:
            w = busy[stream]
            line = stream.readline()
            if line:
                results.append(Result(**json.loads(line)))
            else:  # the worker died (killed by the kernel, say)
                results.append(_lost(seed, w.index, f"worker died (exit {w.proc.wait()})"))
                pool[pool.index(w)] = w = _Worker(seed)
            w.index = None
            if todo:
                w.send(todo.popleft())
        now = time.monotonic()
        for i, w in enumerate(pool):
            if w.index is None:
                continue
            why = None
            if now - w.since > timeout:
                why = f"hang: no answer within {timeout:.0f} s"
            elif _rss(w.proc.pid) > max_rss:
                why = f"blow-up: memory above {max_rss / 2**30:.1f} GiB"
            if why:
                w.kill()
                results.append(_lost(seed, w.index, why))
                pool[i] = _Worker(seed)
                if todo:
                    pool[i].send(todo.popleft())
        if progress and results and len(results) % 100 == 0:
            bad = sum(bool(r.problems) for r in results)
            print(f"\r{len(results)}/{len(indices)} mutants, {bad} with problems, {now - start:.0f} s", end="",
                  file=sys.stderr, flush=True)  # fmt: skip
    for w in pool:
        if w.proc.stdin:
            w.proc.stdin.close()
        w.proc.wait(timeout=30)
    if progress:
        print(file=sys.stderr)
    return sorted(results, key=lambda r: r.index)


def _lost(seed: int, index: int | None, why: str) -> Result:
    try:
        m = make_mutant(seed, index or 0)
    except Exception:
        return Result(index or 0, "?", "?", [], problems=[why])
    return Result(m.index, m.base, m.syntax, m.ops, problems=[why])


def summarize(results: list[Result], seconds: float) -> str:
    n = len(results)
    checked = collections.Counter(r.check for r in results)
    compiled = collections.Counter(r.compile for r in results)
    rendered = collections.Counter(r.render for r in results)
    lines = [
        f"{n} mutants in {seconds:.0f} s ({n / max(seconds, 1e-9):.1f}/s)",
        f"check:   {checked.get(0, 0)} accepted, {checked.get(2, 0)} rejected (exit 2), {checked.get(1, 0)} exit 1",
        f"compile: {compiled.get(0, 0)} compiled, {compiled.get(2, 0)} rejected (exit 2), {compiled.get(1, 0)} exit 1",
        f"render:  {rendered.get(0, 0)} drawn, {rendered.get(2, 0)} drawn with errors or refused (exit 2), "
        f"{rendered.get(1, 0)} exit 1",
    ]
    kinds = collections.Counter()
    examples: dict[str, int] = {}
    for r in results:
        for p in r.problems:
            key = p.split(":")[0] if p.startswith(("hang", "blow-up", "worker died")) else p
            if "traceback" in p:  # one row per exception type and place, the message of the first example
                key = p.split("): ", 1)[0] + ")"
            kinds[key] += 1
            examples.setdefault(key, r.index)
    tracebacks = sum(1 for r in results if any("traceback" in p for p in r.problems))
    hangs = sum(1 for r in results if any(p.startswith("hang") for p in r.problems))
    blowups = sum(1 for r in results if any(p.startswith(("blow-up", "worker died")) for p in r.problems))
    leftovers = sum(1 for r in results if any(p.startswith("files left") for p in r.problems))
    promise = sum(1 for r in results if "check accepted, compile rejected" in r.problems)
    unsafe = sum(1 for r in results if any(p.startswith(("model.py", "injected")) for p in r.problems))
    lines.append(
        f"tracebacks: {tracebacks}  hangs: {hangs}  blow-ups: {blowups}  leftover files: {leftovers}  "
        f"check-ok-but-compile-error: {promise}  unsafe model.py: {unsafe}"
    )
    for key, count in kinds.most_common():
        lines.append(f"  {count:6d}  {key[:200]}  (e.g. mutant {examples[key]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--start", type=int, default=0, help="first mutant index")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant (check + compile)")
    parser.add_argument("--max-rss", type=float, default=6.0, help="GiB a worker may use")
    parser.add_argument("--save", type=Path, help="write every mutant with a problem here, with its report")
    parser.add_argument("--json", type=Path, help="write every result as JSON lines")
    parser.add_argument("--show", type=int, help="print mutant SHOW and its mutations, run nothing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="mutate only these specs (file stems)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        os.environ["DAGCV_FUZZ_ONLY"] = " ".join(args.only)
    if args.worker:
        worker(args.seed)
        return 0
    if args.show is not None:
        m = make_mutant(args.seed, args.show)
        print(f"# mutant {m.index} of {m.base} ({m.syntax}): {'; '.join(m.ops)}", file=sys.stderr)
        sys.stdout.buffer.write(m.data)
        return 0
    Path("/tmp/dagcv_owned").unlink(missing_ok=True)
    start = time.monotonic()
    indices = list(range(args.start, args.start + args.count))
    results = fuzz(args.seed, indices, args.workers, args.timeout, int(args.max_rss * 2**30), sys.stderr.isatty())
    print(summarize(results, time.monotonic() - start))
    if args.json:
        args.json.write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.problems:
                m = make_mutant(args.seed, r.index)
                ext = "dagcv" if m.syntax == "dsl" else "yaml"
                (args.save / f"{r.index}.{ext}").write_bytes(m.data)
                (args.save / f"{r.index}.txt").write_text("\n".join([*r.ops, "", *r.problems]) + "\n")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
