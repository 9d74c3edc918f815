"""Matplotlib helpers shared by fsl's figures (Agg backend, PNG files written atomically).

Layout rules every figure of fsl.plots follows (guarded by tests/plots/test_figure_layout.py): no text overlaps
another, nothing lies outside the canvas, and every value-scaled image (differences, residuals, stds, heat
maps) has a labelled colour bar. Image grids are packed by :func:`_pack`: the image cells keep their size
in inches and the figure grows to hold the titles, labels and colour bars measured around them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402


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


def _vmax(a: np.ndarray) -> float:
    """Largest finite |value| of ``a`` (1.0 when there is none or it is 0): the range of a signed image."""
    a = np.abs(np.asarray(a, dtype=float))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size and a.max() > 0 else 1.0


def _show(ax, img: np.ndarray, symmetric: bool = False, vrange=None):
    """Show one (C, H, W) image on ``ax`` and return the image artist.

    Unsigned images are drawn as they are (grey or RGB, clipped to [0, 1]). ``symmetric`` images (differences,
    residuals) are drawn on -v..v with ``v = vrange`` (or the image's largest |value|): grey images with the
    'RdBu_r' colour map, RGB images per channel as ``0.5 + 0.5 x / v`` (grey = 0). Give a common ``vrange`` to
    several images that share one colour bar (:func:`_signed_colorbar`)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if img.shape[0] == 1:
        if symmetric:
            v = vrange or _vmax(img)
            return ax.imshow(img[0], cmap="RdBu_r", vmin=-v, vmax=v)
        return ax.imshow(np.clip(img[0], 0, 1), cmap="gray", vmin=0, vmax=1)
    rgb = np.transpose(img, (1, 2, 0))
    if symmetric:
        v = vrange or _vmax(rgb)
        rgb = 0.5 + 0.5 * rgb / v
    return ax.imshow(np.clip(rgb, 0, 1))


def _colorbar(ax, mappable, label: str, where: str = "right", fontsize: float = 6):
    """A colour bar with ``label`` in an inset of ``ax`` (a child axes: ``fig.axes`` is unchanged, and the
    bar belongs to ``ax``'s tight bounding box, so :func:`_pack` and ``tight_layout`` make room for it).

    ``where``: "right" (outside the right edge), "inside" (the left part of ``ax``, for an empty cell of a
    grid) or "below" (horizontal, under ``ax``)."""
    bounds = {"right": [1.05, 0.0, 0.07, 1.0], "inside": [0.02, 0.0, 0.07, 1.0],
              "below": [0.0, -0.13, 1.0, 0.07]}[where]
    cax = ax.inset_axes(bounds)
    cb = ax.figure.colorbar(mappable, cax=cax, orientation="horizontal" if where == "below" else "vertical")
    cb.ax.tick_params(labelsize=fontsize, length=2, pad=1)
    cb.set_label(label, fontsize=fontsize, labelpad=2)
    if where != "below":
        cb.locator = mticker.MaxNLocator(5, symmetric=mappable.norm.vmin == -mappable.norm.vmax)
        cb.update_ticks()
    else:
        cb.locator = mticker.MaxNLocator(3)
        cb.update_ticks()
    return cb


def _signed_colorbar(ax, img_artist, channels: int, v: float, label: str, where: str = "right"):
    """Colour bar of a signed image drawn by :func:`_show` (``symmetric``): the image's own colour map for a
    grey image, a grey ramp -v..v (grey = 0) for an RGB image (each channel is mapped that way)."""
    if channels == 1:
        return _colorbar(ax, img_artist, label, where)
    sm = ScalarMappable(Normalize(-v, v), cmap="gray")
    return _colorbar(ax, sm, f"{label}, per RGB channel", where)


def _text_width_in(fig, s: str, fontsize: float) -> float:
    """Width of ``s`` in inches when drawn at ``fontsize`` (measured by the figure's renderer)."""
    r = fig.canvas.get_renderer()
    w, _, _ = r.get_text_width_height_descent(s, FontProperties(size=fontsize), ismath=False)
    return w / fig.dpi


def _wrap(fig, s: str, fontsize: float, max_in: float) -> str:
    """``s`` with line breaks between words so that each line fits ``max_in`` inches (if a word allows)."""
    out = []
    for para in str(s).split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if line and _text_width_in(fig, cand, fontsize) > max_in:
                out.append(line)
                line = word
            else:
                line = cand
        out.append(line)
    return "\n".join(out)


def _decorations(ax, renderer) -> tuple[float, float, float, float]:
    """How far (inches) the decorations of ``ax`` reach out of its box: left, right, bottom, top.

    An image cell without ticks is measured from its title, axis labels, texts and inset axes directly
    (``get_tightbbox`` of every cell was most of the time of a 16-image grid); any other axes by its
    tight bounding box."""
    dpi = ax.figure.dpi
    ax.apply_aspect()
    pos = ax.get_window_extent(renderer)
    ticks = len(ax.get_xticks()) + len(ax.get_yticks()) if ax.axison else 0
    if ticks:
        tb = ax.get_tightbbox(renderer)
        return (max(0.0, pos.x0 - tb.x0) / dpi, max(0.0, tb.x1 - pos.x1) / dpi,
                max(0.0, pos.y0 - tb.y0) / dpi, max(0.0, tb.y1 - pos.y1) / dpi)
    left = right = bottom = top = 0.0
    if ax.axison:
        for label, side in ((ax.yaxis.label, ax.yaxis.get_label_position()),
                            (ax.xaxis.label, ax.xaxis.get_label_position())):
            if not (label.get_visible() and label.get_text()):
                continue
            bb = label.get_window_extent(renderer)
            pad = (ax.yaxis.labelpad if label is ax.yaxis.label else ax.xaxis.labelpad) * dpi / 72 + 2
            if label is ax.yaxis.label:
                over = max(0.0, 0.5 * (bb.height - pos.height))
                bottom, top = max(bottom, over), max(top, over)
                if side == "left":
                    left = max(left, bb.width + pad)
                else:
                    right = max(right, bb.width + pad)
            else:
                over = max(0.0, 0.5 * (bb.width - pos.width))
                left, right = max(left, over), max(right, over)
                if side == "bottom":
                    bottom = max(bottom, bb.height + pad)
                else:
                    top = max(top, bb.height + pad)
    extents = [t.get_window_extent(renderer) for t in (ax.title, ax._left_title, ax._right_title, *ax.texts)
               if t.get_visible() and t.get_text()]
    extents += [c.get_tightbbox(renderer) for c in ax.child_axes if c.get_visible()]
    for bb in extents:
        left, right = max(left, pos.x0 - bb.x0), max(right, bb.x1 - pos.x1)
        bottom, top = max(bottom, pos.y0 - bb.y0), max(top, bb.y1 - pos.y1)
    return left / dpi, right / dpi, bottom / dpi, top / dpi


def _pack(fig, axes, cell_w: float, cell_h: float, suptitle: str | None = None, fontsize: float = 9,
          pad: float = 0.06, margin: float = 0.05):
    """Lay out a grid of image axes (``axes``: (nrows, ncols) array of subplots) with cells of
    ``cell_w`` x ``cell_h`` inches: the decorations of every axes (titles, labels, colour-bar insets) are
    measured, the figure is sized to hold them with ``pad`` inches between neighbours and ``margin`` around,
    and ``suptitle`` (if any) goes on top. Uses the subplot parameters only, so a later ``tight_layout``
    (callers that add their own suptitle) still works."""
    axes = np.asarray(axes, dtype=object)
    nrows, ncols = axes.shape
    g = 0.2  # provisional: cells of the final size (where the decorations of neighbours fall does not matter)
    w0, h0 = ncols * (cell_w + g), nrows * (cell_h + g)
    fig.set_size_inches(w0, h0)
    fig.subplots_adjust(left=0.5 * g / w0, right=1 - 0.5 * g / w0, bottom=0.5 * g / h0, top=1 - 0.5 * g / h0,
                        wspace=g / cell_w, hspace=g / cell_h)
    r = fig.canvas.get_renderer()
    dpi = fig.dpi
    L, R, T, B = (np.zeros((nrows, ncols)) for _ in range(4))
    for (i, j), ax in np.ndenumerate(axes):
        if not ax.get_visible():
            continue
        L[i, j], R[i, j], B[i, j], T[i, j] = _decorations(ax, r)
    colL, colR, rowT, rowB = L.max(0), R.max(0), T.max(1), B.max(1)
    gap_x = float((colR[:-1] + colL[1:]).max()) + pad if ncols > 1 else 0.0
    gap_y = float((rowB[:-1] + rowT[1:]).max()) + pad if nrows > 1 else 0.0
    left, right = margin + colL[0], margin + colR[-1]
    top, bottom = margin + rowT[0], margin + rowB[-1]
    sup = None
    if suptitle:
        sup = fig.suptitle(suptitle, fontsize=fontsize, va="top")
        bb = sup.get_window_extent(r)
        top += bb.height / dpi + pad
        need = bb.width / dpi + 2 * margin
    width = left + ncols * cell_w + (ncols - 1) * gap_x + right
    if sup is not None and need > width:
        left, right = left + 0.5 * (need - width), right + 0.5 * (need - width)
        width = need
    height = top + nrows * cell_h + (nrows - 1) * gap_y + bottom
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_x / cell_w if ncols > 1 else 0.0, hspace=gap_y / cell_h if nrows > 1 else 0.0)
    if sup is not None:
        sup.set_y(1 - margin / height)
    return fig


