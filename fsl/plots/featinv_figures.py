"""FeatInv figures: per sample, the original, the deterministic reconstruction, the samples of the
probabilistic decoder, their per-pixel std and the optimisation inversion."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from fsl.plots.common import _cell, _colorbar, _np, _pack, _save, _show, _wrap


def featinv_grid(columns: Mapping[str, torch.Tensor], std: torch.Tensor | None = None, std_after: str | None = None,
                 row_labels: Sequence[str] | None = None, title: str | None = None, path=None, scale: float = 1.1):
    """One row per sample; ``columns`` maps a title to ``(N, C, H, W)`` images in [0, 1]. ``std``
    ``(N, C, H, W)`` is drawn (channel mean, 'magma', common scale 0..max, colour bar under the column)
    after the column ``std_after`` (or last). The figure's height follows the number of rows."""
    cols = [(k, _np(v)) for k, v in columns.items()]
    n = min(a.shape[0] for _, a in cols)
    if std is not None:
        s = _np(std).mean(axis=1)[:n]
        vmax = float(s.max()) or 1.0
        at = [k for k, _ in cols].index(std_after) + 1 if std_after in columns else len(cols)
        cols.insert(at, ("std", None))
    fig, axes = plt.subplots(n, len(cols), squeeze=False)
    cell = _cell(next(a for _, a in cols if a is not None), scale)
    std_im = None
    for ci, (name, arr) in enumerate(cols):
        for ri in range(n):
            ax = axes[ri, ci]
            if arr is None:
                ax.set_xticks([]), ax.set_yticks([])
                std_im = ax.imshow(s[ri], cmap="magma", vmin=0, vmax=vmax)
            else:
                _show(ax, arr[ri])
            if ri == 0:
                ax.set_title(name if arr is not None else f"std (0..{vmax:.2f})", fontsize=7, pad=3)
        if row_labels is not None:
            for ri in range(n):
                axes[ri, 0].set_ylabel(_wrap(fig, str(row_labels[ri]), 7, 0.95 * cell[1]), fontsize=7)
    if std_im is not None:
        ci = [k for k, _ in cols].index("std")
        _colorbar(axes[n - 1, ci], std_im, "pixel std (mean over channels)", where="below")
    return _save(_pack(fig, axes, *cell, suptitle=title), path)
