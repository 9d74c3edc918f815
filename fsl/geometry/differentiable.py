"""Exact flip distances and hull distances as differentiable functions of their inputs.

**Flip distances** (features and the linear head).

The distance from a feature ``x`` (predicted class ``i``) to the ``i|j`` boundary is the value of
the QP of :func:`fsl.geometry.flip_margins`,

    V(x, W, b) = min_y 1/2 ||y - x||^2   s.t.  a_k . y + c_k >= 0 (k != i, j),  a_j . y + c_j = 0,
                                               lo <= y <= hi,      a_k = w_i - w_k,  c_k = b_i - b_k,

and ``d_ij = sqrt(2 V)``. By the envelope theorem (the derivative of an optimal value with respect
to a parameter is the partial derivative of the Lagrangian at a primal-dual solution; e.g.
Bonnans & Shapiro, "Perturbation Analysis of Optimization Problems", 2000, Thm. 4.24; Fiacco,
1983), with the solver's multipliers ``mu`` (``y* - x = sum_k mu_k a_k`` on the free coordinates):

    dV/dx   = x - y*
    dV/dw_k = mu_k y*          dV/dw_i = -(sum_k mu_k) y*
    dV/db_k = mu_k             dV/db_i = -(sum_k mu_k)

and ``d d / d theta = (dV / d theta) / d``. The box does not depend on ``x, W, b``, so its
multipliers do not enter. No second solve, no KKT system: the backward pass costs a few tensor
products on the flip points the forward pass already has.

**Hull distances** (queries and the points). For ``V(q, D) = min_{a in simplex} 1/2 ||q - a^T D||^2``
with the projection ``p = a*^T D`` the same theorem gives ``dV/dq = q - p`` and
``dV/dD_k = -a*_k (q - p)``; ``d_h = sqrt(2 V)``. A query inside the hull (``d_h = 0``) gets the
subgradient 0 and is flagged; so is an uncertified one.

Where the derivative is not defined, a documented subgradient is returned and flagged
(:attr:`FlipDistances.nonsmooth`): ``d = 0`` (the sample sits on the boundary: gradient 0),
``d = +inf`` (no boundary inside the domain: gradient 0), uncertified pairs (gradient 0). The
predicted class is piecewise constant in ``x``: no gradient flows through the argmax. Where the
multipliers are not unique (degenerate active sets), the gradient is the one of the solver's
multipliers, an element of the (Clarke) subdifferential.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .flip import flip_margins
from .hull import hull_distances

Tensor = torch.Tensor


@dataclass
class FlipDistances:
    """Output of :func:`differentiable_flip_distances`.

    Attributes:
        distances: ``(B, n)`` float64, differentiable with respect to features, weight and bias;
            NaN at the predicted class, ``+inf`` where no boundary exists.
        margin: ``(B,)`` ``min_j distances`` (differentiable: its gradient is the closest pair's).
        pred: ``(B,)`` predicted class.
        nonsmooth: ``(B, n)`` bool: pairs whose gradient is the documented subgradient 0 (distance
            0, +inf, or not certified).
        certified: ``(B, n)`` bool, as in :class:`fsl.geometry.FlipResult`.
    """

    distances: Tensor
    margin: Tensor
    pred: Tensor
    nonsmooth: Tensor
    certified: Tensor


class _FlipDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, lower, upper, kwargs):
        res = flip_margins(features, weight, bias, lower, upper, return_points=True, **kwargs)
        d = res.distances
        ok = torch.isfinite(d) & (d > 0) & res.certified
        ctx.save_for_backward(features.detach().to(d.dtype), res.points, res.multipliers, d, ok, res.pred)
        ctx.shapes = (features.dtype, weight.shape, weight.dtype, bias.dtype)
        # the predicted class itself is no pair: NaN distance, not flagged
        nonsmooth = ~ok & (torch.arange(d.shape[1], device=d.device)[None, :] != res.pred[:, None])
        ctx.mark_non_differentiable(res.pred, res.certified, nonsmooth)
        return d, res.pred, res.certified, nonsmooth

    @staticmethod
    def backward(ctx, grad_d, _grad_pred, _grad_cert, _grad_nonsmooth):
        x, y, mu, d, ok, pred = ctx.saved_tensors
        fdtype, wshape, wdtype, bdtype = ctx.shapes
        n = wshape[0]
        g = torch.where(ok, grad_d.to(d.dtype) / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))
        y0 = torch.where(ok[..., None], y, torch.zeros_like(y))  # (B, n, f); NaN rows of undefined pairs dropped
        mu0 = torch.where(ok[..., None], mu, torch.zeros_like(mu))  # (B, n_j, n_k)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g[..., None] * (x[:, None, :] - y0)).sum(1).to(fdtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gmu = g[..., None] * mu0  # (B, n_j, n_k): g_j mu_jk
            onehot = torch.nn.functional.one_hot(pred, n).to(d.dtype)  # (B, n): the predicted class i
            if ctx.needs_input_grad[1]:
                # sum over samples and pairs of g_j mu_jk y_j, to row k; minus the row sum, to row i
                per_k = torch.einsum("bjk,bjf->kf", gmu, y0)
                per_i = torch.einsum("bj,bjf->bf", gmu.sum(2), y0)
                gw = (per_k - onehot.T @ per_i).to(wdtype)
            if ctx.needs_input_grad[2]:
                gb = (gmu.sum(1).sum(0) - onehot.T @ gmu.sum((1, 2))).to(bdtype)
        return gx, gw, gb, None, None, None


def differentiable_flip_distances(features: Tensor, weight: Tensor, bias: Tensor, lower=None, upper=None,
                                  **solver_kwargs) -> FlipDistances:
    """Exact flip distances ``(B, n)`` (as :func:`fsl.geometry.flip_margins`) that autograd can
    differentiate with respect to ``features`` ``(B, f)``, ``weight`` ``(n, f)`` and ``bias``
    ``(n,)`` (envelope theorem, see the module docstring). ``lower``/``upper``: the feature domain
    (constants). ``solver_kwargs`` go to :func:`flip_margins`. Distances are float64."""
    d, pred, cert, nonsmooth = _FlipDistance.apply(features, weight, bias, lower, upper, solver_kwargs)
    dd = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
    return FlipDistances(distances=d, margin=dd.min(1).values, pred=pred, nonsmooth=nonsmooth, certified=cert)


class _HullDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, points, kwargs):
        res = hull_distances(queries, points, **kwargs)
        d = res.distance
        ok = (d > res.stats.get("inside_tol", 0.0)) & res.certified
        ctx.save_for_backward(queries.detach().to(d.dtype), res.projection.to(d.dtype), res.support_index,
                              res.support_weight.to(d.dtype), d, ok)
        ctx.meta = (queries.dtype, points.shape, points.dtype)
        nonsmooth = ~ok
        ctx.mark_non_differentiable(res.certified, nonsmooth)
        return d, res.certified, nonsmooth

    @staticmethod
    def backward(ctx, grad_d, _grad_cert, _grad_nonsmooth):
        q, p, idx, w, d, ok = ctx.saved_tensors
        qdtype, pshape, pdtype = ctx.meta
        g = torch.where(ok, grad_d.to(d.dtype) / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))
        u = g[:, None] * (q - p)  # (Q, f): the gradient of each distance with respect to its query
        gq = u.to(qdtype) if ctx.needs_input_grad[0] else None
        gD = None
        if ctx.needs_input_grad[1]:
            valid = idx >= 0
            contrib = -(torch.where(valid, w, torch.zeros_like(w))[:, :, None] * u[:, None, :])  # (Q, K, f)
            gD = torch.zeros(pshape, dtype=d.dtype, device=d.device)
            gD.index_add_(0, idx.clamp_min(0).flatten(), contrib.reshape(-1, pshape[1]))
            gD = gD.to(pdtype)
        return gq, gD, None


@dataclass
class HullDistances:
    """Output of :func:`differentiable_hull_distances`: ``distance`` ``(Q,)`` float64 (differentiable),
    ``certified`` ``(Q,)``, ``nonsmooth`` ``(Q,)`` (inside the hull or uncertified: gradient 0)."""

    distance: Tensor
    certified: Tensor
    nonsmooth: Tensor


def differentiable_hull_distances(queries: Tensor, points: Tensor, **solver_kwargs) -> HullDistances:
    """Distances ``(Q,)`` from ``queries`` ``(Q, f)`` to the convex hull of ``points`` ``(N, f)``
    (as :func:`fsl.geometry.hull_distances`, ``solver_kwargs`` go to it) that autograd can
    differentiate with respect to both (envelope theorem, see the module docstring)."""
    d, cert, nonsmooth = _HullDistance.apply(queries, points, solver_kwargs)
    return HullDistances(distance=d, certified=cert, nonsmooth=nonsmooth)


__all__ = ["FlipDistances", "differentiable_flip_distances", "HullDistances", "differentiable_hull_distances"]
