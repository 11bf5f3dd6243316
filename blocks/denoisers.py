"""Denoisers for diffusion: networks that read a noisy sample ``x`` at timestep ``t`` (and optionally a class
label ``y``) and predict what the schedule's ``prediction`` names (ε, x_0 or v), in the shape of ``x``.

- ``unet_denoiser``: a small DDPM-style U-Net for images (Ho et al., 2020);
- ``dit_denoiser``: a diffusion transformer with adaLN-Zero conditioning (Peebles & Xie, 2023);
- ``mlp_denoiser``: an MLP for vectors (2-D toy data, VAE latents).

All three are conditioned the same way (:class:`Conditioning`): a sinusoidal embedding of ``t``
(:func:`timestep_embedding`) through an MLP, plus, for a class-conditional model (``num_classes`` set), a learned
embedding of ``y``. That embedding has one row more than there are classes: the learned *null condition*, which
label ``-1`` selects. ``condition_dropout`` writes ``-1`` for a dropped label in training, and a guided sampler
passes ``-1`` for the unconditional half of classifier-free guidance; leaving ``y`` out of a conditional model
means the same.

Each model starts from an output of exactly zero (its last layer is zero-initialised), a prediction of ε = 0
that training moves away from; gradients still reach that last layer.

>>> denoiser = MLPDenoiser(features=2, hidden=[16], num_classes=3)
>>> denoiser(torch.randn(4, 2), torch.tensor([0, 5, 9, 999]), torch.tensor([0, 2, -1, 1])).shape
torch.Size([4, 2])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Fraction, PositiveFloat, Size, register_block

_PORTS_2D = {
    "inputs": {"x": "Tensor[B, C, H, W]", "t": "Timesteps[B]", "y": "Labels[B]?"},
    "outputs": {"out": "Tensor[B, C, H, W]"},
}
_CLASSES_RULE = {"num_classes <= 100000": "at most 100,000 classes (one embedding row each)"}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000) -> Tensor:
    """Sinusoidal embedding of (integer or real) timesteps, as in DDPM and ADM: ``dim // 2`` cosines then as many
    sines at frequencies from 1 down to ``1 / max_period`` (geometrically spaced), a zero appended for odd ``dim``.

    Args:
        t: timesteps, shape ``(N,)``.
        dim: size of each embedding.
        max_period: the longest period, in timesteps.

    Returns:
        ``(N, dim)`` float32 embeddings.

    Example:
        >>> timestep_embedding(torch.tensor([0, 1]), 4)
        tensor([[1.0000, 1.0000, 0.0000, 0.0000],
                [0.5403, 0.9999, 0.8415, 0.0100]])
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * exponents)[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class Conditioning(nn.Module):
    """The conditioning vector ``c`` of a denoiser: an MLP over :func:`timestep_embedding` of ``t``, plus the
    embedding of ``y`` for a class-conditional model.

    The class embedding has ``num_classes + 1`` rows; the last is the learned null condition that label ``-1``
    (a dropped or absent condition) selects, as does ``y=None``. Any other label outside ``[0, num_classes)``
    fails in the embedding lookup.

    Args:
        dim: size of ``c``.
        frequency_dim: size of the sinusoidal embedding the MLP reads.
        num_classes: number of classes; None: an unconditional model, which refuses labels.
        block: the owning block's name, for error messages.

    Example:
        >>> condition = Conditioning(dim=8, frequency_dim=4, num_classes=3)
        >>> t = torch.tensor([10, 10])
        >>> torch.equal(condition(t, torch.tensor([-1, -1])), condition(t))
        True
    """

    def __init__(
        self, *, dim: int, frequency_dim: int, num_classes: int | None = None, block: str = "denoiser"
    ) -> None:
        super().__init__()
        self.frequency_dim, self.num_classes, self.block = frequency_dim, num_classes, block
        self.time = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.time(timestep_embedding(t, self.frequency_dim))
        if self.classes is None:
            if y is not None:
                raise ValueError(
                    f"{self.block} was built without num_classes, so it takes no labels y: set num_classes to "
                    "condition on classes, or leave y unconnected"
                )
            return c
        return c + self.classes(self.class_index(t, y))

    def class_index(self, t: Tensor, y: Tensor | None) -> Tensor:
        """The embedding row of each label: the label itself, or the null row for ``-1`` and for ``y=None``."""
        null = self.num_classes
        if y is None:
            return torch.full_like(t, null, dtype=torch.int64)
        return torch.where(y == -1, torch.full_like(y, null), y)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


# ---------------------------------------------------------------------------------------------------------------
# U-Net


class ResBlock(nn.Module):
    """DDPM's residual block: GroupNorm, SiLU, 3×3 conv, plus the conditioning projected to one shift per channel;
    GroupNorm, SiLU, dropout, 3×3 conv; added to the input (through a 1×1 conv where the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, out_channels))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.cond(c)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Single-head self-attention over the positions of a feature map (DDPM's attention block), residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class _Level(nn.Module):
    """The residual blocks of one U-Net resolution (on the way down or up)."""

    def __init__(self, widths: list[tuple[int, int]], cond_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, cond_dim, groups, dropout) for i, o in widths)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, c)
        return x


_MAX_LEVELS = 4
_DIVISOR_BY_LEVELS = [2**i for i in range(_MAX_LEVELS)]  # the rule language has no power: index a table
_WIDTH_RULE = {
    "channels % groups == 0": "every width is channels times a mult, each normalised by GroupNorm(groups): channels "
    "must be divisible by groups"
}


@register_block(
    "unet_denoiser",
    family="denoiser",
    **_PORTS_2D,
    infer={"in_channels": "C"},
    requires={
        f"len(channel_mults) >= 1 and len(channel_mults) <= {_MAX_LEVELS}": f"1 to {_MAX_LEVELS} resolutions",
        "min(channel_mults) >= 1 and max(channel_mults) <= 16": "channel multipliers lie in 1..16",
        f"H % {_DIVISOR_BY_LEVELS}[len(channel_mults) - 1] == 0 and W % {_DIVISOR_BY_LEVELS}[len(channel_mults) - 1]"
        " == 0": "each level below the first halves the image: H and W must be divisible by 2**(len(channel_mults)-1)",
        **_WIDTH_RULE,
        "channels * max(channel_mults) <= 4096 and res_blocks <= 8": "at most 4096 channels at any resolution and 8 "
        "residual blocks per level",
        **_CLASSES_RULE,
    },
    param_count=(
        "30 * channels * channels * max(channel_mults) * max(channel_mults) * len(channel_mults) * (res_blocks + 1)"
    ),
)
class UNetDenoiser(nn.Module):
    """A small DDPM-style U-Net denoiser (Ho et al., 2020) for images whose sides halve ``len(channel_mults) - 1``
    times.

    A 3×3 conv lifts ``x`` to ``channels``. Going down, each resolution ``i`` holds ``res_blocks`` residual
    blocks of width ``channels · channel_mults[i]`` (:class:`ResBlock`: GroupNorm, SiLU, conv, the conditioning
    added per channel, dropout), keeps its output for the skip connection, and halves the size with a stride-2
    3×3 conv. The lowest resolution holds ``res_blocks`` residual blocks, self-attention (``attention``) and one
    more residual block (DDPM's middle). Going up, each resolution doubles the size with a 2×2 stride-2
    transposed conv to its width, concatenates the skip, and runs ``res_blocks`` residual blocks. GroupNorm, SiLU
    and a zero-initialised 3×3 conv give the output. The conditioning (:class:`Conditioning`) is a vector of
    ``4 · channels``: the time MLP reads a ``channels``-sized sinusoidal embedding.

    Args:
        in_channels: channels of ``x`` and of the output (inferred from ``C``).
        channels: base width; resolution ``i`` has ``channels · channel_mults[i]`` channels.
        channel_mults: width multiplier per resolution, from the full size down (1 to 4 of them).
        res_blocks: residual blocks per resolution, on each side.
        attention: self-attention at the lowest resolution.
        num_classes: classes of ``y`` for a class-conditional model (label ``-1``: the null condition); None:
            unconditional.
        dropout: dropout probability inside the residual blocks.
        groups: GroupNorm groups (dividing ``channels``, hence every width).

    Example:
        >>> unet = UNetDenoiser(in_channels=1, channels=8, groups=4, num_classes=10)
        >>> unet(torch.randn(2, 1, 28, 28), torch.tensor([3, 500]), torch.tensor([7, -1])).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        *,
        in_channels: Size = 1,
        channels: Size = 32,
        channel_mults: list[int] = [1, 2, 2],  # noqa: B006
        res_blocks: Size = 1,
        attention: bool = True,
        num_classes: Size | None = None,
        dropout: Fraction = 0.0,
        groups: Size = 8,
    ) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mults]
        _check_unet_widths(channels, widths, groups)
        cond_dim = 4 * channels
        self.condition = Conditioning(dim=cond_dim, frequency_dim=channels, num_classes=num_classes,
                                      block="unet_denoiser")  # fmt: skip
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        level = _level_factory(cond_dim, groups, dropout, res_blocks)
        inputs = [channels, *widths[:-1]]
        self.down = nn.ModuleList(level(i, o) for i, o in zip(inputs[:-1], widths[:-1], strict=True))
        self.downsample = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.bottom = level(inputs[-1], widths[-1])
        self.attention = SelfAttention2d(widths[-1], groups) if attention else nn.Identity()
        self.middle = ResBlock(widths[-1], widths[-1], cond_dim, groups, dropout)
        # A transposed 2×2 conv doubles the size and narrows to the level's width in one step, a quarter of the
        # cost of DDPM's nearest upsampling followed by a 3×3 conv at the larger size.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(wide, w, 2, stride=2) for w, wide in itertools.pairwise(widths)
        )
        self.up = nn.ModuleList(level(2 * w, w) for w in widths[:-1])
        self.head = nn.Sequential(nn.GroupNorm(groups, widths[0]), nn.SiLU(),
                                  nn.Conv2d(widths[0], in_channels, 3, padding=1))  # fmt: skip
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.factor = 2 ** (len(widths) - 1)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"unet_denoiser: H and W must be divisible by {self.factor}, found {tuple(x.shape)}")
        c = self.condition(t, y)
        h = self.stem(x)
        skips = []
        for level, downsample in zip(self.down, self.downsample, strict=True):
            h = level(h, c)
            skips.append(h)
            h = downsample(h)
        h = self.middle(self.attention(self.bottom(h, c)), c)
        for level, upsample in zip(reversed(self.up), reversed(self.upsample), strict=True):
            h = level(torch.cat([upsample(h), skips.pop()], dim=1), c)
        return self.head(h)


