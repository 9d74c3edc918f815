"""FeatMap figures: one heat map per metric (manipulation x layer, one panel per map)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from fsl.plots.common import _save


def featmap_heatmap(panels: Mapping[str, np.ndarray], manipulations: Sequence[str], layers: Sequence[str],
                    metric: str, path=None, annotate: bool = True):
    """``panels`` maps a map's name to a ``(len(manipulations), len(layers))`` array of ``metric``
    (NaN: not measured, left blank). One colour scale for all panels; cells annotated with values."""
    vals = np.concatenate([np.asarray(v, dtype=float).ravel() for v in panels.values()]) if panels else np.array([])
    finite = vals[np.isfinite(vals)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    n = max(1, len(panels))
    ncols = min(n, 5)
    nrows = math.ceil(n / ncols)
    w = 0.55 * max(1, len(layers)) + 1.4
    h = 0.28 * max(1, len(manipulations)) + 0.9
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 0.8, (h + 0.5) * nrows + 0.4), squeeze=False,
                             layout="constrained")  # room for the rotated layer names (drawn by analyze.py only)
    im = None
    for ax, (name, arr) in zip(axes.flat, panels.items()):
        a = np.ma.masked_invalid(np.asarray(arr, dtype=float))
        im = ax.imshow(a, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(len(layers)), layers, fontsize=6, rotation=45, ha="right")
        ax.set_yticks(range(len(manipulations)), manipulations if ax in axes[:, 0] else [], fontsize=6)
        if annotate:
            for (i, j), v in np.ndenumerate(np.asarray(arr, dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=4.5,
                            color="white" if (v - vmin) < 0.5 * (vmax - vmin) else "black")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(f"FeatMap: {metric} (manipulation x layer)", fontsize=9)
    return _save(fig, path)
