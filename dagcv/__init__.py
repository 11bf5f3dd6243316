"""dagcv: declarative, typed block graphs for deep learning.

The compiler stages live in one module each (``spec`` → ``registry`` → ``graph`` → ``types`` → ``build`` →
``lower``); importing :mod:`dagcv` itself imports none of them, so the CLI starts fast.
"""

__version__ = "0.1.0"
