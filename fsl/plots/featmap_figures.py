"""FeatMap figures: one heat map per metric (manipulation x layer, one panel per map)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize

from fsl.plots.common import _colorbar, _pack, _save, _text_width_in

# metrics whose size grows with the layer's width: one colour scale over layers of 16..800 channels would
# show only the widest layer, so they are scaled per layer (or divided by the channel count C)
SIZE_METRICS = ("erank", "rank", "spectral_norm", "frobenius_norm")


def _scaled(panels: Mapping[str, np.ndarray], layers: Sequence[str], metric: str, scale: str, channels):
    """The panels' colour values and the colour bar's label for ``scale``."""
    arrs = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    if scale == "channels":
        c = np.asarray([channels[name] for name in layers] if isinstance(channels, Mapping) else channels, dtype=float)
        if c.shape != (len(layers),):
            raise ValueError(f"channels: one count per layer ({len(layers)}), got {c.shape}")
        return {k: a / c[None, :] for k, a in arrs.items()}, f"{metric} / C (C = channels of the layer)"
    if scale == "layer":
        stack = np.stack(list(arrs.values())) if arrs else np.zeros((0, 0, len(layers)))
        with np.errstate(all="ignore"):
            top = np.nanmax(np.where(np.isfinite(stack), np.abs(stack), np.nan), axis=(0, 1)) if stack.size else None
        top = np.where(np.isfinite(top) & (top > 0), top, 1.0) if top is not None else 1.0
        return ({k: a / top[None, :] for k, a in arrs.items()},
                f"{metric} / largest {metric} of the layer\n(per-layer scale; cells: {metric})")
    if scale != "shared":
        raise ValueError(f"scale={scale!r}: use 'shared', 'layer' or 'channels'")
    return arrs, metric


def featmap_heatmap(panels: Mapping[str, np.ndarray], manipulations: Sequence[str], layers: Sequence[str],
                    metric: str, path=None, annotate: bool = True, channels=None, scale: str | None = None):
    """``panels`` maps a map's name to a ``(len(manipulations), len(layers))`` array of ``metric``
    (NaN: not measured, left blank). Cells are annotated with the values; one colour bar for all panels.

    ``scale``: "shared" (one colour scale for every cell), "layer" (each layer's column divided by the
    layer's largest value over all panels) or "channels" (divided by the layer's channel count, ``channels``:
    one count per layer, a sequence or ``{layer: C}``). Default: "channels" when ``channels`` is given and
    ``metric`` grows with the layer's width (:data:`SIZE_METRICS`), "layer" for such a metric without
    ``channels``, else "shared". The colour bar's label says which."""
    if scale is None:
        scale = ("channels" if channels is not None else "layer") if metric in SIZE_METRICS else "shared"
    colours, cbar_label = _scaled(panels, layers, metric, scale, channels)
    vals = np.concatenate([v.ravel() for v in colours.values()]) if colours else np.array([])
    finite = vals[np.isfinite(vals)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if scale != "shared" and vmin >= 0:
        vmin = 0.0
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    norm = Normalize(vmin, vmax)
    cmap = plt.get_cmap("viridis")
    n = max(1, len(panels))
    ncols = min(n, 3 if len(layers) > 6 else 5)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False)
    fs = 6.5
    cell_w = max(0.62, max((_text_width_in(fig, f"{v:.3g}", fs) for v in
                            np.concatenate([np.asarray(a, dtype=float).ravel() for a in panels.values()])
                            if np.isfinite(v)), default=0.0) + 0.1) if annotate and panels else 0.5
    cell_h = 0.24
    wide = max((_text_width_in(fig, str(s), 7) for s in layers), default=0.0) > cell_w - 0.06
    im = None
    for k, (ax, (name, arr)) in enumerate(zip(axes.flat, panels.items())):
        raw = np.asarray(arr, dtype=float)
        im = ax.imshow(np.ma.masked_invalid(colours[name]), cmap=cmap, norm=norm, aspect="auto")
        ax.set_title(name, fontsize=8, pad=3)
        ax.set_xticks(range(len(layers)), [str(s) for s in layers], fontsize=7, rotation=90 if wide else 0)
        ax.set_yticks(range(len(manipulations)), manipulations if k % ncols == 0 else [], fontsize=7)
        ax.tick_params(length=2, pad=2)
        if annotate:
            for (i, j), v in np.ndenumerate(raw):
                c = colours[name][i, j]
                if np.isfinite(v) and np.isfinite(c):
                    r, g, b, _ = cmap(norm(c))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=fs,
                            color="white" if dark else "black")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if im is not None:
        _colorbar(axes[0, -1] if len(panels) >= ncols else axes[0, len(panels) - 1], im, cbar_label,
                  fontsize=7).ax.yaxis.set_label_position("right")
    sup = f"FeatMap: {metric} (manipulation x layer)"
    return _save(_pack(fig, axes, cell_w * max(1, len(layers)), cell_h * max(1, len(manipulations)), suptitle=sup,
                       pad=0.12), path)
