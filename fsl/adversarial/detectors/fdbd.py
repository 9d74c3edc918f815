"""fDBD, the feature-space distance to the decision boundaries (Liu and Qin, arXiv 2312.11536)."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, FitData, register_detector
from fsl.adversarial.vectors import weight_gaps
from fsl.checks import check_matrix


def fit_fdbd(train_features: torch.Tensor) -> torch.Tensor:
    """The mean training feature ``mu`` (``(f,)`` float64) that :func:`fdbd_score` centres features on."""
    x = check_matrix("fit_fdbd(train_features)", train_features)
    if x.shape[0] == 0:
        raise ValueError("fit_fdbd: no training features")
    return x.mean(dim=0)


def fdbd_score(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               train_mean: torch.Tensor) -> torch.Tensor:
    """fDBD, the feature-space distance to the decision boundaries (``(B,)`` float64, negated).

    Liu and Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024
    (arXiv 2312.11536). With logits ``z = W f + b`` and ``p = argmax z``:

        ``-(1/(n-1)) sum_{c != p} |z_p - z_c| / (||w_p - w_c|| * ||f - mu||)``

    ``|z_p - z_c| / ||w_p - w_c||`` is the distance of ``f`` to the hyperplane where classes ``p`` and
    ``c`` tie; dividing by ``||f - mu||`` (clamped at 1e-8, as pytorch-ood does) removes the feature
    scale. In-distribution samples lie far from the boundaries, so the negation gives higher = more
    adversarial.

    Args:
        features: ``(B, f)`` penultimate features.
        weight: ``(n, f)`` linear head weight ``W`` (``n >= 2`` classes, pairwise distinct rows).
        bias: ``(n,)`` head bias ``b`` or ``None`` (zero).
        train_mean: ``(f,)`` mean training feature, :func:`fit_fdbd`.
    """
    x = check_matrix("fdbd_score(features)", features)
    w = check_matrix("fdbd_score(weight)", weight).to(x.device)
    n = w.shape[0]
    b = torch.zeros(n, dtype=torch.float64, device=x.device) if bias is None else \
        torch.as_tensor(bias).detach().to(x.device, torch.float64)
    mu = torch.as_tensor(train_mean).detach().to(x.device, torch.float64)
    if n < 2 or w.shape[1] != x.shape[1] or b.shape != (n,) or mu.shape != (x.shape[1],):
        raise ValueError(f"fdbd_score: need features (B, f), weight (n >= 2, f), bias (n,), train_mean (f,); got "
                         f"{tuple(x.shape)}, {tuple(w.shape)}, {tuple(b.shape)}, {tuple(mu.shape)}")
    if not (torch.isfinite(b).all() and torch.isfinite(mu).all()):
        raise ValueError("fdbd_score: bias or train_mean contains non-finite values")
    return _fdbd(x, x @ w.T + b, weight_gaps(w), mu)


def _fdbd(x: torch.Tensor, z: torch.Tensor, gaps: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """fDBD of features ``x`` ``(B, f)`` with logits ``z`` ``(B, n)``, ``gaps = weight_gaps(W)`` and the
    training mean ``mu``; a torch function of ``x`` and ``z`` (differentiable almost everywhere)."""
    n = z.shape[1]
    top, pred = z.max(dim=1)
    g = gaps[pred].index_put((torch.arange(x.shape[0], device=x.device), pred),
                             torch.ones((), dtype=gaps.dtype, device=x.device))  # c == p: 0 / 1
    boundary = ((top[:, None] - z) / g).sum(dim=1)
    dist = (x - mu).norm(dim=1).clamp(min=1e-8)
    return -boundary / ((n - 1) * dist)


@register_detector("fdbd")
class FDBDDetector(Detector):
    """score: minus the mean normalised distance to the decision boundaries of the predicted class."""

    def fit(self, data: FitData) -> "FDBDDetector":
        self.train_mean = fit_fdbd(data.train_features)
        self.weight, self.bias = data.weight, data.bias
        return self

    def value(self, features, logits, margin, hull):
        return fdbd_score(features.to("cpu", torch.float64), self.weight, self.bias, self.train_mean)

    def torch_score(self, features, logits):
        """The score itself, on the model's logits."""
        to = dict(device=features.device, dtype=features.dtype)
        return _fdbd(features, logits, weight_gaps(self.weight, "fdbd detector").to(**to), self.train_mean.to(**to))
