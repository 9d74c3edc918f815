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

**Flip points and hull projections** (:func:`differentiable_flip_points`,
:func:`differentiable_hull_projections`) are differentiated implicitly through the KKT system on
the solver's active set (Amos & Kolter, "OptNet", arXiv:1703.00443; Agrawal et al.,
"Differentiable Convex Optimization Layers", arXiv:1910.12430, do the same for general cone
programs). For a flip point with strongly active rows ``S`` (the equality ``j`` and the
inequalities with ``mu_k > 0``) and free coordinates ``F`` (strictly inside the box),

    y_F = x_F + A_{S,F}^T mu_S,   y_{not F} = the bound,   (A_{S,F} A_{S,F}^T) mu_S = -(A_S yhat + c_S)

with ``yhat = x`` on ``F`` and the bound elsewhere: ``y`` is an explicit smooth function of
``(x, W, b)`` on a neighbourhood where the active set does not change. fsl recomputes ``y`` by
this formula inside autograd (one ``n x n`` solve per pair, batched) and checks that it
reproduces the solver's point; the hull projection is recomputed the same way from its support
``K`` (``p = a_K^T D_K`` with ``a_K`` from the bordered system of ``min ||q - a^T D_K||^2``,
``sum a = 1``). Pairs whose active set is weakly active (a constraint or bound active with a
zero multiplier: the derivative is one-sided there) are flagged ``degenerate``; their gradient
is the one of the strongly active set, an element of the Clarke subdifferential.

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

from ._common import _BATCHED_LU_MAX, as_box
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


