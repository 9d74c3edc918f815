"""Mahalanobis distance to class Gaussians with a tied covariance (Lee, Lee, Lee and Shin,
arXiv 1807.03888)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fsl.adversarial.detectors.registry import Detector, FitData, register_detector
from fsl.checks import check_labels, check_matrix


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
        """``(B, n)`` Mahalanobis distances to every class mean (``inf`` for absent classes).

        ``features``: finite ``(B, f)`` with the fitted ``f`` (ValueError otherwise)."""
        x = check_matrix("Mahalanobis.distances(features)", features).to(self.means.device)
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"Mahalanobis.distances: features have {x.shape[1]} dims, the fitted Gaussians "
                             f"{self.means.shape[1]}")
        zx = self._whiten(x)
        zm = self._whiten(torch.nan_to_num(self.means))
        d = torch.cdist(zx, zm, compute_mode="donot_use_mm_for_euclid_dist")
        return d.masked_fill(~self.present[None, :], float("inf"))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` ``min_c`` distance: far from every class = suspicious (higher = adversarial)."""
        return self.distances(features).amin(dim=1)

    def torch_distances(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`distances` as a differentiable torch function of ``features`` ``(B, f)`` (no checks;
        in their dtype and on their device)."""
        chol = self.chol.to(features.device, features.dtype)
        means = torch.nan_to_num(self.means).to(features.device, features.dtype)
        zx = torch.linalg.solve_triangular(chol, features.T, upper=False).T
        zm = torch.linalg.solve_triangular(chol, means.T, upper=False).T
        d = (zx[:, None, :] - zm[None, :, :]).pow(2).sum(dim=2).clamp_min(1e-30).sqrt()
        return d.masked_fill(~self.present.to(features.device)[None, :], float("inf"))


def fit_mahalanobis(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int | None = None,
                    reg: float = 1e-6) -> Mahalanobis:
    """Fit class means and the shared ("tied") covariance of Lee et al. (2018) on training features.

    ``S = 1/N sum_i (y_i - mu_{c_i})(y_i - mu_{c_i})^T`` (maximum likelihood, within-class scatter),
    then ``S + reg * (trace(S) / f) * I`` (``reg`` times the mean variance; ``reg`` absolute when the
    trace is 0). The regularisation keeps ``S`` invertible when feature dimensions are dead
    (ReLU units that never fire) or when ``N <= f``; with ``reg=1e-6`` it changes distances of
    well-conditioned features by about 1e-6 relative. Everything in float64.

    Raises ValueError for no, non-finite or non-2-D features and for labels that are not one class
    in ``[0, num_classes)`` per feature; TypeError for non-integer labels.
    """
    x = torch.as_tensor(train_features).to(torch.float64)
    y0 = torch.as_tensor(train_labels)
    if x.dim() != 2 or y0.shape != (x.shape[0],):
        raise ValueError(f"fit_mahalanobis: need features (N, f) and labels (N,), got {tuple(x.shape)}, "
                         f"{tuple(y0.shape)}")
    if x.shape[0] == 0:
        raise ValueError("fit_mahalanobis: no training features")
    x = check_matrix("fit_mahalanobis(train_features)", x)
    check_labels("fit_mahalanobis(train_labels)", y0, x.shape[0], num_classes)
    y = y0.to(x.device).long()
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


@register_detector("mahalanobis", defaults={"reg": 1e-6})
class MahalanobisDetector(Detector):
    """score ``min_c`` Mahalanobis distance to the class means; ``reg``: see :func:`fit_mahalanobis`."""

    def __init__(self, reg: float = 1e-6):
        self.reg = float(reg)
        self.gaussians: Mahalanobis | None = None

    def fit(self, data: FitData) -> "MahalanobisDetector":
        self.gaussians = fit_mahalanobis(data.train_features, data.train_labels, num_classes=data.num_classes,
                                         reg=self.reg)
        return self

    def value(self, features, logits, margin, hull):
        return self.gaussians.to("cpu").score(features.to("cpu", torch.float64)).to(torch.float64)

    def torch_score(self, features, logits):
        """The score itself, ``min_c`` distance (differentiable almost everywhere)."""
        return self.gaussians.torch_distances(features).amin(dim=1)
