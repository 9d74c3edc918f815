"""Exact, batched, certified projection onto the convex hull of a point set (docs/geometry.md).

For queries ``q`` and points ``D`` (N x f):

    minimize ||q - a^T D||^2   subject to a >= 0, sum(a) = 1.

Working-set (fully corrective Frank-Wolfe) method, all queries batched:

1. *Start*: the ``k_init`` nearest points of each query (one pass over ``D``).
2. *Restricted solve*: the QP over the working set ``S`` is solved exactly by a batched primal
   active-set method on the Gram matrix ``G = (D_S - q)(D_S - q)^T`` (bordered KKT systems
   ``[G_PP 1; 1^T 0]`` on the passive set, ratio test, several additions per iteration).
3. *Pricing*: one matrix product over all ``N`` points (chunked) gives, for ``u = q - p``,
   ``max_k u·d_k``; the Frank-Wolfe gap ``gap = 2 (max_k u·d_k - u·p)`` bounds
   ``||q - p||^2 - d*^2`` from above (a certificate), and the best ``k_add`` points join ``S``.
   Points with zero weight leave ``S``.  Repeat until certified.  The pass runs in float32 where
   float32 products are exact IEEE float32; its rounding is bounded and every possible maximiser
   is rescored in float64, so the gap is exactly the float64 one (see :func:`_price`).

Certificate: ``relative_gap = gap / max(||q - p||^2, (1e-3 R)^2)`` where ``R`` is the RMS
distance of the points to their centroid; ``certified`` means
``relative_gap <= tol`` (default 1e-6).  So a certified query has ``d^2 <= d*^2 + tol * max(d^2,
1e-6 R^2)``: relative accuracy when the query is outside the hull, and an absolute accuracy of
about ``1e-6 R`` on the distance for queries inside (distance 0) or extremely close to it.
The returned ``lower_bound = max(0, ||u|| - gap / (2 ||u||))`` is the separating-hyperplane bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fsl.checks import check_finite

from ._common import batched_solve, float32_matmul_is_exact, float32_products_fit

Tensor = torch.Tensor


@dataclass
class HullResult:
    """Output of :func:`hull_distances`.

    Attributes:
        distance: ``(Q,)`` ``||q - p||`` (an upper bound, within the certified gap of the optimum).
        projection: ``(Q, f)`` the projection ``p = a^T D`` (in the input coordinates).
        support_index: ``(Q, K)`` int64 indices of points with ``a > 0``, by decreasing weight,
            padded with -1.
        support_weight: ``(Q, K)`` their weights (sum 1), padded with 0.
        gap: ``(Q,)`` Frank-Wolfe duality gap (squared-distance units): ``d^2 - d*^2 <= gap``.
        relative_gap: ``(Q,)`` ``gap / max(d^2, (1e-3 R)^2)``.
        lower_bound: ``(Q,)`` certified lower bound on the distance.
        certified: ``(Q,)`` bool ``relative_gap <= tol``.
        stats: rounds, pricing passes, max working-set size.
    """

    distance: Tensor
    projection: Tensor
    support_index: Tensor
    support_weight: Tensor
    gap: Tensor
    relative_gap: Tensor
    lower_bound: Tensor
    certified: Tensor
    stats: dict = field(default_factory=dict)

    @property
    def inside(self) -> Tensor:
        """Queries whose certified distance is at the floor (inside the hull up to 1e-6 R)."""
        return self.certified & (self.distance <= self.stats.get("inside_tol", 0.0))


def _restricted_solve(E: Tensor, valid: Tensor, a: Tensor, max_iter: int, add_per_iter: int):
    """Exact min ||a^T E||^2 over the simplex on the valid entries; batched active set.

    E: (Q, K, f) points minus query; valid: (Q, K) bool; a: (Q, K) feasible start.
    Returns the new weights (Q, K) and the number of iterations used.
    """
    Q, K, f = E.shape
    dt = E.dtype
    dev = E.device
    G = E @ E.transpose(1, 2)  # (Q, K, K)
    dg = torch.diagonal(G, dim1=1, dim2=2)
    gscale = dg.masked_fill(~valid, 0).amax(1).clamp_min(1e-300)  # (Q,)
    reg = 1e-15 * gscale
    P = (a > 0) & valid
    live = torch.arange(Q, device=dev)
    it = 0
    prio = torch.full((Q,), -1, dtype=torch.long, device=dev)  # most violating index just added
    for it in range(1, max_iter + 1):
        if live.numel() == 0:
            break
        Gl, Pl, al, vl = G[live], P[live], a[live], valid[live]
        Ml = live.numel()
        Pf = Pl.to(dt)
        # bordered KKT [G_PP + reg I, 1; 1^T, 0] [alpha; -nu] = [0; 1], identity on non-P rows
        Mx = torch.zeros((Ml, K + 1, K + 1), dtype=dt, device=dev)
        Mx[:, :K, :K] = Gl * (Pf[:, :, None] * Pf[:, None, :]) + torch.diag_embed(
            (1.0 - Pf) + Pf * reg[live][:, None])
        Mx[:, :K, K] = Pf
        Mx[:, K, :K] = Pf
        rhs = torch.zeros((Ml, K + 1), dtype=dt, device=dev)
        rhs[:, K] = 1.0
        sol = batched_solve(Mx, rhs)
        alpha = sol[:, :K] * Pf
        feasible = ~((alpha <= 0) & Pl).any(1)
        # infeasible target: ratio test towards alpha, drop the blocking indices
        dlt = alpha - al
        ratio = torch.where(Pl & (alpha <= 0) & (dlt < 0), al / (-dlt).clamp_min(1e-300),
                            torch.full_like(al, float("inf")))
        theta = ratio.amin(1).clamp(0, 1)
        theta = torch.where(feasible, torch.ones_like(theta), theta)
        anew = al + theta[:, None] * dlt
        anew = torch.where(Pl, anew, torch.zeros_like(anew))
        stall = torch.zeros_like(feasible)
        Pn = Pl.clone()
        if not bool(feasible.all()):
            blocking = (~feasible)[:, None] & Pl & (ratio <= theta[:, None] * (1 + 1e-12))
            # Lawson-Hanson: the single most violating new index keeps a positive weight in exact
            # arithmetic; keep it (the other new indices may leave), unless it blocks by itself.
            pr = prio[live]
            isprio = torch.zeros_like(blocking)
            hasp = pr >= 0
            isprio[hasp.nonzero().squeeze(1), pr[hasp]] = True
            only = (blocking & ~isprio).any(1)
            blocking = torch.where(only[:, None], blocking & ~isprio, blocking)
            stall = (~feasible) & ~only & (theta <= 0)
            # the most violating index blocks: fall back to adding it alone (the other new ones go)
            others = Pl & (al == 0) & ~isprio
            retry = stall & others.any(1)
            stall = stall & ~retry
            anew = torch.where(blocking & ~retry[:, None], torch.zeros_like(anew), anew)
            Pn &= ~torch.where(retry[:, None], others, blocking)
        anew = anew.clamp_min(0)
        anew = anew / anew.sum(1, keepdim=True)
        # optimality of the feasible ones: lambda_k = (G a)_k - nu >= 0 on the valid entries
        ga = (Gl @ anew[:, :, None]).squeeze(2)
        nu = (anew * ga).sum(1, keepdim=True)
        lam = ga - nu
        tol = 1e-12 * (nu + gscale[live][:, None].sqrt() * nu.clamp_min(0).sqrt()) + 1e-15 * gscale[live][:, None]
        cand = vl & ~Pn & (lam < -tol)
        done = (feasible & ~cand.any(1)) | stall
        addable = feasible & cand.any(1)
        newprio = torch.full_like(prio[live], -1)
        if bool(addable.any()):
            kk = min(add_per_iter, K)
            lam_m = torch.where(cand, lam, torch.full_like(lam, float("inf")))
            vals, idx = torch.topk(lam_m, kk, dim=1, largest=False)
            addm = torch.zeros_like(Pn)
            addm.scatter_(1, idx, torch.isfinite(vals) & addable[:, None])
            Pn = Pn | addm
            newprio = torch.where(addable, idx[:, 0], newprio)
        a[live] = anew
        P[live] = Pn
        prio[live] = torch.where(feasible, newprio, prio[live])
        live = live[~done]
    return a, it


def _topk_merge(best, v, i, k):
    if best is None:
        return v, i
    cv, ci = torch.cat([best[0], v], 1), torch.cat([best[1], i], 1)
    vv, j = torch.topk(cv, min(k, cv.shape[1]), dim=1)
    return vv, ci.gather(1, j)


def _topk_products(U: Tensor, Dc: Tensor, k: int, chunk_n: int):
    """For each row u of U: the top-k values of ``u·d`` over the rows d of ``Dc`` (chunked) and their
    indices, in U's dtype: ``(Q, k)``, ``(Q, k)``."""
    best = None
    for n0 in range(0, Dc.shape[0], chunk_n):
        s = U @ Dc[n0:n0 + chunk_n].T
        v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        best = _topk_merge(best, v, i + n0, k)
    return best


