"""Adversarial detection scores and metrics (DESIGN B2-B3; seed 000 section 7 and appendix B).

Every score follows one convention: **higher = more likely adversarial**.

=================  =======================================  =========================================
score              definition                               why
=================  =======================================  =========================================
``margin``         ``-d_min``                               adversarials sit next to a boundary
``ambiguity``      ``-(d_min - d_h) = d_h - d_min``         near a boundary *and* far from the hull
``msp``            ``-max softmax(logits)``                 baseline: low confidence
``mahalanobis``    ``min_c sqrt((y-mu_c)^T S^-1 (y-mu_c))`` baseline: far from every class Gaussian
=================  =======================================  =========================================

``d_min`` is the feature-space margin (distance to the closest flip point, ``fsl.geometry.flip_margins``),
``d_h`` the distance to the convex hull of the training features (``fsl.geometry.hull_distances``).

Metrics (:func:`detection_metrics`): clean samples are the negatives (label 0), adversarial
samples the positives (label 1).

* ``auroc``: area under torchmetrics' exact binary ROC curve (no threshold binning; ties count one
  half), evaluated in float64 and cross-checked against torchmetrics' float32 ``binary_auroc``.
* ``tpr_at_5fpr``: a sample is flagged when ``score > tau``. ``tau`` is taken on the clean scores:
  with ``k`` the largest integer with ``k / n_clean <= 0.05``, ``tau`` is the ``(k+1)``-th largest
  clean score, so at most ``k`` clean samples (FPR <= 5%) are flagged, and ``tau`` is the lowest
  such threshold. ``tpr_at_5fpr = #{adv > tau} / n_adv``. This equals the largest TPR over
  torchmetrics' exact ROC curve with FPR <= 5% (checked at run time).
* torchmetrics quirk: binary AUROC/ROC apply a sigmoid to predictions outside [0, 1]; in float32 a
  sigmoid saturates (``sigmoid(-40) == sigmoid(-50)``), which creates ties and changes the AUROC.
  Scores are therefore replaced by their dense ranks scaled to [0, 1] before they reach
  torchmetrics; ranks preserve order and ties, so AUROC and ROC are unchanged and exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

SCORES = ("margin", "ambiguity", "msp", "mahalanobis")


# --------------------------------------------------------------------------------------------- scores
def margin_score(margin: torch.Tensor) -> torch.Tensor:
    """``-margin`` (``(B,)``): a small distance to the closest decision boundary is suspicious."""
    return -torch.as_tensor(margin)


def ambiguity_score(margin: torch.Tensor, hull_distance: torch.Tensor) -> torch.Tensor:
    """``-(margin - hull_distance)`` (``(B,)``), i.e. minus the paper's ambiguity ``d_fh`` (eq. 26)."""
    return torch.as_tensor(hull_distance) - torch.as_tensor(margin)


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """``-max_c softmax(logits)_c`` (``(B,)``) from logits ``(B, n)``, computed in float64."""
    return -torch.softmax(logits.double(), dim=1).amax(dim=1)