def _check_unet_widths(channels: int, widths: list[int], groups: int) -> None:
    if not 1 <= len(widths) <= _MAX_LEVELS or min(widths) < 1:
        raise ValueError(f"unet_denoiser: channel_mults needs 1 to {_MAX_LEVELS} positive values")
    if channels % groups:  # every width is a multiple of channels
        raise ValueError(f"unet_denoiser: channels={channels} is not divisible by groups={groups} (GroupNorm)")


def _level_factory(cond_dim: int, groups: int, dropout: float, res_blocks: int) -> Callable[[int, int], _Level]:
    """A maker of :class:`_Level` modules: the first block goes from ``in_width`` to ``width``, the rest keep it."""

    def make(in_width: int, width: int) -> _Level:
        widths = [(in_width, width)] + [(width, width)] * (res_blocks - 1)
        return _Level(widths, cond_dim, groups, dropout)

    return make


# ---------------------------------------------------------------------------------------------------------------
# DiT


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x · (1 + scale) + shift`` with one shift and scale per sample, broadcast over the tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DiTBlock(nn.Module):
    """A DiT transformer block with adaLN-Zero: from the conditioning ``c``, SiLU and a zero-initialised linear
    give a shift, scale and gate for the attention and for the MLP; each branch reads its modulated LayerNorm
    (no affine of its own) and is added scaled by its gate. Freshly built, every gate is zero and the block is
    exactly the identity.

    Args:
        hidden: width of the tokens and of ``c``.
        heads: attention heads (dividing ``hidden``).
        mlp_ratio: width of the MLP relative to ``hidden``.

    Example:
        >>> block = DiTBlock(hidden=8, heads=2)
        >>> x = torch.randn(2, 5, 8)
        >>> torch.equal(block(x, torch.randn(2, 8)), x)
        True
    """

    def __init__(self, *, hidden: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = max(1, round(hidden * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), _zero_linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attend(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))

    def attend(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


def sincos_position_embedding(rows: int, columns: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embeddings ``(rows · columns, dim)``, raster order: the first half of each is
    :func:`timestep_embedding` of the row, the second that of the column (MAE's and DiT's layout).

    Example:
        >>> sincos_position_embedding(2, 3, 8).shape
        torch.Size([6, 8])
    """
    row, column = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    halves = [timestep_embedding(row.flatten(), dim // 2), timestep_embedding(column.flatten(), dim - dim // 2)]
    return torch.cat(halves, dim=1)


@register_block(
    "dit_denoiser",
    family="denoiser",
    **_PORTS_2D,
    infer={"in_channels": "C", "height": "H", "width": "W"},
    requires={
        "H % patch_size == 0 and W % patch_size == 0": "the image is cut into patch_size × patch_size patches",
        "hidden % heads == 0": "attention splits hidden evenly across the heads",
        "hidden <= 4096 and depth <= 48 and mlp_ratio <= 16": "at most hidden 4096, depth 48 and mlp_ratio 16",
        "(H // patch_size) * (W // patch_size) <= 4096": "at most 4096 patches (attention is quadratic in them)",
        **_CLASSES_RULE,
    },
    param_count=(
        "depth * (10 + 2 * mlp_ratio) * hidden * hidden + 256 * hidden + 2 * patch_size * patch_size * in_channels"
        " * hidden"
    ),
)
class DiTDenoiser(nn.Module):
    """A diffusion transformer (DiT, Peebles & Xie, 2023) with adaLN-Zero conditioning.

    A ``patch_size``-strided conv cuts ``x`` into patch tokens of width ``hidden``, to which fixed 2-D sin-cos
    position embeddings are added (sized for ``height × width``, inferred from the input). ``depth``
    :class:`DiTBlock` layers follow, each modulated by the conditioning ``c`` (:class:`Conditioning`: the time
    MLP over a 256-sized sinusoidal embedding, plus the class embedding). A final LayerNorm modulated by ``c``
    (adaLN, zero-initialised) and a zero-initialised linear give each token's patch, and the patches are put
    back together. Freshly built the output is exactly zero. Other weights follow DiT: Xavier-uniform linears
    and patch projection, zero biases, N(0, 0.02) for the time MLP and the class embedding.

    Args:
        in_channels: channels of ``x`` and of the output (inferred from ``C``).
        height: image height (inferred from ``H``).
        width: image width (inferred from ``W``).
        patch_size: side of the square patches (dividing ``height`` and ``width``).
        hidden: width of the tokens.
        depth: transformer blocks.
        heads: attention heads (dividing ``hidden``).
        mlp_ratio: width of each block's MLP relative to ``hidden``.
        num_classes: classes of ``y`` for a class-conditional model (label ``-1``: the null condition); None:
            unconditional.

    Example:
        >>> dit = DiTDenoiser(in_channels=1, height=28, width=28, hidden=32, depth=2, num_classes=10)
        >>> out = dit(torch.randn(2, 1, 28, 28), torch.tensor([3, 500]), torch.tensor([7, -1]))
        >>> out.shape, bool((out == 0).all())
        (torch.Size([2, 1, 28, 28]), True)
    """

    def __init__(
        self,
        *,
        in_channels: Size = 1,
        height: Size = 28,
        width: Size = 28,
        patch_size: Size = 4,
        hidden: Size = 128,
        depth: Size = 4,
        heads: Size = 4,
        mlp_ratio: PositiveFloat = 4.0,
        num_classes: Size | None = None,
    ) -> None:
        super().__init__()
        if height % patch_size or width % patch_size or hidden % heads:
            raise ValueError(f"dit_denoiser: patch_size={patch_size} must divide {height}×{width} and heads={heads} "
                             f"must divide hidden={hidden}")  # fmt: skip
        self.in_channels, self.height, self.width, self.patch_size = in_channels, height, width, patch_size
        self.patchify = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        grid = sincos_position_embedding(height // patch_size, width // patch_size, hidden)
        self.register_buffer("position", grid[None], persistent=False)  # follows from the parameters alone
        self.condition = Conditioning(dim=hidden, frequency_dim=256, num_classes=num_classes, block="dit_denoiser")
        self.blocks = nn.ModuleList(DiTBlock(hidden=hidden, heads=heads, mlp_ratio=mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), _zero_linear(hidden, 2 * hidden))
        self.to_patches = _zero_linear(hidden, patch_size * patch_size * in_channels)
        self._init_like_dit()

    def _init_like_dit(self) -> None:
        """DiT's initialisation of everything but the zero-initialised modulations and output."""
        for block in self.blocks:
            for layer in (block.qkv, block.proj, block.mlp[0], block.mlp[2]):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.out_channels, -1))
        nn.init.zeros_(self.patchify.bias)
        for layer in (self.condition.time[0], self.condition.time[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.condition.classes is not None:
            nn.init.normal_(self.condition.classes.weight, std=0.02)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, self.height, self.width):
            raise ValueError(f"dit_denoiser: built for {self.in_channels}×{self.height}×{self.width} images (its "
                             f"position embeddings), found {tuple(x.shape[1:])}")  # fmt: skip
        c = self.condition(t, y)
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        return self.unpatchify(self.to_patches(modulate(self.norm(tokens), shift, scale)))

    def unpatchify(self, patches: Tensor) -> Tensor:
        """``(B, rows · columns, p · p · C)`` tokens back to ``(B, C, H, W)`` images."""
        p, c = self.patch_size, self.in_channels
        rows, columns = self.height // p, self.width // p
        grid = patches.reshape(-1, rows, columns, p, p, c)
        return torch.einsum("brcpqk->bkrpcq", grid).reshape(-1, c, rows * p, columns * p)


# ---------------------------------------------------------------------------------------------------------------
# MLP


@register_block(
    "mlp_denoiser",
    family="denoiser",
    inputs={"x": "Tensor[B, D]", "t": "Timesteps[B]", "y": "Labels[B]?"},
    outputs={"out": "Tensor[B, D]"},
    infer={"features": "D"},
    requires={
        "len(hidden) >= 1 and len(hidden) <= 16": "1 to 16 hidden layers (each takes the conditioning)",
        "min(hidden) >= 1 and max(hidden) <= 8192 and time_dim <= 4096": "hidden widths in 1..8192, time_dim at "
        "most 4096",
        **_CLASSES_RULE,
    },
    param_count=(
        "(features + sum(hidden) + time_dim * len(hidden)) * max(flat([hidden, features])) + 2 * time_dim * time_dim"
    ),
)
class MLPDenoiser(nn.Module):
    """An MLP denoiser for vectors: 2-D toy data, VAE latents.

    Each hidden layer ``i`` computes ``SiLU(W_i h + U_i SiLU(c))``: the conditioning ``c`` (:class:`Conditioning` of
    size ``time_dim``) enters every layer through its own projection ``U_i``, so deep layers see ``t`` as
    directly as the first. A zero-initialised linear gives the output.

    Args:
        features: size of ``x`` and of the output (inferred from ``D``).
        hidden: widths of the hidden layers (at least one).
        time_dim: size of the sinusoidal embedding of ``t`` and of the conditioning.
        num_classes: classes of ``y`` for a class-conditional model (label ``-1``: the null condition); None:
            unconditional.

    Example:
        >>> MLPDenoiser(features=20)(torch.randn(5, 20), torch.randint(0, 1000, (5,))).shape
        torch.Size([5, 20])
    """

    def __init__(
        self,
        *,
        features: Size = 2,
        hidden: list[int] = [128, 128, 128],  # noqa: B006
        time_dim: Size = 64,
        num_classes: Size | None = None,
    ) -> None:
        super().__init__()
        if not hidden or min(hidden) < 1:
            raise ValueError(f"mlp_denoiser: hidden needs at least one positive width, found {hidden}")
        self.condition = Conditioning(dim=time_dim, frequency_dim=time_dim, num_classes=num_classes,
                                      block="mlp_denoiser")  # fmt: skip
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise([features, *hidden]))
        self.cond = nn.ModuleList(nn.Linear(time_dim, o, bias=False) for o in hidden)  # the layer's bias suffices
        self.out = _zero_linear(hidden[-1], features)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = F.silu(self.condition(t, y))  # the time MLP ends in a linear layer, as in the other denoisers
        h = x
        for layer, cond in zip(self.layers, self.cond, strict=True):
            h = F.silu(layer(h) + cond(c))
        return self.out(h)