def _solve_checked(M: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """``M^{-1} rhs`` for a batch ``M`` (P, m, m), ``rhs`` (P, m), and a ``(P,)`` mask of the systems
    LU could factor (singular ones: zeros). CPU systems above ``_BATCHED_LU_MAX`` are factored one at a
    time, for the reason :func:`fsl.geometry._common.batched_solve` gives."""
    if M.shape[0] == 0:
        return rhs.clone(), torch.ones(0, dtype=torch.bool, device=M.device)
    if M.shape[-1] <= _BATCHED_LU_MAX or M.device.type != "cpu":
        sol, info = torch.linalg.solve_ex(M, rhs[..., None])
    else:
        parts = [torch.linalg.solve_ex(M[i], rhs[i][:, None]) for i in range(M.shape[0])]
        sol = torch.stack([p[0] for p in parts])
        info = torch.stack([p[1] for p in parts])
    ok = (info == 0) & torch.isfinite(sol).all(1)[:, 0]
    return torch.where(ok[:, None], sol[..., 0], torch.zeros_like(rhs)), ok


@dataclass
class FlipPoints:
    """Output of :func:`differentiable_flip_points`.

    Attributes:
        points: ``(B, n, f)`` float64 flip points, differentiable with respect to features, weight
            and bias; NaN at the predicted class and where no boundary exists.
        distances: ``(B, n)`` ``||points - features||`` (differentiable; NaN / +inf as above).
        pred: ``(B,)`` predicted class.
        nonsmooth: ``(B, n)`` bool: pairs that carry no gradient (distance 0 or +inf, not certified,
            or the active-set formula did not reproduce the solver's point).
        degenerate: ``(B, n)`` bool: weakly active constraints or bounds (one-sided derivative;
            the gradient is the strongly active set's).
        certified: ``(B, n)`` bool, as in :class:`fsl.geometry.FlipResult`.
    """

    points: Tensor
    distances: Tensor
    pred: Tensor
    nonsmooth: Tensor
    degenerate: Tensor
    certified: Tensor


def differentiable_flip_points(features: Tensor, weight: Tensor, bias: Tensor, lower=None, upper=None,
                               active_tol: float = 1e-9, closest_only: bool = False, **solver_kwargs) -> FlipPoints:
    """Exact flip points ``(B, n, f)`` (as :func:`fsl.geometry.flip_margins` with
    ``return_points=True``; ``solver_kwargs`` go to it) that autograd differentiates with respect
    to ``features`` ``(B, f)``, ``weight`` ``(n, f)`` and ``bias`` ``(n,)``: implicit
    differentiation of the KKT system on the solver's active set (module docstring).

    ``active_tol``: a multiplier above ``active_tol * (1 + max |mu|)`` marks a strongly active
    row; a coordinate within ``active_tol * (1 + |bound|)`` of its bound is fixed there.
    ``closest_only``: differentiate only each sample's closest pair (the margin's flip point); the
    other points are returned without gradient (``nonsmooth``). The recomputation holds ``(P, n, f)``
    tensors for ``P`` differentiated pairs: all pairs of 60,000 samples x 10 classes x 64 features
    are several GB, the closest pairs a tenth of it.
    """
    with torch.no_grad():
        res = flip_margins(features, weight, bias, lower, upper, return_points=True, **solver_kwargs)
    dt = res.distances.dtype
    dev = res.distances.device
    B, n = res.distances.shape
    f = features.shape[1]
    X = features.to(dt)
    W = weight.to(device=dev, dtype=dt)
    b = bias.to(device=dev, dtype=dt)
    lo, hi = as_box(lower, upper, f, dt, dev)
    d0 = res.distances
    ok = torch.isfinite(d0) & (d0 > 0) & res.certified
    if closest_only:
        ok &= torch.arange(n, device=dev)[None, :] == res.closest[:, None]
    s_idx, j_idx = torch.nonzero(ok, as_tuple=True)
    P = s_idx.numel()
    pts = res.points.clone()
    degenerate = torch.zeros_like(ok)
    if P:
        ystar = res.points[s_idx, j_idx]  # (P, f) the solver's points (constants)
        mu = res.multipliers[s_idx, j_idx]  # (P, n)
        pi = res.pred[s_idx]
        ar = torch.arange(n, device=dev)
        mtol = active_tol * (1.0 + mu.abs().amax(1, keepdim=True))
        strong = (ar[None, :] == j_idx[:, None]) | ((mu > mtol) & (ar[None, :] != pi[:, None]))
        btol = active_tol * (1.0 + torch.where(torch.isfinite(lo), lo.abs(), torch.zeros_like(lo)))
        htol = active_tol * (1.0 + torch.where(torch.isfinite(hi), hi.abs(), torch.zeros_like(hi)))
        A = W[pi][:, None, :] - W[None, :, :]  # (P, n, f): rows a_k = w_i - w_k
        c = b[pi][:, None] - b[None, :]  # (P, n)
        x = X[s_idx]
        # a coordinate is fixed at its bound when the unclipped step x + A^T mu pushes beyond it;
        # one that merely touches the bound (weakly active) stays free and is flagged below
        unclipped = x + torch.einsum("pk,pkf->pf", mu, A)
        at_lo = (ystar <= lo + btol) & (unclipped < lo - btol)
        at_hi = (ystar >= hi - htol) & (unclipped > hi + htol)
        weak_box = ((ystar <= lo + btol) | (ystar >= hi - htol)) & ~(at_lo | at_hi)
        free = ~(at_lo | at_hi)
        yhat = torch.where(free, x, ystar)
        AF = A * free[:, None, :]
        sm = strong.to(dt)
        G = torch.einsum("pkf,plf->pkl", AF, AF) * sm[:, :, None] * sm[:, None, :] + torch.diag_embed(1.0 - sm)
        rhs = -sm * (torch.einsum("pkf,pf->pk", A, yhat) + c)
        musol, solved = _solve_checked(G, rhs)
        musol = musol * sm
        y = yhat + torch.einsum("pk,pkf->pf", musol, AF)
        # the formula must reproduce the solver's point (else the active set was read wrongly)
        with torch.no_grad():
            err = (y - ystar).norm(dim=1)
            good = solved & (err <= 1e-7 * (1.0 + ystar.norm(dim=1)))
            r = torch.einsum("pkf,pf->pk", A, ystar) + c
            rscale = 1.0 + (A.norm(dim=2) * ystar.norm(dim=1, keepdim=True))
            weak_row = ~strong & (r.abs() <= 1e-7 * rscale) & (ar[None, :] != pi[:, None])
            degenerate[s_idx, j_idx] = weak_row.any(1) | weak_box.any(1)
        y = torch.where(good[:, None], y, ystar)
        ok = ok.clone()
        ok[s_idx[~good], j_idx[~good]] = False
        pts = pts.index_put((s_idx, j_idx), y)
        # 0, +inf, NaN, uncertified pairs keep the solver's value and carry no gradient
        dist = d0.index_put((s_idx, j_idx), torch.where(good, (y - x).norm(dim=1), d0[s_idx, j_idx]))
    else:
        dist = d0
    nonsmooth = ~ok & (torch.arange(n, device=dev)[None, :] != res.pred[:, None])
    return FlipPoints(points=pts, distances=dist, pred=res.pred, nonsmooth=nonsmooth, degenerate=degenerate & ok,
                      certified=res.certified)


@dataclass
class HullProjections:
    """Output of :func:`differentiable_hull_projections`: ``projection`` ``(Q, f)`` and ``distance``
    ``(Q,)`` float64, differentiable in the queries and the points; ``weights`` ``(Q, K)`` the
    support weights of ``support_index`` ``(Q, K)`` (padded with -1 / 0), differentiable too;
    ``nonsmooth`` ``(Q,)`` (uncertified, or the support system did not reproduce the solver's
    projection: no gradient); ``degenerate`` ``(Q,)`` (a support weight at 0 or the query inside the
    hull: one-sided derivative)."""

    projection: Tensor
    distance: Tensor
    weights: Tensor
    support_index: Tensor
    nonsmooth: Tensor
    degenerate: Tensor


def differentiable_hull_projections(queries: Tensor, points: Tensor, **solver_kwargs) -> HullProjections:
    """Projections of ``queries`` ``(Q, f)`` onto the convex hull of ``points`` ``(N, f)`` (as
    :func:`fsl.geometry.hull_distances`, ``solver_kwargs`` go to it), differentiable in both by
    implicit differentiation of ``min_a ||q - a^T D_K||^2, sum a = 1`` on the solver's support ``K``:
    ``[D_K D_K^T, 1; 1^T, 0] [a; lam] = [D_K q; 1]``. A query inside the hull projects to itself
    (``dp/dq = I`` on the relative interior of a full-dimensional hull): fsl returns ``p = q`` there,
    distance 0, and flags it ``degenerate``."""
    with torch.no_grad():
        res = hull_distances(queries, points, **solver_kwargs)
    dt = res.distance.dtype
    q = queries.to(dt)
    D = points.to(device=q.device, dtype=dt)
    idx = res.support_index
    valid = idx >= 0
    Q, K = idx.shape
    DK = D[idx.clamp_min(0)] * valid[..., None]  # (Q, K, f)
    vm = valid.to(dt)
    G = torch.einsum("qkf,qlf->qkl", DK, DK) * vm[:, :, None] * vm[:, None, :] + torch.diag_embed(1.0 - vm)
    M = torch.zeros(Q, K + 1, K + 1, dtype=dt, device=q.device)
    M[:, :K, :K] = G
    M[:, :K, K] = vm
    M[:, K, :K] = vm
    rhs = torch.cat([torch.einsum("qkf,qf->qk", DK, q) * vm, torch.ones(Q, 1, dtype=dt, device=q.device)], 1)
    sol, solved = _solve_checked(M, rhs)
    a = sol[:, :K] * vm
    inside = res.inside
    # inside the hull the projection is the query itself (dp/dq = I, no dependence on the points)
    p = torch.where(inside[:, None], q, torch.einsum("qk,qkf->qf", a, DK))
    with torch.no_grad():
        pstar = res.projection.to(dt)
        close = (p - pstar).norm(dim=1) <= 1e-7 * (1.0 + pstar.norm(dim=1))
        good = res.certified & (inside | (solved & close & (a >= -1e-9).all(1)))
        degenerate = inside | ((res.support_weight <= 1e-12) & valid).any(1)
    p = torch.where(good[:, None], p, pstar)
    a = torch.where(good[:, None], a, res.support_weight.to(dt))
    dist = (q - p).norm(dim=1)
    dist = torch.where(good & ~inside, dist, res.distance.to(dt).where(~good | ~inside, torch.zeros_like(dist)))
    return HullProjections(projection=p, distance=dist, weights=a, support_index=idx, nonsmooth=~good,
                           degenerate=degenerate)


__all__ = ["FlipDistances", "differentiable_flip_distances", "HullDistances", "differentiable_hull_distances",
           "FlipPoints", "differentiable_flip_points", "HullProjections", "differentiable_hull_projections"]
