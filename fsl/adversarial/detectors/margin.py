"""The paper's detector: a small feature-space margin ``d_min`` is suspicious (Yousefzadeh,
arXiv 2202.04052, section 7.2; the margin is ``fsl.geometry.flip_margins``), scored by the ranking
metrics of :mod:`fsl.adversarial.metrics` and by the paper's own rule, :func:`train_margin_rule`."""
from __future__ import annotations

import math

import torch

from fsl.adversarial.detectors.registry import Detector, FitData, register_detector
from fsl.adversarial.vectors import region_distance, weight_gaps


def margin_score(margin: torch.Tensor) -> torch.Tensor:
    """``-margin`` (``(B,)``): a small distance to the closest decision boundary is suspicious."""
    return -torch.as_tensor(margin)


@register_detector("margin")
class MarginDetector(Detector):
    """score ``-d_min``: adversarial examples sit next to a decision boundary."""

    negate = True

    def fit(self, data: FitData) -> "MarginDetector":
        self.pair_norms = weight_gaps(data.weight, "margin detector")
        return self

    def value(self, features, logits, margin, hull):
        return margin

    def torch_score(self, features, logits):
        """Surrogate ``-min_{k != p} (z_p - z_k) / ||w_p - w_k||`` (``p`` the predicted class): the
        closed-form lower bound of ``d_min`` that ignores the feature domain (equal to it wherever the
        closest flip point lies inside the domain), the quantity ``margin_pgd`` maximises."""
        return -region_distance(logits, self.pair_norms, logits.detach().argmax(dim=1))


def _as_1d_f64(t) -> torch.Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float64).flatten()


def train_margin_rule(adv_margin, train_margin, clean_margin=None) -> dict[str, float]:
    """The paper's rule (Yousefzadeh, arXiv 2202.04052, section 7.2): flag a sample whose margin is
    below the smallest clean training margin.

    Returns ``caught`` (fraction of ``adv_margin`` strictly below ``min(train_margin)``),
    ``threshold`` (that minimum) and, when ``clean_margin`` is given, ``false_positive`` (fraction
    of clean test margins below it: the rule's price).

    NaN training margins are ignored; with no (non-NaN) training margin there is no threshold and
    every fraction is NaN. NaN in ``adv_margin`` or ``clean_margin`` raises ValueError (a NaN margin
    is neither below nor above the threshold).
    """
    adv = _as_1d_f64(adv_margin)
    tr = _as_1d_f64(train_margin)
    tr = tr[~torch.isnan(tr)]
    thr = float(tr.min()) if tr.numel() else float("nan")

    def frac_below(name: str, v: torch.Tensor) -> float:
        if bool(torch.isnan(v).any()):
            raise ValueError(f"train_margin_rule: {int(torch.isnan(v).sum())} NaN values in {name}; filter them "
                             f"first (margins from fsl.geometry.flip_margins are never NaN)")
        return float((v < thr).double().mean()) if v.numel() and not math.isnan(thr) else float("nan")

    out = {"caught": frac_below("adv_margin", adv), "threshold": thr}
    if clean_margin is not None:
        out["false_positive"] = frac_below("clean_margin", _as_1d_f64(clean_margin))
    return out
