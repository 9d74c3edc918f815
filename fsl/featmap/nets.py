"""Trained (SGD) maps between feature maps (FeatMap: Krey, Neukirch, Strodthoff, arXiv 2605.11203):
``(N, C, h, w) -> (N, C, h, w)``; a vector layer is a 1 x 1 map. With ``residual=True`` a net
predicts ``x + f(x)`` and its last layer starts at zero, so training starts from the identity
(after the grid move of a geometric manipulation) and the parametrisation changes nothing else."""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


class _Residual(nn.Module):
    def __init__(self, residual: bool):
        super().__init__()
        self.residual = bool(residual)

    def _zero_last(self, layer: nn.Module) -> None:
        if self.residual:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class PositionMLP(_Residual):
    """Per-position MLP shared over positions: ``C -> hidden -> C`` (ReLU, dropout), as 1x1 convolutions."""

    def __init__(self, channels: int, hidden: int = 512, dropout: float = 0.1, residual: bool = True):
        super().__init__(residual)
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Conv2d(hidden, channels, 1))
        self._zero_last(self.body[-1])


class MapCNN(_Residual):
    """Two 3x3 convolutions ``C -> hidden -> C`` (ReLU, dropout between), same padding: local context."""

    def __init__(self, channels: int, hidden: int = 64, dropout: float = 0.1, residual: bool = True):
        super().__init__(residual)
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Conv2d(hidden, channels, 3, padding=1))
        self._zero_last(self.body[-1])


def patch_size(h: int, w: int, max_tokens: int) -> int:
    """The smallest ``p`` with ``ceil(h / p) * ceil(w / p) <= max_tokens``."""
    p = 1
    while math.ceil(h / p) * math.ceil(w / p) > max_tokens:
        p += 1
    return p


class _Tokens(nn.Module):
    """``(N, C, h, w)`` <-> ``(N, T, C p^2)`` tokens of p x p cells (zero-padded to a multiple of p)."""

    def __init__(self, grid: tuple[int, int], patch: int):
        super().__init__()
        self.grid, self.p = tuple(grid), int(patch)
        self.th, self.tw = math.ceil(grid[0] / patch), math.ceil(grid[1] / patch)

    def split(self, x: Tensor) -> Tensor:
        N, C, h, w = x.shape
        p = self.p
        x = nn.functional.pad(x, (0, self.tw * p - w, 0, self.th * p - h))
        return x.view(N, C, self.th, p, self.tw, p).permute(0, 2, 4, 1, 3, 5).reshape(N, self.th * self.tw, C * p * p)

    def merge(self, t: Tensor, channels: int) -> Tensor:
        N, p = len(t), self.p
        x = t.view(N, self.th, self.tw, channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(N, channels, self.th * p, self.tw * p)[..., :self.grid[0], :self.grid[1]]


class MapTransformer(_Residual):
    """A transformer encoder over the positions: tokens are p x p cells (``p`` = the smallest with at
    most ``max_tokens`` tokens; 1 for grids up to 8 x 8), linearly embedded to ``d_model``,
    ``layers`` encoder layers with ``heads`` heads (pre-norm, feed-forward ``2 d_model``, dropout),
    optionally plus a learned positional embedding, and linearly mapped back.

    Args:
        channels: C. grid: ``(h, w)``. positional: add the learned positional embedding (without
            it the net is equivariant to permutations of the tokens).
    """

    def __init__(self, channels: int, grid: tuple[int, int], d_model: int = 64, heads: int = 8, layers: int = 4,
                 dropout: float = 0.1, positional: bool = True, max_tokens: int = 64, residual: bool = True):
        super().__init__(residual)
        if d_model % heads:
            raise ValueError(f"MapTransformer: d_model={d_model} must be a multiple of heads={heads}")
        self.channels = int(channels)
        self.tokens = _Tokens(grid, patch_size(grid[0], grid[1], int(max_tokens)))
        width = channels * self.tokens.p ** 2
        self.embed = nn.Linear(width, d_model)
        n_tok = self.tokens.th * self.tokens.tw
        self.pos = nn.Parameter(0.02 * torch.randn(1, n_tok, d_model)) if positional else None
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, width)
        self._zero_last(self.out)

    def body(self, x: Tensor) -> Tensor:
        t = self.embed(self.tokens.split(x))
        if self.pos is not None:
            t = t + self.pos
        return self.tokens.merge(self.out(self.norm(self.encoder(t))), self.channels)


#: the options of :func:`build_net`
NET_DEFAULTS = {"residual": True, "dropout": 0.1, "mlp_hidden": 512, "cnn_hidden": 64, "d_model": 64, "heads": 8,
                "layers": 4, "max_tokens": 64}


def build_net(name: str, channels: int, grid: tuple[int, int], options: dict | None = None) -> nn.Module:
    """The trained map ``name`` (``mlp``, ``cnn``, ``transformer``, ``transformer_nopos``) for maps
    of ``channels`` x ``grid``; ``options``: :data:`NET_DEFAULTS` (``residual``, ``dropout``,
    ``mlp_hidden``, ``cnn_hidden``, ``d_model``, ``heads``, ``layers``, ``max_tokens``)."""
    o = {**NET_DEFAULTS, **(options or {})}
    common = {"dropout": float(o["dropout"]), "residual": bool(o["residual"])}
    if name == "mlp":
        return PositionMLP(channels, int(o["mlp_hidden"]), **common)
    if name == "cnn":
        return MapCNN(channels, int(o["cnn_hidden"]), **common)
    if name in ("transformer", "transformer_nopos"):
        return MapTransformer(channels, grid, int(o["d_model"]), int(o["heads"]), int(o["layers"]),
                              positional=name == "transformer", max_tokens=int(o["max_tokens"]), **common)
    raise ValueError(f"build_net: unknown trained map {name!r}; use mlp, cnn, transformer or transformer_nopos")
