"""Autoregressive priors over a grid of discrete codes: a gated PixelCNN and a causal transformer.

Both read the grid in raster order (row by row, left to right) and share one contract: ``codes`` in, the
logits of each position's code given the codes before it and the completed ``codes`` out. A code of ``-1``
marks an unknown position: the forward fills every unknown position in raster order with a sample from the
model (one pass per position, at the temperature ``self.temperature``, from the global torch RNG), so one
block both trains (no ``-1``: one pass, ``codes`` comes back unchanged, the loss is the cross-entropy of
``logits`` against ``codes``) and samples (all ``-1``), or completes a partly known grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dagcv.registry import Fraction, Size, register_block

UNKNOWN = -1  # the code of a position to be sampled


def fill_unknown(logits_of: Callable[[Tensor], Tensor], codes: Tensor, temperature: float) -> dict[str, Tensor]:
    """Sample every unknown (``-1``) position of ``codes`` in raster order from a causal model.

    Args:
        logits_of: the model: codes ``(B, H, W)`` in ``[0, V)`` to logits ``(B, V, H, W)``, where the logits at a
            position depend only on the codes at earlier raster positions.
        codes: the grid, ``-1`` where unknown.
        temperature: divides the logits before sampling; 0 takes the most likely code.

    Returns:
        ``logits`` of the last pass and the completed ``codes``. Each pass fills one position (in every grid
        where it is unknown); the last pass's logits are exact up to the last unknown position, while those
        after it saw a placeholder there.

    Example:
        >>> uniform = lambda c: torch.zeros(c.shape[0], 3, *c.shape[1:])
        >>> out = fill_unknown(uniform, torch.tensor([[[0, -1], [2, -1]]]), temperature=1.0)
        >>> out["codes"][0, :, 0].tolist(), bool((out["codes"] >= 0).all())
        ([0, 2], True)
    """
    unknown = codes == UNKNOWN
    if not unknown.any():
        return {"logits": logits_of(codes), "codes": codes}
    codes = codes.clone()
    b, h, w = codes.shape
    flat, unknown = codes.view(b, h * w), unknown.view(b, h * w)
    for position in unknown.any(0).nonzero().squeeze(1).tolist():
        # Unknown codes after this position become 0: the model never looks ahead, so their value is unseen.
        logits = logits_of(codes.clamp(min=0))
        scores = logits.flatten(2)[:, :, position]
        if temperature == 0:
            drawn = scores.argmax(1)
        else:
            drawn = torch.multinomial(F.softmax(scores.float() / temperature, dim=1), 1).squeeze(1)
        flat[:, position] = torch.where(unknown[:, position], drawn, flat[:, position])
    return {"logits": logits, "codes": codes}


def check_codes(codes: Tensor, num_codes: int, block: str) -> None:
    """Refuse a code outside ``[0, num_codes)`` other than ``-1`` (unknown)."""
    if codes.dim() != 3 or codes.dtype != torch.int64:
        raise ValueError(f"{block}: codes must be int64 of shape (B, H, W), found {codes.dtype} {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < UNKNOWN or codes.max() >= num_codes):
        raise ValueError(
            f"{block}: codes must lie in [0, {num_codes}) or be -1 (unknown), "
            f"found [{int(codes.min())}, {int(codes.max())}]"
        )


# ---------------------------------------------------------------------------------------------------------------
# Gated PixelCNN


class GatedLayer(nn.Module):
    """One layer of the two stacks of a gated PixelCNN (van den Oord et al., 2016).

    The vertical stack at row ``r`` sees the rows ``≤ r`` (any column within reach); shifted down by one row it
    feeds the horizontal stack, which sees the positions left of the current one in its row. Together they
    cover every earlier position, without the blind spot of stacked masked convolutions. The first layer
    (``first``, mask type A) shifts its horizontal input right by one so that a position never sees its own
    code; later layers (type B) may, because their input at a position already excludes it, and add a
    residual connection.
    """

    def __init__(self, *, channels: int, kernel: int, first: bool) -> None:
        super().__init__()
        self.reach, self.first = kernel // 2, first
        self.vertical = nn.Conv2d(channels, 2 * channels, kernel_size=(self.reach + 1, kernel))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.horizontal = nn.Conv2d(channels, 2 * channels, kernel_size=(1, self.reach + 1))
        self.horizontal_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        height, width = v.shape[-2:]
        r = self.reach
        v_pre = self.vertical(F.pad(v, (r, r, r, 0)))  # row i sees rows i-r .. i
        above = F.pad(v_pre, (0, 0, 1, 0))[:, :, :height]  # row i sees rows i-r-1 .. i-1 only
        h_in = F.pad(h, (1, 0))[..., :width] if self.first else h  # type A: column j sees columns < j only
        h_pre = self.horizontal(F.pad(h_in, (r, 0))) + self.vertical_to_horizontal(above)
        h_out = self.horizontal_out(gate(h_pre))
        return gate(v_pre), h_out if self.first else h + h_out


def gate(x: Tensor) -> Tensor:
    """The gated activation ``tanh(a) · σ(b)`` over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