@dataclass
class Mahalanobis:
    """Class-conditional Gaussians with a shared covariance, fitted on training features.

    Attributes:
        means: ``(n, f)`` float64 class means (rows of absent classes are NaN).
        covariance: ``(f, f)`` float64 regularised shared covariance.
        chol: ``(f, f)`` lower Cholesky factor of ``covariance``.
        present: ``(n,)`` bool, the class had at least one training sample.
        reg_added: the value added to the covariance diagonal.
    """

    means: torch.Tensor
    covariance: torch.Tensor
    chol: torch.Tensor
    present: torch.Tensor
    reg_added: float

    def to(self, device: torch.device | str) -> "Mahalanobis":
        return Mahalanobis(self.means.to(device), self.covariance.to(device), self.chol.to(device),
                           self.present.to(device), self.reg_added)

    def _whiten(self, v: torch.Tensor) -> torch.Tensor:  # (B, f) -> L^{-1} v, row-wise
        return torch.linalg.solve_triangular(self.chol, v.T, upper=False).T

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` Mahalanobis distances to every class mean (``inf`` for absent classes)."""
        x = torch.as_tensor(features).to(self.means.device, torch.float64)
        zx = self._whiten(x)
        zm = self._whiten(torch.nan_to_num(self.means))
        d = torch.cdist(zx, zm, compute_mode="donot_use_mm_for_euclid_dist")
        return d.masked_fill(~self.present[None, :], float("inf"))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` ``min_c`` distance: far from every class = suspicious (higher = adversarial)."""
        return self.distances(features).amin(dim=1)


def fit_mahalanobis(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int | None = None,
                    reg: float = 1e-6) -> Mahalanobis:
    """Fit class means and the shared ("tied") covariance of Lee et al. (2018) on training features.

    ``S = 1/N sum_i (y_i - mu_{c_i})(y_i - mu_{c_i})^T`` (maximum likelihood, within-class scatter),
    then ``S + reg * (trace(S) / f) * I`` (``reg`` times the mean variance; ``reg`` absolute when the
    trace is 0). The regularisation keeps ``S`` invertible when feature dimensions are dead
    (ReLU units that never fire) or when ``N <= f``; with ``reg=1e-6`` it changes distances of
    well-conditioned features by about 1e-6 relative. Everything in float64.
    """
    x = torch.as_tensor(train_features).to(torch.float64)
    y = torch.as_tensor(train_labels).to(x.device).long()
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_mahalanobis: need features (N, f) and labels (N,), got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("fit_mahalanobis: no training features")
    n = int(num_classes) if num_classes is not None else int(y.max()) + 1
    f = x.shape[1]
    counts = torch.bincount(y, minlength=n).to(torch.float64)
    sums = torch.zeros(n, f, dtype=torch.float64, device=x.device).index_add_(0, y, x)
    present = counts > 0
    means = sums / counts[:, None]  # NaN rows for absent classes
    centered = x - means[y]
    cov = centered.T @ centered / x.shape[0]
    tr = float(torch.diagonal(cov).sum())
    added = reg * (tr / f) if tr > 0 else reg
    cov_reg = cov + added * torch.eye(f, dtype=torch.float64, device=x.device)
    cov_reg = 0.5 * (cov_reg + cov_reg.T)
    chol = torch.linalg.cholesky(cov_reg)
    return Mahalanobis(means=means, covariance=cov_reg, chol=chol, present=present, reg_added=float(added))


def mahalanobis_score(features: torch.Tensor, model: Mahalanobis) -> torch.Tensor:
    """``(B,)`` ``min_c`` Mahalanobis distance of ``features`` ``(B, f)`` (higher = adversarial)."""
    return model.score(features)


# -------------------------------------------------------------------------------------------- metrics
def _as_1d_f64(t) -> torch.Tensor:
    t = torch.as_tensor(t).detach().to("cpu", torch.float64).flatten()
    return t


def _dense_rank01(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order- and tie-preserving map of scores to [0, 1]; also the sorted unique values."""
    uniq, inv = torch.unique(scores, sorted=True, return_inverse=True)
    m = uniq.numel()
    ranks = inv.to(torch.float64) / (m - 1) if m > 1 else torch.zeros_like(scores)
    return ranks, uniq


def _check(scores_clean, scores_adv) -> tuple[torch.Tensor, torch.Tensor]:
    c, a = _as_1d_f64(scores_clean), _as_1d_f64(scores_adv)
    if torch.isnan(c).any() or torch.isnan(a).any():
        raise ValueError(f"detection scores contain NaN ({int(torch.isnan(c).sum())} clean, "
                         f"{int(torch.isnan(a).sum())} adversarial); filter them first")
    return c, a


def _max_false_positives(n_clean: int, fpr: float) -> int:
    """Largest ``k`` with ``k / n_clean <= fpr`` in floating point (as torchmetrics compares)."""
    k = int(math.floor(fpr * n_clean))
    while k + 1 <= n_clean and (k + 1) / n_clean <= fpr:
        k += 1
    while k > 0 and k / n_clean > fpr:
        k -= 1
    return max(k, 0)


def clean_threshold(scores_clean, fpr: float = 0.05) -> float:
    """The lowest ``tau`` such that flagging ``score > tau`` flags at most ``fpr`` of the clean scores.

    ``tau`` = the ``(k+1)``-th largest clean score, ``k = max{k : k / n_clean <= fpr}``
    (``-inf`` when ``k = n_clean``).
    """
    c = _as_1d_f64(scores_clean)
    if c.numel() == 0:
        return float("nan")
    k = _max_false_positives(c.numel(), fpr)
    if k >= c.numel():
        return float("-inf")
    return float(torch.sort(c, descending=True).values[k])


