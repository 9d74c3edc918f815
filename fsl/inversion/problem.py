r"""The constraint of one batched inversion problem, shared by the solvers of :mod:`fsl.inversion`.

``c(x) = N(x) - t`` (B, f) for a point target, ``c(x) = ||N(x) - t|| - r`` (B, 1) for a sphere
(``N = model.forward_features``), with its Jacobian: ``f`` vector-Jacobian products per sample for a
point (:func:`fsl.inversion.jacobian.feature_jacobian`), one for a sphere
(:func:`fsl.inversion.jacobian.vjp_rows`). Everything is returned in float64.
"""
from __future__ import annotations

import torch
from torch import nn

from fsl.inversion.jacobian import feature_jacobian, features_of, vjp_rows


class FeatureConstraint:
    """Constraint ``c(x)`` (B, m) and its Jacobian for one mode; everything returned in float64.

    Args:
        model: a model with ``forward_features`` (in eval mode, weights frozen by the caller).
        targets: (B, f) float64 targets ``t``.
        radius: (B,) float64 radii (mode "sphere"), or None (mode "point").
        mode: "point" (``m = f`` rows) or "sphere" (``m = 1``).
        max_rows: memory bound of the point-mode Jacobian (backward rows per chunk).
        generator: CPU generator of the random unit direction used where ``N(x) = t`` on a sphere.

    ``value(x, idx)`` and ``value_and_jac(x, idx)`` take images ``x`` (b, C, H, W) and the rows
    ``idx`` (b,) of the batch they belong to; :meth:`subset` restricts the batch (indices re-based).
    """

    def __init__(self, model: nn.Module, targets: torch.Tensor, radius: torch.Tensor | None,
                 mode: str, max_rows: int, generator: torch.Generator | None):
        self.model, self.t, self.r, self.mode = model, targets, radius, mode
        self.max_rows = max_rows
        self.generator = generator
        self.m = targets.shape[1] if mode == "point" else 1

    def subset(self, idx: torch.Tensor) -> "FeatureConstraint":
        """The same constraint on the batch rows ``idx`` (re-based: row ``k`` of the result is ``idx[k]``)."""
        return FeatureConstraint(self.model, self.t[idx], None if self.r is None else self.r[idx], self.mode,
                                 self.max_rows, self.generator)

    def value(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        feats = features_of(self.model, x).double()
        diff = feats - self.t[idx]
        if self.mode == "point":
            return diff
        return (diff.norm(dim=1) - self.r[idx]).unsqueeze(1)

    def value_and_jac(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "point":
            J = feature_jacobian(self.model, x, self.max_rows).double()
            c = features_of(self.model, x).double() - self.t[idx]
            return c, J
        feats = features_of(self.model, x).double()
        diff = feats - self.t[idx]
        nrm = diff.norm(dim=1, keepdim=True)
        u = diff / nrm.clamp_min(1e-30)
        # at N(x) = t the sphere's gradient is undefined: use a random unit direction
        tiny = (nrm.squeeze(1) <= 1e-9 * (1.0 + self.t[idx].norm(dim=1)))
        if tiny.any():
            g = torch.randn(int(tiny.sum()), diff.shape[1], generator=self.generator,
                            dtype=torch.float64, device="cpu").to(diff.device)
            u[tiny] = g / g.norm(dim=1, keepdim=True)
        _, row = vjp_rows(self.model, x, u)
        c = (nrm.squeeze(1) - self.r[idx]).unsqueeze(1)
        return c, row.double().unsqueeze(1)


__all__ = ["FeatureConstraint"]
