"""The dagcv block library: one module per family, every block registered with ``@register_block``.

Each family module is imported here by name, so every shipped block is registered as soon as ``blocks`` is
imported, whatever the import order elsewhere. ``python -m dagcv.registry`` writes their contracts to
``blocks/manifest.json``, which the compiler reads without importing torch.
"""

from blocks import (  # noqa: F401
    adversarial,
    backbones,
    data,
    denoisers,
    detection,
    diffusion,
    gan,
    generative,
    heads,
    image_pairs,
    layers,
    losses,
    necks,
    priors,
    quantizers,
    rl,
    segmentation,
    shapes,
    vae,
)