def _cell(a: np.ndarray, scale: float) -> tuple[float, float]:
    """Cell size (inches) of images ``a`` (N, C, H, W): the longer side ``scale``."""
    h, w = a.shape[-2:]
    return (scale, scale * h / w) if w >= h else (scale * w / h, scale)


def _save(fig, path):
    if path is not None:
        save_figure(fig, path, close=False)
    return fig


def image_grid(images, titles: Sequence[str] | None = None, ncols: int | None = None,
               symmetric: bool = False, suptitle: str | None = None, path=None, scale: float = 1.4,
               cbar_label: str = "value (signed)"):
    """Grid of images (N, C, H, W); ``symmetric`` for signed images (differences, residuals): one colour
    scale for the grid, with a colour bar labelled ``cbar_label``."""
    a = _np(images)
    n = a.shape[0]
    ncols = ncols or min(n, 10)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False)
    v = _vmax(a) if symmetric else None
    last = None
    for i, ax in enumerate(axes.flat):
        if i < n:
            last = _show(ax, a[i], symmetric, v)
            if titles is not None and i < len(titles):
                ax.set_title(str(titles[i]), fontsize=7, pad=3)
        else:
            ax.axis("off")
    if symmetric and last is not None:
        ax = axes[0, -1] if n >= ncols else axes[0, n]
        _signed_colorbar(ax, last, a.shape[1], v, cbar_label, "right" if n >= ncols else "inside")
    return _save(_pack(fig, axes, *_cell(a, scale), suptitle=suptitle), path)
