"""Resource limits: what dagcv refuses to read, build or run, however valid the spec looks.

A spec is untrusted input (a file from a paper's repository, a pull request), so every size it can ask for has
a cap, checked before anything is allocated: the file itself, how deeply its values nest, how long its dim
expressions are, how large its integers are, and the estimated parameters and activation memory of the model
it describes. Every shipped spec passes the defaults with room; a user who means to go beyond them says so::

    DAGCV_LIMITS="params=5e9,activation_gib=64" dagcv compile big.yaml
    dagcv --limit params=5e9 --limit activation_gib=64 compile big.yaml

The limits come from the user (the environment or the command line), never from the spec: a spec cannot
raise its own caps.

>>> Limits.parse("params=1e6,file_mib=2").params
1000000
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

ENV_VAR = "DAGCV_LIMITS"


@dataclass(frozen=True)
class Limits:
    """Caps on what a spec may ask for; see the module docstring for how to change them."""

    file_mib: float = 1.0  # size of a spec file
    depth: int = 100  # nesting of mappings and lists
    nodes: int = 200_000  # values in the file once aliases are expanded (alias bombs)
    string_chars: int = 100_000  # one string value
    int_bits: int = 63  # integers in the spec must fit in a signed 64-bit integer
    dim_chars: int = 256  # one dim expression (`(H-4)//2`)
    dim_depth: int = 32  # nesting of one dim expression
    dim_value: int = 2**40  # any dim at the example sizes
    params: int = 1_000_000_000  # estimated parameters of the whole model (4 GiB of float32 weights)
    activation_gib: float = 8.0  # estimated activations at the example sizes, every block output summed
    real_values: int = 2**28  # values a block may be run on for real while compile propagates shapes

    @classmethod
    def parse(cls, text: str, base: Limits | None = None) -> Limits:
        """``name=value,name=value`` over ``base`` (default: the defaults); raises ValueError naming the problem."""
        known = {f.name: f.type for f in fields(cls)}
        changes: dict[str, float | int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, eq, value = item.partition("=")
            name = name.strip()
            if not eq or name not in known:
                raise ValueError(f"unknown limit '{item}': limits are {', '.join(known)}")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"limit {name}: '{value}' is not a number") from None
            if not number > 0:
                raise ValueError(f"limit {name} must be positive, found {value}")
            changes[name] = number if known[name] == "float" else int(number)
        return replace(base or cls(), **changes)


_CURRENT: Limits | None = None


def limits() -> Limits:
    """The limits of this process: the defaults, then ``$DAGCV_LIMITS``, then ``dagcv --limit``."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Limits.parse(os.environ.get(ENV_VAR, ""))
    return _CURRENT


def set_limits(new: Limits | None) -> None:
    """Replace the process's limits (``None``: back to the defaults and the environment)."""
    global _CURRENT
    _CURRENT = new
