"""Wall time of ``dagcv check SPEC`` in a fresh process, for every shipped spec in both syntaxes, and proof that
it never imports torch (nor the block implementations).

    python tools/bench_check.py [--repeat 5] [SPEC ...]

Target: under 0.5 s for every shipped spec (the median of the repeats, interpreter start-up included), so
that check runs in editors and pre-commit hooks. Each run is a new interpreter, as a user's command is.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.5
PROBE = (  # the same probe as tests/test_cli.py's
    "import sys\nfrom dagcv.cli import main\n"
    "try:\n    main(['check', sys.argv[1]])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'torchmetrics', 'blocks')]\n"
    "assert not bad, f'dagcv check imported {bad[:3]}'\n"
)


def time_check(spec: Path, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "dagcv.cli", "check", str(spec)], capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
        if run.returncode != 0:
            raise SystemExit(f"{spec}: dagcv check failed:\n{run.stderr.decode()}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    specs = args.specs or sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/*.dagcv")])
    worst = 0.0
    print(f"{'spec':48} {'median':>8} {'min':>7} {'max':>7}  torch")
    for spec in specs:
        probe = subprocess.run([sys.executable, "-c", PROBE, str(spec)], capture_output=True, text=True, cwd=ROOT)
        imports = "no" if probe.returncode == 0 else "IMPORTED"
        times = time_check(spec, args.repeat)
        median = statistics.median(times)
        worst = max(worst, median)
        name = spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec
        print(f"{name!s:48} {median:8.3f} {min(times):7.3f} {max(times):7.3f}  {imports}")
    print(f"slowest median {worst:.3f} s (target < {TARGET} s): {'met' if worst < TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
