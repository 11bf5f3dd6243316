"""Generate large valid specs for benchmarks: a layered DAG of small MLP blocks with skip branches.

python tools/gen_spec.py 1000 > /tmp/big.yaml
"""

from __future__ import annotations

import random
import sys


def generate_spec(n_blocks: int, *, width: int = 8, seed: int = 0, distinct: bool = False) -> str:
    """YAML text of a spec with ``n_blocks`` mlp blocks; each reads one of the last few nodes.

    With ``distinct`` every block gets its own hidden width, so no two blocks share a configuration.
    """
    rng = random.Random(seed)
    lines = ["dagcv: 1", f"name: generated_{n_blocks}", "inputs:", f"  x: Embedding[B, {width}]", "blocks:"]
    names = ["x"]
    for i in range(n_blocks):
        name = f"b{i}"
        src = names[-1] if rng.random() < 0.7 else rng.choice(names[-8:])
        hidden = width + i if distinct else width
        lines.append(f"  {name}: {{type: mlp, in: {src}, hidden: [{hidden}], out_features: {width}}}")
        names.append(name)
    lines += ["outputs:", f"  y: {names[-1]}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(generate_spec(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