@register_block(
    "pixelcnn_prior",
    family="prior",
    inputs={"codes": "Codes[B, H, W] vocab V"},
    outputs={"logits": "Logits[B, num_codes, H, W]", "codes": "Codes[B, H, W] vocab num_codes"},
    infer={"num_codes": "V"},
    requires={"kernel % 2 == 1": "the convolutions are centred on a column: the kernel must be odd"},
    param_count="layers * hidden * hidden * ((kernel + 1) * (kernel + 1) + 5) + (2 * num_codes + hidden) * hidden",
)
class PixelCNNPrior(nn.Module):
    """An unconditional gated PixelCNN over a grid of codes (van den Oord et al., 2016).

    Codes are embedded, run through ``layers`` gated layers, each with a vertical stack (the rows above) and a
    horizontal stack (the positions to the left), whose two-stack design leaves no blind spot: the logits at a
    position depend on every earlier position within the receptive field (``layers · kernel // 2`` rows up and
    columns to either side) and on no later one. A ReLU, 1×1 conv, ReLU and 1×1 conv give the logits. See the
    module docstring for the ``-1`` (unknown) positions and sampling.

    Args:
        num_codes: vocabulary of the codes (inferred from ``V``).
        hidden: channels of both stacks.
        layers: gated layers; the first is of mask type A.
        kernel: width of the convolutions (odd); each layer reaches ``kernel // 2`` positions further.

    Example:
        >>> prior = PixelCNNPrior(num_codes=8, hidden=16, layers=2, kernel=3).eval()
        >>> out = prior(torch.randint(0, 8, (2, 4, 4)))
        >>> out["logits"].shape
        torch.Size([2, 8, 4, 4])
        >>> sampled = prior(torch.full((2, 4, 4), -1))["codes"]
        >>> sampled.shape, bool(((sampled >= 0) & (sampled < 8)).all())
        (torch.Size([2, 4, 4]), True)
    """

    def __init__(self, *, num_codes: Size = 512, hidden: Size = 64, layers: Size = 5, kernel: Size = 5) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"pixelcnn_prior: kernel must be odd, found {kernel}")
        self.num_codes = num_codes
        self.temperature = 1.0  # the sampler may set it
        self.embedding = nn.Embedding(num_codes, hidden)
        self.layers = nn.ModuleList(GatedLayer(channels=hidden, kernel=kernel, first=i == 0) for i in range(layers))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden, hidden, kernel_size=1), nn.ReLU(), nn.Conv2d(hidden, num_codes, kernel_size=1)
        )

    def forward(self, codes: Tensor) -> dict[str, Tensor]:
        check_codes(codes, self.num_codes, "pixelcnn_prior")
        return fill_unknown(self.logits, codes, self.temperature)

    def logits(self, codes: Tensor) -> Tensor:
        """The logits ``(B, num_codes, H, W)`` of a grid of known codes (one pass, no sampling)."""
        v = h = self.embedding(codes).permute(0, 3, 1, 2)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)


# ---------------------------------------------------------------------------------------------------------------
# Causal transformer


