"""Time of rendering a generated spec to SVG with the real ``dot``, split into building the graph and running dot.

    python tools/bench_render.py [--blocks 1000] [--repeat 3] [--format svg]

Target: a 1000-block spec in under 3 s in total (median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagcv.compiler import analyze  # noqa: E402
from dagcv.render import LARGE_GRAPH, render_spec  # noqa: E402
from dagcv.spec import parse_spec_text  # noqa: E402
from tools.gen_spec import generate_spec  # noqa: E402


def one_run(text: str, fmt: str) -> tuple[float, float, float, int]:
    """Seconds spent parsing + checking, building the Digraph, and in dot; and the output size in bytes."""
    t0 = time.perf_counter()
    sg = analyze(parse_spec_text(text, "generated.yaml"))
    t1 = time.perf_counter()
    dot = render_spec(sg)
    source = dot.source  # the DOT text is assembled lazily; count it as graph building
    t2 = time.perf_counter()
    out = dot.pipe(format=fmt)
    t3 = time.perf_counter()
    assert source and out
    return t1 - t0, t2 - t1, t3 - t2, len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", default="svg", choices=["svg", "png", "pdf"])
    args = parser.parse_args()
    text = generate_spec(args.blocks)
    runs = [one_run(text, args.format) for _ in range(args.repeat)]
    check, build, dot = (statistics.median(r[i] for r in runs) for i in range(3))
    totals = [sum(r[:3]) for r in runs]
    mode = "compact labels, cheap layout" if args.blocks + 1 > LARGE_GRAPH else "full labels"
    print(f"render {args.blocks} blocks to {args.format} ({mode}), median of {args.repeat}:")
    print(f"  parse + check  {check:7.3f} s")
    print(f"  build graph    {build:7.3f} s")
    print(f"  dot            {dot:7.3f} s   ({runs[0][3] / 1e6:.1f} MB of {args.format})")
    print(f"  total          {statistics.median(totals):7.3f} s   (runs: {', '.join(f'{t:.2f}' for t in totals)})")


if __name__ == "__main__":
    main()
