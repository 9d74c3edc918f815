"""Matplotlib helpers shared by fsl's figures (Agg backend, PNG files written atomically)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, close: bool = True) -> Path:
    """Save ``fig`` as PNG atomically (temporary name, then rename: never a half-written image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.png")
    fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    if close:
        plt.close(fig)
    os.replace(tmp, path)
    return path


def _np(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:  # one (H, W) image
        a = a[None, None]
    elif a.ndim == 3:  # (N, H, W) grey or one (C, H, W)
        a = a[None] if a.shape[0] in (1, 3) and a.shape[0] != a.shape[1] else a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C in (1, 3), got {a.shape}")
    return a


def _show(ax, img: np.ndarray, symmetric: bool = False, vrange=None):
    """Show one (C, H, W) image on ``ax``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if img.shape[0] == 1:
        if symmetric:
            v = vrange or (float(np.abs(img).max()) or 1.0)
            ax.imshow(img[0], cmap="RdBu_r", vmin=-v, vmax=v)
        else:
            ax.imshow(np.clip(img[0], 0, 1), cmap="gray", vmin=0, vmax=1)
    else:
        rgb = np.transpose(img, (1, 2, 0))
        if symmetric:
            v = vrange or (float(np.abs(rgb).max()) or 1.0)
            rgb = 0.5 + 0.5 * rgb / v
        ax.imshow(np.clip(rgb, 0, 1))


def _save(fig, path):
    if path is not None:
        save_figure(fig, path, close=False)
    return fig


def image_grid(images, titles: Sequence[str] | None = None, ncols: int | None = None,
               symmetric: bool = False, suptitle: str | None = None, path=None, scale: float = 1.4):
    """Grid of images (N, C, H, W); ``symmetric`` for signed images (differences, residuals)."""
    a = _np(images)
    n = a.shape[0]
    ncols = ncols or min(n, 10)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, a[i], symmetric)
            if titles is not None and i < len(titles):
                ax.set_title(str(titles[i]), fontsize=7)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    # fixed margins instead of tight_layout (which takes 2/3 of the time of a 16-image grid)
    h_in = fig.get_size_inches()[1]
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    title_in = 0.14 * lines + 0.05
    top = 1 - ((0.45 if suptitle else 0.05) + title_in) / h_in
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.08, hspace=(title_in + 0.12) / (0.7 * scale))
    return _save(fig, path)


