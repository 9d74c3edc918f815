"""Exact flip distances as a differentiable function of the features and of the linear head.

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
        ctx.mark_non_differentiable(res.pred, res.certified)
        return d, res.pred, res.certified

    @staticmethod
    def backward(ctx, grad_d, _grad_pred, _grad_cert):
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
    d, pred, cert = _FlipDistance.apply(features, weight, bias, lower, upper, solver_kwargs)
    nonsmooth = ~(torch.isfinite(d) & (d > 0) & cert)
    ar = torch.arange(d.shape[1], device=d.device)
    nonsmooth = nonsmooth & (ar[None, :] != pred[:, None])
    dd = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
    return FlipDistances(distances=d, margin=dd.min(1).values, pred=pred, nonsmooth=nonsmooth, certified=cert)


__all__ = ["FlipDistances", "differentiable_flip_distances"]
