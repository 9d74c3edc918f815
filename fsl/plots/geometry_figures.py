"""Figures of the feature-space geometry study (Yousefzadeh, arXiv 2202.04052, section 7.2)."""
from __future__ import annotations

import numpy as np
import torch

from fsl.plots.common import image_grid, plt


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


def distance_histograms(margin, hull_distance, title_suffix: str = ""):
    """Paper Figure 10: distributions of the distance to the closest flip point and to the hull."""
    m, h = _np(margin), _np(hull_distance)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, v, name, color in ((axes[0], m, "distance to closest flip point (margin)", "tab:blue"),
                               (axes[1], h, "distance to convex hull of training set", "tab:orange")):
        v = v[np.isfinite(v)]
        ax.hist(v, bins=50, color=color, alpha=0.85)
        if len(v):
            ax.axvline(np.median(v), color="k", ls="--", lw=1, label=f"median {np.median(v):.3g}")
            ax.legend(fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel("samples")
    fig.suptitle("Feature space: margins vs hull distances" + title_suffix, fontsize=10)
    fig.tight_layout()
    return fig


def margin_vs_hull(margin, hull_distance, correct=None, title_suffix: str = ""):
    """Scatter of margin against hull distance with the line d_min = d_h."""
    m, h = _np(margin), _np(hull_distance)
    ok = np.isfinite(m) & np.isfinite(h)
    fig, ax = plt.subplots(figsize=(5, 4.6), layout="constrained")
    if correct is None:
        ax.scatter(h[ok], m[ok], s=4, alpha=0.5)
    else:
        c = _np(correct).astype(bool)
        ax.scatter(h[ok & c], m[ok & c], s=4, alpha=0.5, label="correct")
        ax.scatter(h[ok & ~c], m[ok & ~c], s=6, alpha=0.8, color="tab:red", label="misclassified")
        ax.legend(fontsize=8)
    hi = float(max(m[ok].max(initial=0), h[ok].max(initial=0))) * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="margin = hull distance")
    frac = float(np.mean(h[ok] < m[ok])) if ok.any() else float("nan")
    ax.set_xlabel("distance to training hull $d_h$")
    ax.set_ylabel("margin $d_{min}$")
    ax.set_title(f"hull closer than boundary for {100 * frac:.1f}%" + title_suffix, fontsize=9)
    return fig


def closest_class_bars(closest, pred, class_names):
    """How often each class is the closest other class, per predicted class (stacked bars)."""
    c, p = _np(closest).astype(int), _np(pred).astype(int)
    n = len(class_names)
    counts = np.zeros((n, n))
    for pi, ci in zip(p, c):
        if 0 <= ci < n:
            counts[pi, ci] += 1
    fig, ax = plt.subplots(figsize=(8, 3.8), layout="constrained")  # room for the legend right of the axes
    bottom = np.zeros(n)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    for j in range(n):
        ax.bar(np.arange(n), counts[:, j], bottom=bottom, color=cmap(j % cmap.N), label=class_names[j])
        bottom += counts[:, j]
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("samples")
    ax.set_title("closest decision boundary: which class lies behind it", fontsize=9)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def ambiguity_grid(images, ambiguity, labels, preds, class_names, k: int = 16, most: bool = True):
    """Paper Figure 13: the ``k`` most (most negative d_fh) or least ambiguous images."""
    a = _np(ambiguity)
    order = np.argsort(a if most else -a, kind="stable")[:k]
    titles = [f"{class_names[int(preds[i])]}" + ("" if int(preds[i]) == int(labels[i]) else f" (true {class_names[int(labels[i])]})")
              + f"\nd_fh={a[i]:.3g}" for i in order]
    what = "most ambiguous (largest negative d_fh)" if most else "least ambiguous (largest positive d_fh)"
    return image_grid(torch.stack([images[i] for i in order]), titles, ncols=8, suptitle=what), order


def margin_table_figure(distances, class_names, sample_ids, preds):
    """Paper Table 1 as a heat map: margin of chosen samples to every class ("-": the predicted class,
    "inf": no boundary; both grey), with a colour bar of the distance."""
    d = _np(distances)
    pred = [int(p) for p in preds]
    fig, ax = plt.subplots(figsize=(2.2 + 0.8 * d.shape[1], 1.4 + 0.45 * d.shape[0]), layout="constrained")
    shown = np.where(np.isfinite(d), d, np.nan)
    for r, p in enumerate(pred):
        if 0 <= p < d.shape[1]:
            shown[r, p] = np.nan
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto")
    norm = im.norm
    for r in range(d.shape[0]):
        for c in range(d.shape[1]):
            txt = "-" if c == pred[r] else ("inf" if np.isinf(d[r, c]) else f"{d[r, c]:.3f}")
            if np.isfinite(shown[r, c]):
                cr, cg, cb, _ = cmap(norm(shown[r, c]))
                color = "white" if 0.299 * cr + 0.587 * cg + 0.114 * cb < 0.5 else "black"
            else:
                color = "black"
            ax.text(c, r, txt, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(d.shape[1]))
    ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(d.shape[0]))
    ax.set_yticklabels([f"#{s} ({class_names[p]})" for s, p in zip(sample_ids, pred)], fontsize=8)
    ax.set_title("distance to the decision boundary of each class (feature space)", fontsize=9)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cb.set_label("distance to the boundary\n(feature space)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig
