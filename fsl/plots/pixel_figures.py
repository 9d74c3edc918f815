"""Figures of the pixel-space studies (docs/inversion.md; Yousefzadeh, arXiv 2202.04052 Figures 3, 5, 7-9, 12; Pattichis & Pattichis, SSIAI 2024 Figures
1-3; Jacobian preimages of latent vectors Figure 2). Matplotlib with the Agg backend; every function returns a Figure and
saves a PNG when ``path`` is given. Images are (N, C, H, W) tensors or arrays with 1 or 3
channels (values shown in [0, 1] unless ``symmetric`` asks for a signed colour map).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from fsl.plots.common import (_cell, _np, _pack, _save, _show, _signed_colorbar, _vmax, _wrap,  # noqa: F401
                               image_grid, plt)  # (image_grid re-exported)


def image_rows(rows: Sequence, row_labels: Sequence[str] | None = None, col_titles=None,
               symmetric_rows: Sequence[bool] | None = None, suptitle: str | None = None, path=None,
               scale: float = 1.4, cbar_labels: Sequence[str | None] | None = None,
               per_image_rows: Sequence[bool] | None = None):
    """Rows of images, each row (N_i, C, H, W); used for the preimage grid (Jacobian preimages of latent vectors Fig. 2),
    flip-point / hull / perimeter figures (reference, inversion, difference) and Pattichis & Pattichis, SSIAI 2024 Fig. 1.

    A ``symmetric`` row (signed values) shares one colour scale, shown by a colour bar at its right end,
    labelled ``cbar_labels[row]`` (default: the row label); a symmetric row with ``per_image_rows[row]``
    shows every image divided by its own largest |value| instead (colour bar -1..1). Row labels longer than
    an image is high are wrapped."""
    arrs = [_np(r) for r in rows]
    ncols = max(a.shape[0] for a in arrs)
    cell_w, cell_h = _cell(arrs[0], scale)
    fig, axes = plt.subplots(len(arrs), ncols, squeeze=False)
    for ri, a in enumerate(arrs):
        sym = bool(symmetric_rows[ri]) if symmetric_rows is not None and ri < len(symmetric_rows) else False
        each = sym and per_image_rows is not None and ri < len(per_image_rows) and bool(per_image_rows[ri])
        if each:
            a = a / np.array([_vmax(im) for im in a])[:, None, None, None]
        v = (1.0 if each else _vmax(a)) if sym else None
        last = None
        for ci in range(ncols):
            ax = axes[ri, ci]
            if ci < a.shape[0]:
                last = _show(ax, a[ci], sym, v)
                if ri == 0 and col_titles is not None and ci < len(col_titles):
                    ax.set_title(str(col_titles[ci]), fontsize=7, pad=3)
            else:
                ax.axis("off")
        label = str(row_labels[ri]) if row_labels is not None and ri < len(row_labels) else None
        if label is not None:
            axes[ri, 0].set_ylabel(_wrap(fig, label, 7, 0.95 * cell_h), fontsize=7)
        if sym and last is not None:
            cl = cbar_labels[ri] if cbar_labels is not None and ri < len(cbar_labels) else None
            cl = cl or (label if label else "value (signed)")
            if each:
                cl = f"{cl} / max |value| of each image"
            full = a.shape[0] >= ncols
            _signed_colorbar(axes[ri, -1] if full else axes[ri, a.shape[0]], last, a.shape[1], v,
                             _wrap(fig, cl, 6, 0.95 * cell_h), "right" if full else "inside")
    return _save(_pack(fig, axes, cell_w, cell_h, suptitle=suptitle), path)


def inversion_figure(references, inversions, result=None, targets_label: str = "target",
                     path=None, max_items: int = 8):
    """Reference / inversion / difference columns for flip-point (Fig. 3), hull-projection (Fig. 5)
    or perimeter (Fig. 7) images; titles carry residual, distance and success when ``result``
    (an InversionResult) is given. The difference row shares one signed colour scale (colour bar at its
    right end)."""
    r = _np(references)[:max_items]
    x = _np(inversions)[:max_items]
    titles = None
    if result is not None:
        res = result.feature_residual.detach().cpu().numpy()
        dist = result.distance.detach().cpu().numpy()
        ok = result.success.detach().cpu().numpy()
        titles = [f"res {res[i]:.1e}\nd {dist[i]:.2f}{'' if ok[i] else ' MISS'}" for i in range(len(x))]
    fig, axes = plt.subplots(3, len(x), squeeze=False)
    diff = x - r[: len(x)]
    v = _vmax(diff)
    last = None
    for i in range(len(x)):
        _show(axes[0, i], r[i])
        _show(axes[1, i], x[i])
        last = _show(axes[2, i], diff[i], symmetric=True, vrange=v)
        if titles:
            axes[1, i].set_title(titles[i], fontsize=6, pad=3)
    axes[0, 0].set_ylabel("reference", fontsize=7)
    axes[1, 0].set_ylabel(f"x -> {targets_label}", fontsize=7)
    axes[2, 0].set_ylabel("x - reference", fontsize=7)
    if last is not None:
        _signed_colorbar(axes[2, -1], last, x.shape[1], v, "x - reference")
    return _save(_pack(fig, axes, *_cell(x, 1.4)), path)


def morph_strip(morph_result, path=None):
    """Morphing strip (paper Figure 8): images labelled with their radius and distance reached."""
    m = morph_result
    titles = [f"r={float(r):.2f}\n{float(d):.2f}{'' if bool(s) else ' MISS'}"
              for r, d, s in zip(m.radii, m.feature_distance, m.success)]
    return image_grid(m.images, titles, ncols=len(titles), path=path,
                      suptitle="morphing a -> b: radius around N(b) / distance reached")


def path_plot(paths: dict, a, b, path=None, labels=("a", "b"), title: str | None = None):
    """Feature-space paths drawn with the two-point equidistant projection (Figures 9, 12).

    Args:
        paths: {name: (T, f) feature points}; a, b: (f,) anchors.
    """
    from fsl.inversion.paths import two_point_equidistant

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    P_ab = two_point_equidistant(torch.stack([torch.as_tensor(a), torch.as_tensor(b)]).double(),
                                 torch.as_tensor(a), torch.as_tensor(b)).numpy()
    ax.plot(P_ab[:, 0], P_ab[:, 1], "k--", lw=1, label="direct line")
    for name, pts in paths.items():
        P = two_point_equidistant(torch.as_tensor(pts), torch.as_tensor(a), torch.as_tensor(b)).numpy()
        ax.plot(P[:, 0], P[:, 1], "-o", ms=2.5, lw=1.2, label=name)
    ax.scatter(P_ab[:, 0], P_ab[:, 1], c="k", zorder=5)
    ax.annotate(labels[0], P_ab[0], textcoords="offset points", xytext=(-8, 6))
    ax.annotate(labels[1], P_ab[1], textcoords="offset points", xytext=(4, 6))
    ax.set_xlabel("along a -> b (distances to a and b exact)")
    ax.set_ylabel("off the line")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def preimage_grid(walk, sample_index: int = 0, every: int = 1, path=None, n_samples: int | None = None):
    """Jacobian preimages of latent vectors: Figure 2: one row per starting image, the level-set walk along the row.

    Args:
        walk: a LevelSetWalk (images (T + 1, B, C, H, W)).
    """
    imgs = walk.images[::every]
    B = imgs.shape[1]
    rows = [imgs[:, b] for b in range(B if n_samples is None else min(B, n_samples))]
    res = walk.residual[::every]
    col_titles = [f"|dx|={float(d):.2f}" for d in walk.distance[::every, sample_index]]
    labels = [f"max res {float(res[:, b].max()):.1e}" for b in range(len(rows))]
    return image_rows(rows, labels, col_titles, suptitle="inputs with the same feature vector", path=path)


def signal_figure(signal_images, class_residuals=None, path=None, max_items: int = 10):
    """Pattichis & Pattichis (SSIAI 2024) Figures 1-2: weights (top), signal images sigma_i v_i (middle), class residual
    images (bottom, when given)."""
    si = signal_images
    k = min(max_items, si.images.shape[0])
    rows = [si.weights[:k], si.images[:k]]
    labels = ["weights", f"sigma_i v_i (cond {si.condition:.2f})"]
    sym = [True, True]
    if class_residuals is not None:
        rows.append(class_residuals.residual_images[:k])
        labels.append("class residuals")
        sym.append(True)
    titles = [f"s={float(s):.2f}" for s in si.singular_values[:k]]
    cbar = ["weight", "sigma_i v_i", "class residual"][: len(rows)]
    each = [False, True, False][: len(rows)]  # sigma_i v_i spans orders of magnitude: each image on its own scale
    return image_rows(rows, labels, titles, sym, suptitle=f"signal spaces of {si.layer}", path=path, cbar_labels=cbar,
                      per_image_rows=each)


def selu_inversion_figure(true_images, inversion, path=None, max_items: int = 8):
    """True image, its row-space component and the layer-wise SELU reconstruction."""
    n = min(max_items, true_images.shape[0])
    shape = true_images.shape[1:]
    rows = [true_images[:n]]
    labels = ["input"]
    if inversion.images is not None:
        rows.append(inversion.images[:n].reshape(n, *shape))
        labels.append("SELU inversion")
    if inversion.row_component is not None:
        rows.append(inversion.row_component[:n].reshape(n, *shape))
        labels.append("row-space part (normalised)")
    sym = [False, False, True][: len(rows)]
    cbar = [None, None, "value (normalised pixels)"][: len(rows)]
    titles = None
    if inversion.image_error is not None:
        titles = [f"err {float(e):.1e}" for e in inversion.image_error[:n]]
    return image_rows(rows, labels, titles, sym, path=path, cbar_labels=cbar)


def ideal_inputs_figure(ideal, path=None):
    """Pattichis & Pattichis (SSIAI 2024) Figure 3: per class, each init before and after refinement, with distances."""
    from fsl.spaces.ideal import INITS

    rows, labels = [], []
    for k in INITS:
        rows += [ideal.initial[k], ideal.refined[k]]
        labels += [f"{k}", f"{k} refined"]
    n = ideal.ideal.shape[0]
    titles = [f"class {c}" for c in range(n)]
    sup = "ideal-output inputs (distance before -> after)"
    fig = image_rows(rows, labels, titles, path=None, suptitle=sup)
    ncols = max(int(r.shape[0]) for r in rows)
    grid = np.array(fig.axes[: len(rows) * ncols], dtype=object).reshape(len(rows), ncols)
    for ri, k in enumerate(INITS):
        for c in range(n):
            ax = grid[2 * ri + 1, c]
            ax.set_xlabel(f"{float(ideal.distance_before[k][c]):.1f}->{float(ideal.distance_after[k][c]):.1f}",
                          fontsize=6, labelpad=2)
    _pack(fig, grid, *_cell(_np(rows[0]), 1.4), suptitle=sup)  # again: room for the distances under the rows
    return _save(fig, path)


def step_response_figure(response, path=None):
    """Log-log plot of the output change along null-space and random directions (Jacobian preimages of latent vectors)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    h = response.steps.numpy()
    ax.loglog(h, response.actual.median(dim=1).values.mean(0).cpu().numpy(), "o-",
              label=f"null space (slope {float(response.slope.median()):.2f})")
    ax.loglog(h, response.random_actual.median(dim=1).values.mean(0).cpu().numpy(), "s-",
              label=f"random (slope {float(response.random_slope.median()):.2f})")
    ax.set_xlabel("step ||dx||")
    ax.set_ylabel("||N(x0+dx) - N(x0)||")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["image_grid", "image_rows", "inversion_figure", "morph_strip", "path_plot", "preimage_grid",
           "signal_figure", "selu_inversion_figure", "ideal_inputs_figure", "step_response_figure"]
