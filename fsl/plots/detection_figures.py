"""Figures of adversarial detection: ROC curves and clean-vs-adversarial score histograms.

Matplotlib with the Agg backend (no display needed). Functions return ``Figure`` objects; pass
``path`` to also save a PNG (written to a temporary file and renamed, so a crash never leaves a
half-written image).
"""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from fsl.plots.common import save_figure  # noqa: E402,F401  (re-exported)

LABELS = {"margin": "margin (-d_min)", "ambiguity": "ambiguity (d_h - d_min)", "msp": "max softmax (-MSP)",
          "energy": "energy", "mahalanobis": "Mahalanobis", "knn": "KNN (k-th distance)", "fdbd": "fDBD"}


def roc_figure(curves: Mapping[str, Mapping[str, np.ndarray]], title: str = "Adversarial detection",
               path: str | os.PathLike | None = None, fpr_mark: float = 0.05) -> Figure:
    """ROC curves of several scores on one axis, AUROC in the legend (below the axes, so that it hides no
    curve). The axes reach a little past [0, 1] so that curves on the frame (AUROC 0 or 1) stay visible.

    ``curves``: ``{score: {"fpr": (K,), "tpr": (K,), "auroc": float}}`` as returned by
    :func:`fsl.adversarial.metrics.detection_table` / ``evaluate_attack(...).roc``.
    """
    n = max(len(curves), 1)
    ncol = 1 if n <= 4 else 2
    fig, ax = plt.subplots(figsize=(5.0, 4.5 + 0.2 * ((n + ncol - 1) // ncol)), layout="constrained")
    for name, c in curves.items():
        fpr, tpr = np.asarray(c["fpr"], float), np.asarray(c["tpr"], float)
        auroc = float(np.asarray(c.get("auroc", np.nan)))
        if fpr.size == 0 or np.isnan(fpr).all():
            ax.plot([], [], label=f"{LABELS.get(name, name)}: n/a")
            continue
        ax.step(fpr, tpr, where="post", lw=1.4, label=f"{LABELS.get(name, name)}: AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--", zorder=0)
    if fpr_mark:
        ax.axvline(fpr_mark, color="0.5", lw=0.8, ls=":", zorder=0)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="false positive rate (clean flagged)",
           ylabel="true positive rate (adversarial caught)")
    ax.set_title(title, fontsize=10)
    below = ax.transAxes + ScaledTranslation(0, -0.5, fig.dpi_scale_trans)  # under the x label, whatever the size
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=ncol, fontsize=7.5,
              frameon=False)
    if path is not None:
        save_figure(fig, path, close=False)
    return fig


def score_histograms(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "",
                     path: str | os.PathLike | None = None, bins: int = 40) -> Figure:
    """One panel per score: histograms of clean and adversarial scores on shared bins.

    ``scores``: ``{score: (clean_scores, adversarial_scores)}`` (higher = more adversarial).
    Non-finite values are dropped (their count is shown in the panel title).
    """
    names = list(scores)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.6 * max(len(names), 1), 3.2), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        clean, adv = (np.asarray(getattr(v, "cpu", lambda: v)(), dtype=float).ravel() for v in scores[name])
        dropped = int((~np.isfinite(clean)).sum() + (~np.isfinite(adv)).sum())
        clean, adv = clean[np.isfinite(clean)], adv[np.isfinite(adv)]
        both = np.concatenate([clean, adv])
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
            ax.hist(clean, bins=edges, alpha=0.6, label=f"clean ({clean.size})", density=True)
            ax.hist(adv, bins=edges, alpha=0.6, label=f"adversarial ({adv.size})", density=True)
        t = LABELS.get(name, name) + (f"\n[{dropped} non-finite dropped]" if dropped else "")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("score (higher = more adversarial)")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, close=False)
    return fig


def evaluation_scores(per_sample: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{score: (clean, adversarial)}`` from ``evaluate_attack(...).per_sample`` (successful only),
    with the sign convention of :mod:`fsl.adversarial.detectors`."""
    import torch

    from fsl.adversarial.evaluate import detector_scores

    ps = {k: torch.as_tensor(np.asarray(v.cpu() if hasattr(v, "cpu") else v)) for k, v in per_sample.items()}
    s = ps["success"].bool()
    clean, adv = detector_scores(ps, "clean"), detector_scores(ps, "adv")
    return {name: (clean[name].numpy(), adv[name][s].numpy()) for name in clean}