def roc_curve(scores_clean, scores_adv) -> dict[str, np.ndarray]:
    """Exact ROC (torchmetrics ``binary_roc``) of adversarial (positive) vs clean (negative).

    Returns numpy arrays ``fpr``, ``tpr`` and ``thresholds`` (score values, descending; the point
    ``i`` flags ``score >= thresholds[i]``; the first threshold is ``+inf``, the curve's (0, 0)).
    torchmetrics returns the rates in float32; they are turned back into the exact integer counts
    and divided again in float64, so ``fpr <= 0.05`` comparisons are exact.
    """
    from torchmetrics.functional.classification import binary_roc

    c, a = _check(scores_clean, scores_adv)
    if c.numel() == 0 or a.numel() == 0:
        nan = np.array([np.nan])
        return {"fpr": nan, "tpr": nan, "thresholds": nan}
    ranks, uniq = _dense_rank01(torch.cat([c, a]))
    target = torch.cat([torch.zeros(c.numel(), dtype=torch.long), torch.ones(a.numel(), dtype=torch.long)])
    fpr, tpr, thr = binary_roc(ranks, target)
    fps = torch.round(fpr.double() * c.numel())
    tps = torch.round(tpr.double() * a.numel())
    m = uniq.numel()
    idx = torch.round(thr[1:].to(torch.float64) * max(m - 1, 0)).long().clamp(0, m - 1)
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), uniq[idx]])
    return {"fpr": (fps / c.numel()).numpy(), "tpr": (tps / a.numel()).numpy(), "thresholds": thresholds.numpy(),
            "n_false_pos": fps.long().numpy(), "n_true_pos": tps.long().numpy()}


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def detection_metrics(scores_clean, scores_adv, fpr: float = 0.05) -> dict[str, float]:
    """AUROC and TPR at ``fpr`` of adversarial (positive) vs clean (negative) scores.

    Args:
        scores_clean: ``(Nc,)`` scores of clean samples (higher = more adversarial).
        scores_adv: ``(Na,)`` scores of adversarial samples.
        fpr: the false-positive budget (default 5%).

    Returns a dict of floats: ``auroc``, ``tpr_at_5fpr`` (the key keeps this name for any ``fpr``),
    ``threshold`` (``tau``, flag ``score > tau``), ``fpr_at_threshold`` (achieved clean rate),
    ``n_clean``, ``n_adv``. NaN metrics when either set is empty; NaN scores raise.
    """
    from torchmetrics.functional.classification import binary_auroc

    c, a = _check(scores_clean, scores_adv)
    out = {"n_clean": float(c.numel()), "n_adv": float(a.numel())}
    if c.numel() == 0 or a.numel() == 0:
        return {**out, "auroc": float("nan"), "tpr_at_5fpr": float("nan"), "threshold": float("nan"),
                "fpr_at_threshold": float("nan")}
    roc = roc_curve(c, a)
    # AUROC = area under the exact (float64) ROC; torchmetrics' binary_auroc computes the same area
    # in float32, used as a cross-check
    auroc = _trapezoid(roc["tpr"], roc["fpr"])
    ranks, _ = _dense_rank01(torch.cat([c, a]))
    target = torch.cat([torch.zeros(c.numel(), dtype=torch.long), torch.ones(a.numel(), dtype=torch.long)])
    auroc_tm = float(binary_auroc(ranks, target))
    k = _max_false_positives(c.numel(), fpr)
    tau = clean_threshold(c, fpr)
    tpr = float((a > tau).double().mean())
    achieved = float((c > tau).double().mean())
    # cross-check with the ROC curve: best TPR with at most k false positives
    ok = roc["n_false_pos"] <= k
    tpr_roc = float(roc["tpr"][ok].max())
    if abs(tpr_roc - tpr) > 1e-12 or abs(auroc - auroc_tm) > 1e-5:  # pragma: no cover - bug guard
        raise RuntimeError(f"detection_metrics: inconsistent results (TPR {tpr} vs ROC {tpr_roc}; "
                           f"AUROC {auroc} vs torchmetrics {auroc_tm})")
    return {**out, "auroc": auroc, "tpr_at_5fpr": tpr, "threshold": tau, "fpr_at_threshold": achieved}


def train_margin_rule(adv_margin, train_margin, clean_margin=None) -> dict[str, float]:
    """The paper's rule: flag a sample whose margin is below the smallest clean training margin.

    Returns ``caught`` (fraction of ``adv_margin`` strictly below ``min(train_margin)``),
    ``threshold`` (that minimum) and, when ``clean_margin`` is given, ``false_positive`` (fraction
    of clean test margins below it: the rule's price).
    """
    adv = _as_1d_f64(adv_margin)
    tr = _as_1d_f64(train_margin)
    tr = tr[~torch.isnan(tr)]
    thr = float(tr.min()) if tr.numel() else float("nan")
    out = {"caught": float((adv < thr).double().mean()) if adv.numel() else float("nan"), "threshold": thr}
    if clean_margin is not None:
        cl = _as_1d_f64(clean_margin)
        out["false_positive"] = float((cl < thr).double().mean()) if cl.numel() else float("nan")
    return out


