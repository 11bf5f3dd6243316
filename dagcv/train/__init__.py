"""Training runtime: the spec's ``data:`` and ``train:`` sections lowered to loops over the compiled graph.

``config`` validates the sections, ``data`` builds loaders, ``loops`` holds the step strategies, ``runner``
drives epochs, evaluation, checkpoints and logging, ``checkpoint`` writes and reads them atomically.
"""
