"""Guaranteed balls (DESIGN A2): counts of points strictly inside, union coverage, Lipschitz.

Exactness: squared distances are computed with the expansion ``|c|^2 + |p|^2 - 2 c·p`` in one
chunked matrix product (float64), whose rounding error is bounded by
``err = 4 (f + 2) eps (|c|^2 + |p|^2)``.  Every pair with ``|expansion - r^2| <= err`` is a
*borderline* pair and is decided again from the direct float64 difference ``sum((c - p)^2)``
(error ``~ f eps |c - p|^2``, exact for the strict inequality up to that rounding), so the counts
do not depend on the cancellation in the expansion.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

_EPS64 = float(torch.finfo(torch.float64).eps)


def _self_index(exclude_self, centers: Tensor, points: Tensor) -> Tensor | None:
    if exclude_self is False or exclude_self is None:
        return None
    if isinstance(exclude_self, Tensor):
        return exclude_self.to(device=centers.device, dtype=torch.long)
    same = points is centers or (
        points.shape == centers.shape and points.device == centers.device
        and points.data_ptr() == centers.data_ptr())
    if not same and points.shape == centers.shape:
        same = bool(torch.equal(points, centers))
    if not same:
        return None
    return torch.arange(centers.shape[0], device=centers.device)


def ball_counts(centers: Tensor, radii: Tensor, points: Tensor, exclude_self=True,
                chunk_q: int = 4096, chunk_n: int = 16384) -> Tensor:
    """Number of ``points`` strictly inside each ball ``||p - c|| < r``.

    Args:
        centers: ``(Q, f)``; radii: ``(Q,)`` (``inf`` counts every point, ``nan`` or ``<= 0``
            counts none); points: ``(N, f)``.
        exclude_self: ``True``: when ``points`` is ``centers`` (the same tensor, or an equal one),
            point ``q`` is not counted in ball ``q`` (other exact duplicates are counted);
            a ``(Q,)`` long tensor: index of the point to exclude for each center (-1 = none);
            ``False``: count everything.

    Returns: ``(Q,)`` int64.
    """
    dev = centers.device
    C = centers.detach().to(torch.float64)
    P = points.detach().to(device=dev, dtype=torch.float64)
    r = torch.as_tensor(radii, device=dev).detach().to(torch.float64).reshape(-1)
    if r.numel() == 1 and C.shape[0] != 1:
        r = r.expand(C.shape[0])
    Qn, f = C.shape
    selfidx = _self_index(exclude_self, centers, points)
    r2 = torch.where(torch.isnan(r) | (r <= 0), torch.full_like(r, -1.0), r * r)
    cn = (C * C).sum(1)
    pn = (P * P).sum(1)
    counts = torch.zeros(Qn, dtype=torch.long, device=dev)
    k = 4.0 * (f + 2) * _EPS64
    for q0 in range(0, Qn, chunk_q):
        Cq, r2q, cnq = C[q0:q0 + chunk_q], r2[q0:q0 + chunk_q], cn[q0:q0 + chunk_q]
        for n0 in range(0, P.shape[0], chunk_n):
            Pn, pnn = P[n0:n0 + chunk_n], pn[n0:n0 + chunk_n]
            d2 = torch.addmm(cnq[:, None] + pnn[None, :], Cq, Pn.T, beta=1.0, alpha=-2.0)
            err = k * (cnq[:, None] + pnn[None, :])
            diff = d2 - r2q[:, None]
            inside = diff < -err
            border = diff.abs() <= err
            if selfidx is not None:
                si = selfidx[q0:q0 + chunk_q] - n0
                ok = (si >= 0) & (si < Pn.shape[0])
                rows = torch.nonzero(ok).squeeze(1)
                inside[rows, si[rows]] = False
                border[rows, si[rows]] = False
            cnt = inside.sum(1)
            if bool(border.any()):
                bi, bj = torch.nonzero(border, as_tuple=True)
                exact = ((Cq[bi] - Pn[bj]) ** 2).sum(1) < r2q[bi]
                cnt.index_add_(0, bi, exact.to(torch.long))
            counts[q0:q0 + Cq.shape[0]] += cnt
    return counts


def union_coverage(queries: Tensor, centers: Tensor, radii: Tensor, chunk_q: int = 4096,
                   chunk_n: int = 16384) -> Tensor:
    """``(Q,)`` bool: the query lies strictly inside at least one ball ``||q - c_k|| < r_k``."""
    dev = queries.device
    X = queries.detach().to(torch.float64)
    C = centers.detach().to(device=dev, dtype=torch.float64)
    r = torch.as_tensor(radii, device=dev).detach().to(torch.float64).reshape(-1)
    if r.numel() == 1 and C.shape[0] != 1:
        r = r.expand(C.shape[0])
    f = X.shape[1]
    r2 = torch.where(torch.isnan(r) | (r <= 0), torch.full_like(r, -1.0), r * r)
    xn = (X * X).sum(1)
    cn = (C * C).sum(1)
    k = 4.0 * (f + 2) * _EPS64
    out = torch.zeros(X.shape[0], dtype=torch.bool, device=dev)
    for q0 in range(0, X.shape[0], chunk_q):
        Xq, xnq = X[q0:q0 + chunk_q], xn[q0:q0 + chunk_q]
        cov = torch.zeros(Xq.shape[0], dtype=torch.bool, device=dev)
        for n0 in range(0, C.shape[0], chunk_n):
            Cn, cnn, r2n = C[n0:n0 + chunk_n], cn[n0:n0 + chunk_n], r2[n0:n0 + chunk_n]
            d2 = torch.addmm(xnq[:, None] + cnn[None, :], Xq, Cn.T, beta=1.0, alpha=-2.0)
            err = k * (xnq[:, None] + cnn[None, :])
            diff = d2 - r2n[None, :]
            cov |= (diff < -err).any(1)
            border = (diff.abs() <= err) & ~cov[:, None]
            if bool(border.any()):
                bi, bj = torch.nonzero(border, as_tuple=True)
                exact = ((Xq[bi] - Cn[bj]) ** 2).sum(1) < r2n[bj]
                cov.index_put_((bi[exact],), torch.ones_like(bi[exact], dtype=torch.bool))
        out[q0:q0 + Xq.shape[0]] = cov
    return out


def ambiguity(margin: Tensor, hull_distance: Tensor) -> Tensor:
    """``d_min - d_h`` (DESIGN A4): the most negative values are the most ambiguous samples."""
    return margin - hull_distance


def lipschitz(weight: Tensor) -> float:
    """Lipschitz constant of the head ``y -> W y + b`` in the 2-norm: ``sigma_max(W)``."""
    return float(torch.linalg.matrix_norm(weight.detach().to(torch.float64), ord=2))