def _price(U: Tensor, Dc: Tensor, Dl: Tensor | None, dnorm: float, k: int, k_check: int, chunk_n: int):
    """``max_k u·d_k`` (exact in float64: the certificate) and the top-k points, for each row u of U.

    With a low-precision copy ``Dl`` of the points, the pass runs in that precision: every
    ``|fl(u·d) - u·d| <= E = (f + 4) u_32 |u| max|d|``, so the true maximiser is among the points
    scoring at least ``max fl(u·d) - 2E``.  The best ``k_check`` low-precision scores are recomputed
    in float64; a query with more than ``k_check`` such near-maximisers gets a float64 pass.

    Returns ``(vmax (Q,), vtop (Q, k), itop (Q, k))`` with float64 values.
    """
    if Dl is None:
        vtop, itop = _topk_products(U, Dc, k, chunk_n)
        return vtop[:, 0], vtop, itop
    f = U.shape[1]
    unit = float(torch.finfo(Dl.dtype).eps) / 2
    kc = min(max(k, k_check), Dc.shape[0])
    vl, il = _topk_products(U.to(Dl.dtype), Dl, kc, chunk_n)
    E = (f + 4) * unit * 1.01 * U.norm(dim=1) * dnorm
    exact = (Dc[il] * U[:, None, :]).sum(2)  # (Q, kc) recomputed in float64
    vmax = exact.amax(1)
    # the kc-th low-precision score must fall below the near-max band, else points may be missing
    unsure = vl[:, -1].to(U.dtype) >= vl[:, 0].to(U.dtype) - 2.0 * E - 4 * unit * vl[:, 0].abs().to(U.dtype)
    if kc < Dc.shape[0] and bool(unsure.any()):
        rows = torch.nonzero(unsure).squeeze(1)
        v64, i64 = _topk_products(U[rows], Dc, kc, chunk_n)
        exact[rows], il[rows], vmax[rows] = v64, i64, v64[:, 0]
    vtop, j = torch.topk(exact, min(k, kc), dim=1)
    return vmax, vtop, il.gather(1, j)