@register_block(
    "transformer_prior",
    family="prior",
    inputs={"codes": "Codes[B, H, W] vocab V"},
    outputs={"logits": "Logits[B, num_codes, H, W]", "codes": "Codes[B, H, W] vocab num_codes"},
    infer={"num_codes": "V", "height": "H", "width": "W"},
    requires={"d_model % heads == 0": "attention splits d_model evenly across the heads"},
    param_count="layers * 12 * d_model * d_model + (2 * num_codes + height * width) * d_model",
)
class TransformerPrior(nn.Module):
    """A causal transformer over the codes of a grid flattened in raster order (as in VQGAN's or DALL-E's prior).

    The sequence fed to the transformer is a learned start token followed by the embeddings of the codes at
    positions ``0 .. H·W-2``, each plus a learned positional embedding of its position; the output at step
    ``i`` predicts the code at position ``i`` from the codes before it alone (a causal attention mask). Pre-norm
    ``nn.TransformerEncoder`` layers with a GELU feed-forward of ``4 · d_model``, a final LayerNorm, then a
    linear map to the logits. The positional embeddings are sized for an ``height × width`` grid, inferred from
    the input, so a prior built for another grid is a compile error. See the module docstring for the ``-1``
    (unknown) positions and sampling.

    Args:
        num_codes: vocabulary of the codes (inferred from ``V``).
        height: rows of the grid (inferred from ``H``).
        width: columns of the grid (inferred from ``W``).
        d_model: width of the token embeddings and of the transformer.
        heads: attention heads (dividing ``d_model``).
        layers: transformer layers.
        dropout: dropout probability inside the transformer layers.

    Example:
        >>> prior = TransformerPrior(num_codes=8, height=3, width=4, d_model=16, heads=2, layers=1).eval()
        >>> prior(torch.randint(0, 8, (2, 3, 4)))["logits"].shape
        torch.Size([2, 8, 3, 4])
        >>> sampled = prior(torch.full((2, 3, 4), -1))["codes"]
        >>> sampled.shape, bool(((sampled >= 0) & (sampled < 8)).all())
        (torch.Size([2, 3, 4]), True)
    """

    def __init__(
        self,
        *,
        num_codes: Size = 512,
        height: Size = 8,
        width: Size = 8,
        d_model: Size = 64,
        heads: Size = 4,
        layers: Size = 2,
        dropout: Fraction = 0.0,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"transformer_prior: d_model={d_model} is not divisible by heads={heads}")
        self.num_codes, self.height, self.width = num_codes, height, width
        self.temperature = 1.0  # the sampler may set it
        self.embedding = nn.Embedding(num_codes, d_model)
        self.start = nn.Parameter(torch.randn(d_model) * 0.02)
        self.position = nn.Parameter(torch.randn(height * width, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=4 * d_model, dropout=dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.to_logits = nn.Linear(d_model, num_codes)
        causal = torch.triu(torch.ones(height * width, height * width, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)  # True: may not attend (a later position)

    def forward(self, codes: Tensor) -> dict[str, Tensor]:
        check_codes(codes, self.num_codes, "transformer_prior")
        if tuple(codes.shape[1:]) != (self.height, self.width):
            raise ValueError(
                f"transformer_prior: built for a {self.height}×{self.width} grid, found {tuple(codes.shape[1:])}"
            )
        return fill_unknown(self.logits, codes, self.temperature)

    def logits(self, codes: Tensor) -> Tensor:
        """The logits ``(B, num_codes, H, W)`` of a grid of known codes (one pass, no sampling)."""
        b, h, w = codes.shape
        tokens = self.embedding(codes.view(b, h * w)[:, :-1])
        tokens = torch.cat([self.start.expand(b, 1, -1), tokens], dim=1) + self.position
        out = self.transformer(tokens, mask=self.causal_mask, is_causal=True)
        return self.to_logits(self.norm(out)).transpose(1, 2).reshape(b, self.num_codes, h, w)


@register_block(
    "unknown_codes",
    family="noise",
    outputs={"out": "Codes[B, height, width] vocab num_codes"},
    module=False,
    requires={"height * width <= 1024": "a prior fills the grid one position per pass: at most 32×32 codes"},
)
class UnknownCodes:
    """A grid of unknown codes (-1 everywhere) for a prior to fill: where sampling from a prior over codes starts.

    A source, like a noise source: ``dagcv sample`` (and a loop's sample grid) draws ``n`` grids and feeds them
    to a node that shares the trained prior, which fills every -1 in raster order. Its size and vocabulary are
    those of the codes the prior was trained on, so check compares them with the prior's.

    Args:
        height: rows of the code grid.
        width: columns of the code grid.
        num_codes: the vocabulary of the codes to draw.

    Example:
        >>> UnknownCodes(height=2, width=3, num_codes=8).draw(1)
        tensor([[[-1, -1, -1],
                 [-1, -1, -1]]])
    """

    def __init__(self, *, height: Size, width: Size, num_codes: Size) -> None:
        self.height, self.width, self.num_codes = height, width, num_codes

    def draw(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        return torch.full((n, self.height, self.width), -1, dtype=torch.int64, device=device)

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass

    def __repr__(self) -> str:
        return f"UnknownCodes(height={self.height}, width={self.width}, num_codes={self.num_codes})"