# -------------------------------------------------------------------------------------------- summary
def _mean_median(prefix: str, v: torch.Tensor | None) -> dict[str, float]:
    if v is None:
        return {}
    v = _as_1d_f64(v)
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return {f"{prefix}/mean": float("nan"), f"{prefix}/median": float("nan")}
    # numpy's median averages the two middle values (torch.median returns the lower one)
    return {f"{prefix}/mean": float(v.mean()), f"{prefix}/median": float(np.median(v.numpy()))}


def feature_space_summary(adv_margin, adv_hull, clean_margin=None, clean_hull=None, success=None,
                          l2=None, linf=None) -> dict[str, float]:
    """Feature-space statistics of successful adversarial examples (DESIGN B2), as Python floats.

    Args:
        adv_margin, adv_hull: ``(S,)`` margin ``d_min`` and hull distance ``d_h`` of the successful
            adversarial examples.
        clean_margin, clean_hull: ``(S,)`` the same of their clean originals (paired, same order).
        success: ``(N,)`` bool over all attacked samples (gives ``success_rate``).
        l2, linf: ``(S,)`` perturbation norms of the successful examples.

    Keys (no prefix; callers add ``adv/<attack>/``): ``n_success``, ``frac_margin_lt_hull``
    (``d_min < d_h``), ``margin/*``, ``hull/*``, ``ambiguity/*`` (``d_min - d_h``) with ``*`` =
    ``mean``/``median``; with clean values: ``frac_hull_shrank`` (``d_h(adv) < d_h(clean)``),
    ``clean_margin/*``, ``clean_hull/*``; with ``success``: ``success_rate``, ``n_attacked``;
    with norms: ``l2/*``, ``linf/*``. Fractions are NaN when there are no successful examples.
    """
    m = _as_1d_f64(adv_margin)
    h = _as_1d_f64(adv_hull)
    if m.shape != h.shape:
        raise ValueError(f"feature_space_summary: adv_margin {tuple(m.shape)} vs adv_hull {tuple(h.shape)}")
    s = m.numel()
    nan = float("nan")
    out: dict[str, float] = {"n_success": float(s)}
    out["frac_margin_lt_hull"] = float((m < h).double().mean()) if s else nan
    out.update(_mean_median("margin", m))
    out.update(_mean_median("hull", h))
    out.update(_mean_median("ambiguity", m - h))
    if clean_hull is not None:
        ch = _as_1d_f64(clean_hull)
        if ch.shape != h.shape:
            raise ValueError("feature_space_summary: clean_hull must pair with adv_hull")
        out["frac_hull_shrank"] = float((h < ch).double().mean()) if s else nan
        out.update(_mean_median("clean_hull", ch))
    if clean_margin is not None:
        cm = _as_1d_f64(clean_margin)
        if cm.shape != m.shape:
            raise ValueError("feature_space_summary: clean_margin must pair with adv_margin")
        out.update(_mean_median("clean_margin", cm))
    if success is not None:
        sc = torch.as_tensor(success).detach().cpu().bool().flatten()
        out["n_attacked"] = float(sc.numel())
        out["success_rate"] = float(sc.double().mean()) if sc.numel() else nan
    out.update(_mean_median("l2", l2))
    out.update(_mean_median("linf", linf))
    return out


def detection_table(scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]], fpr: float = 0.05
                    ) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """Metrics for several scores at once: ``{"auroc/<name>", "tpr5/<name>", "threshold/<name>"}``
    and the ROC curves ``{name: {"fpr", "tpr", "thresholds", "auroc"}}``.

    ``scores`` maps a score name to ``(clean, adversarial)`` score tensors.
    """
    flat: dict[str, float] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, (clean, adv) in scores.items():
        met = detection_metrics(clean, adv, fpr)
        flat[f"auroc/{name}"] = met["auroc"]
        flat[f"tpr5/{name}"] = met["tpr_at_5fpr"]
        flat[f"threshold/{name}"] = met["threshold"]
        curves[name] = {**roc_curve(clean, adv), "auroc": np.asarray(met["auroc"])}
    return flat, curves


__all__: Sequence[str] = ["SCORES", "margin_score", "ambiguity_score", "msp_score", "Mahalanobis",
                          "fit_mahalanobis", "mahalanobis_score", "detection_metrics", "roc_curve",
                          "clean_threshold", "train_margin_rule", "feature_space_summary", "detection_table"]