def hull_distances(queries: Tensor, points: Tensor, tol: float = 1e-6, k_init: int = 8,
                   k_add: int = 8, max_rounds: int = 100, max_working: int | None = None,
                   chunk_q: int = 2048, chunk_n: int = 16384, dtype: torch.dtype = torch.float64,
                   pricing_dtype: torch.dtype | None = None, inner_max_iter: int = 500,
                   add_per_iter: int = 2, k_check: int = 32) -> HullResult:
    """Distance from each query to the convex hull of ``points``, with a certified gap.

    Args:
        queries: ``(Q, f)``; points: ``(N, f)`` (any float dtype / device).
        tol: relative duality-gap tolerance for ``certified`` (see the module docstring).
        k_init: nearest points that seed the working set; k_add: points added per round.
        max_rounds: pricing rounds (each one pass over ``points`` for the unfinished queries).
        max_working: cap on the working-set size (default ``f + 1 + k_add``... at least 64).
        chunk_q, chunk_n: query / point chunk sizes of the pricing matmul (memory
            ``chunk_q * chunk_n`` scores).
        dtype: computation dtype (float64).
        pricing_dtype: dtype of the pricing pass over all points (default float32 where float32
            matrix products are IEEE float32, i.e. ``torch.get_float32_matmul_precision() ==
            "highest"`` and no TF32; else ``dtype``).  The certificate stays exact: the rounding
            of the pass is bounded and every point that could be the maximiser within that bound
            is rescored in ``dtype`` (see :func:`_price`).
        k_check: low-precision scores rescored per query and pass (more near-maximisers than this
            trigger a pass in ``dtype`` for that query).
    """
    dev = queries.device
    Dp = points.detach().to(device=dev, dtype=dtype)
    Qx = queries.detach().to(dtype)
    if Dp.ndim != 2 or Qx.ndim != 2 or Dp.shape[1] != Qx.shape[1]:
        raise ValueError(f"hull_distances: expected queries (Q, f) and points (N, f), got {tuple(Qx.shape)} and "
                         f"{tuple(Dp.shape)}")
    if Dp.shape[0] == 0:
        raise ValueError("hull_distances: no points; the convex hull of an empty set is empty (pass at least one "
                         "training feature)")
    check_finite("hull_distances queries", Qx)
    check_finite("hull_distances points", Dp)
    N, f = Dp.shape
    Qn = Qx.shape[0]
    if max_working is None:
        max_working = max(64, min(N, f + 1 + 2 * k_add))
    max_working = min(max_working, N)
    k_init = min(k_init, N)
    k_add = min(k_add, N)
    cen = Dp.mean(0)
    Dc = Dp - cen
    Qc = Qx - cen
    if pricing_dtype is None:  # float32 pricing only where float32 products are IEEE float32 and cannot overflow
        exact32 = float32_matmul_is_exact(dev) and float32_products_fit(f, Dc, Qc)
        pricing_dtype = torch.float32 if (exact32 and dtype == torch.float64) else dtype
    pdtype = pricing_dtype
    R = float(((Dc ** 2).sum(1).mean()).sqrt()) if N else 1.0
    R = R if R > 0 else 1.0
    floor2 = (1e-3 * R) ** 2
    Dl = Dc.to(pdtype) if pdtype != dtype else None
    dn2 = (Dc ** 2).sum(1)
    dnorm = float(dn2.max().sqrt()) if N else 0.0
    Daug = torch.cat([Dc, dn2[:, None]], 1).to(pdtype)  # 2 q·d - |d|^2 in one product

    out_p = torch.empty((Qn, f), dtype=dtype, device=dev)
    out_gap = torch.full((Qn,), float("inf"), dtype=dtype, device=dev)
    out_d = torch.empty((Qn,), dtype=dtype, device=dev)
    out_cert = torch.zeros(Qn, dtype=torch.bool, device=dev)
    stats = dict(rounds=0, pricing_passes=0, max_working=0, inner_iterations=0, R=R,
                 inside_tol=1e-6 * R)
    supp_idx_all = []
    for q0 in range(0, Qn, chunk_q):
        qc = Qc[q0:q0 + chunk_q]
        B = qc.shape[0]
        # seed: k_init nearest points (largest 2 q·d - |d|^2)
        qa = torch.cat([2.0 * qc, -torch.ones_like(qc[:, :1])], 1).to(pdtype)
        S = _topk_products(qa, Daug, k_init, chunk_n)[1]  # (B, K)
        stats["pricing_passes"] += 1
        a = torch.zeros(S.shape, dtype=dtype, device=dev)
        a[:, 0] = 1.0
        valid = torch.ones_like(S, dtype=torch.bool)
        live = torch.arange(B, device=dev)
        Sfin = torch.full((B, 1), -1, dtype=torch.long, device=dev)
        afin = torch.zeros((B, 1), dtype=dtype, device=dev)
        pfin = torch.empty((B, f), dtype=dtype, device=dev)
        gfin = torch.full((B,), float("inf"), dtype=dtype, device=dev)
        dfin = torch.empty((B,), dtype=dtype, device=dev)
        cfin = torch.zeros(B, dtype=torch.bool, device=dev)
        for rnd in range(max_rounds + 1):
            stats["rounds"] = max(stats["rounds"], rnd + 1)
            lpr = stats.setdefault("live_per_round", [])
            if len(lpr) <= rnd:
                lpr.append(0)
            lpr[rnd] += int(live.numel())
            ql = qc[live]
            Sc = S.clamp_min(0)
            E = Dc[Sc] - ql[:, None, :]
            E = torch.where(valid[..., None], E, torch.zeros_like(E))
            a, its = _restricted_solve(E, valid, a, inner_max_iter, add_per_iter)
            stats["inner_iterations"] += its
            p = ql + (a[:, :, None] * E).sum(1)  # centered coordinates
            u = ql - p
            # pricing: max_k u·d_k in float64 for the certificate, top k_add as candidates
            vmax, vtop, itop = _price(u, Dc, Dl, dnorm, k_add, k_check, chunk_n)
            stats["pricing_passes"] += 1
            up = (u * p).sum(1)
            gap = (2.0 * (vmax - up)).clamp_min(0)
            d2 = (u * u).sum(1)
            rel = gap / torch.clamp(d2, min=floor2)
            done = rel <= tol
            last = rnd == max_rounds
            fin = done | torch.tensor(last, device=dev)
            if bool(fin.any()):
                idx = live[fin]
                K = S.shape[1]
                if Sfin.shape[1] < K:
                    Sfin = torch.cat([Sfin, torch.full((B, K - Sfin.shape[1]), -1, dtype=torch.long, device=dev)], 1)
                    afin = torch.cat([afin, torch.zeros((B, K - afin.shape[1]), dtype=dtype, device=dev)], 1)
                sf = torch.where(a[fin] > 0, S[fin], torch.full_like(S[fin], -1))
                Sfin[idx] = torch.cat([sf, torch.full((idx.numel(), Sfin.shape[1] - K), -1, dtype=torch.long, device=dev)], 1)
                afin[idx] = torch.cat([torch.where(a[fin] > 0, a[fin], torch.zeros_like(a[fin])),
                                       torch.zeros((idx.numel(), afin.shape[1] - K), dtype=dtype, device=dev)], 1)
                pfin[idx] = p[fin]
                gfin[idx] = gap[fin]
                dfin[idx] = d2[fin].sqrt()
                cfin[idx] = done[fin]
            if last:
                break
            keep = ~fin
            if not bool(keep.any()):
                break
            live = live[keep]
            S, a, valid = S[keep], a[keep], valid[keep]
            vtop, itop, u = vtop[keep], itop[keep], u[keep]
            up = up[keep]
            # new working set: current support + improving candidates not already in it
            supp = (a > 0) & valid
            cand_ok = vtop > up[:, None]
            dup = (itop[:, :, None] == torch.where(supp, S, torch.full_like(S, -1))[:, None, :]).any(2)
            cand_ok &= ~dup
            # compact: support first (by weight), then candidates
            ns = supp.sum(1)
            order = torch.argsort(torch.where(supp, -a, torch.full_like(a, float("inf"))), dim=1, stable=True)
            kmax = int(ns.max())
            S_s = S.gather(1, order[:, :kmax])
            a_s = a.gather(1, order[:, :kmax])
            v_s = torch.arange(kmax, device=dev)[None, :] < ns[:, None]
            S_new = torch.cat([S_s, itop], 1)
            a_new = torch.cat([torch.where(v_s, a_s, torch.zeros_like(a_s)), torch.zeros_like(vtop)], 1)
            val_new = torch.cat([v_s, cand_ok], 1)
            if S_new.shape[1] > max_working:
                # keep the support and as many candidates as fit
                ordr = torch.argsort((~val_new).to(torch.int8), dim=1, stable=True)[:, :max_working]
                S_new, a_new, val_new = S_new.gather(1, ordr), a_new.gather(1, ordr), val_new.gather(1, ordr)
            S = torch.where(val_new, S_new, torch.zeros_like(S_new))
            a, valid = a_new, val_new
            stats["max_working"] = max(stats["max_working"], int(valid.sum(1).max()))
        out_p[q0:q0 + B] = pfin + cen
        out_gap[q0:q0 + B] = gfin
        out_d[q0:q0 + B] = dfin
        out_cert[q0:q0 + B] = cfin
        supp_idx_all.append((Sfin, afin))
    K = max(s_[0].shape[1] for s_ in supp_idx_all) if supp_idx_all else 1
    sidx = torch.full((Qn, K), -1, dtype=torch.long, device=dev)
    sw = torch.zeros((Qn, K), dtype=dtype, device=dev)
    o = 0
    for Sfin, afin in supp_idx_all:
        B, k = Sfin.shape
        order = torch.argsort(-afin, dim=1, stable=True)
        sidx[o:o + B, :k] = Sfin.gather(1, order)
        sw[o:o + B, :k] = afin.gather(1, order)
        o += B
    # trim trailing all-padding columns
    used = int((sidx >= 0).sum(1).max()) if Qn else 0
    sidx, sw = sidx[:, :max(used, 1)], sw[:, :max(used, 1)]
    rel = out_gap / torch.clamp(out_d ** 2, min=floor2)
    lb = torch.where(out_d > 0, (out_d - out_gap / (2 * out_d.clamp_min(1e-300))).clamp_min(0),
                     torch.zeros_like(out_d))
    return HullResult(distance=out_d, projection=out_p, support_index=sidx, support_weight=sw,
                      gap=out_gap, relative_gap=rel, lower_bound=lb, certified=out_cert, stats=stats)
