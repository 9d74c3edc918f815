"""Exact, batched, certified projection onto the convex hull of a point set (docs/geometry.md).

For queries ``q`` and points ``D`` (N x f):

    minimize ||q - a^T D||^2   subject to a >= 0, sum(a) = 1.

Working-set method, all queries batched: fully corrective Frank-Wolfe (simplicial decomposition,
column generation; Lacoste-Julien & Jaggi, "On the Global Linear Convergence of Frank-Wolfe
Optimization Variants", NeurIPS 2015, arXiv:1511.05932), whose restricted problems are solved
exactly by the primal active-set method of Wolfe's minimum-norm-point algorithm (P. Wolfe,
"Finding the nearest point in a polytope", Math. Programming 11, 1976; Lawson & Hanson's NNLS):

1. *Start*: the ``k_init`` nearest points of each query (one pass over ``D``).
2. *Restricted solve*: the QP over the working set ``S`` is solved exactly by a batched primal
   active-set method on the Gram matrix ``G = (D_S - q)(D_S - q)^T``
   (:func:`fsl.geometry._common.simplex_qp`).  ``G`` and the inverse of the support's KKT matrix
   are kept between rounds: a round computes only the rows of its new candidates, and the
   active-set steps update the inverse (``O(K^2)`` each) instead of factorising.
3. *Pricing*: one matrix product over all ``N`` points (in row chunks) gives, for ``u = q - p``,
   ``max_k u·d_k``; the Frank-Wolfe gap ``gap = 2 (max_k u·d_k - u·p)`` bounds
   ``||q - p||^2 - d*^2`` from above (a certificate), and the best candidates join ``S`` (at least
   ``k_add``, and ``grow`` times the support size).  Points with zero weight leave ``S``.  Repeat
   until certified.  The pass runs in float32 where float32 products are exact IEEE float32; its
   rounding is bounded and every possible maximiser is rescored in float64, so the gap is the
   float64 one (see :class:`fsl.geometry.stream.Pricer`).

Certificate: ``relative_gap = gap / max(||q - p||^2, (1e-3 R)^2)`` where ``R`` is the RMS
distance of the points to their centroid; ``certified`` means
``relative_gap <= tol`` (default 1e-6).  So a certified query has ``d^2 <= d*^2 + tol * max(d^2,
1e-6 R^2)``: relative accuracy when the query is outside the hull, and an absolute accuracy of
about ``1e-6 R`` on the distance for queries inside (distance 0) or extremely close to it.
The returned ``lower_bound = max(0, ||u|| - gap / (2 ||u||))`` is the separating-hyperplane bound.

Streaming: ``points`` may be a tensor, a numpy array or a memory map (:mod:`fsl.geometry.stream`);
they are only ever read in row chunks (the statistics, the seeding pass and every pricing pass)
and gathered by index (working sets and rescored candidates, in float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fsl.checks import check_finite

from ._common import float32_matmul_is_exact, float32_products_fit, simplex_qp
from .stream import Pricer, as_rows, centered_stats

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


def _solve_working_sets(pr: Pricer, qc: Tensor, S: Tensor, valid: Tensor, a: Tensor, G: Tensor, k_old: int,
                        H: Tensor | None, c: Tensor | None, max_iter: int, add_per_iter: int):
    """Exact projections onto the working sets, in blocks of queries: gathers the rows ``d - q`` of
    ``S`` (float64) once, fills the Gram columns ``k_old:`` of ``G`` (zero for invalid entries),
    solves (:func:`simplex_qp`, ``a`` in place, from the inverses ``H`` of the previous supports) and
    returns ``u = q - p = -a^T (D_S - q)`` ``(L, f)``, the new ``H`` and ``c`` and the largest number
    of active-set iterations."""
    L, K = S.shape
    u = torch.empty_like(qc)
    Hn = torch.empty((L, K, K), dtype=G.dtype, device=G.device)
    cn = torch.empty(L, dtype=G.dtype, device=G.device)
    its = 0
    step = pr.block_rows(K)
    for l0 in range(0, L, step):
        sl = slice(l0, l0 + step)
        E = pr.offsets(S[sl], qc[sl])  # invalid entries hold row 0: masked in G, weight 0 in a
        if k_old < K:
            C = torch.bmm(E[:, k_old:], E.transpose(1, 2))  # (l, K - k_old, K)
            C.mul_(valid[sl, k_old:, None] & valid[sl, None, :])
            G[sl, k_old:, :] = C
            G[sl, :k_old, k_old:] = C[:, :, :k_old].transpose(1, 2)
        _, it, Hn[sl], cn[sl] = simplex_qp(G[sl], valid[sl], a[sl], max_iter, add_per_iter,
                                           None if H is None else H[sl], None if c is None else c[sl])
        u[sl] = torch.bmm(a[sl, None, :], E).squeeze(1).neg_()
        its = max(its, it)
    return u, Hn, cn, its


def hull_distances(queries: Tensor, points, tol: float = 1e-6, k_init: int = 16,
                   k_add: int = 8, max_rounds: int = 100, max_working: int | None = None,
                   chunk_q: int = 2048, chunk_n: int = 16384, dtype: torch.dtype = torch.float64,
                   pricing_dtype: torch.dtype | None = None, inner_max_iter: int = 500,
                   add_per_iter: int = 4, k_check: int = 32, *, grow: float = 0.75,
                   gather_mb: int = 256) -> HullResult:
    """Distance from each query to the convex hull of ``points``, with a certified gap.

    Args:
        queries: ``(Q, f)`` tensor (any float dtype / device: the computation runs there).
        points: ``(N, f)``: a tensor of any float dtype / device, a numpy array or memory map, or
            a row-sliceable array (see :mod:`fsl.geometry.stream`); read in chunks, never copied
            whole.
        tol: relative duality-gap tolerance for ``certified`` (see the module docstring).
        k_init: nearest points that seed the working set; k_add: fewest points added per round;
            grow: a round adds up to ``max(k_add, grow * support size)`` improving points (16 and
            0.75: fewer pricing passes than 8 and 0.5 at f >= 512 for the same time per query at
            f = 64; docs/geometry.md has the measurements).
        add_per_iter: indices joining the active set per active-set step (4: fewer, larger steps
            than 2 at the same speed on an idle machine, and fewer small operations, which matters
            on a busy 2-core machine; 8 is a few percent faster at f = 2,048 and a fifth slower at
            f = 64).
        max_rounds: pricing rounds (each one pass over ``points`` for the unfinished queries).
        max_working: cap on the working-set size (default ``max(64, f + 1 + 2 k_add)``).
        chunk_q, chunk_n: query / point chunk sizes of the pricing matmul (memory
            ``chunk_q * chunk_n`` scores).
        dtype: computation dtype (float64).
        pricing_dtype: dtype of the pricing pass over all points (default float32 where float32
            matrix products are IEEE float32, i.e. ``torch.get_float32_matmul_precision() ==
            "highest"`` and no TF32, and cannot overflow; else ``dtype``).  The certificate stays
            exact: the rounding of the pass is bounded and every point that could be the maximiser
            within that bound is rescored in ``dtype`` (see :class:`fsl.geometry.stream.Pricer`).
        k_check: float32 scores kept per query and pass (at least the candidates): the rescoring
            pool of :class:`fsl.geometry.stream.Pricer` (more near-maximisers trigger a wider pass).
        gather_mb: size of the blocks of float64 rows gathered at once (working sets, rescoring).

    Cost: ``rounds + 1`` passes of ``2 Q N f`` flops (float32 GEMM, the unfinished queries only;
    typically 6-20 rounds: 8 on the synthetic benchmarks, 18 on Fashion-MNIST's 64-d features) and
    two statistics passes over the points; per round and query, ``K`` gathered float64 rows ``d - q``
    (``K`` the working-set size: the support plus the new candidates; gathered, converted and
    shifted a few queries at a time into a reused workspace),
    ``O(m K f)`` flops for the ``m`` new Gram rows, ``O(K^2)`` per active-set step and a few rescored
    candidates.  Memory beyond the inputs: ``N`` float64 squared norms, a ``chunk_q x chunk_n``
    float32 score block, blocks of a few times ``gather_mb`` of gathered rows, and two float64
    ``chunk_q x K x K`` arrays (the Gram matrices and the inverses); float64 ``points`` also get a
    centred float32 copy (half their size).  Never an ``(N, f)`` float64 array: for float32 points
    the whole call stays within about the size of the points (measured in the tests).
    """
    dev = queries.device
    Qx = queries.detach().to(dtype)
    rows = as_rows(points, "points", dev)
    if Qx.ndim != 2 or rows.f != Qx.shape[1]:
        raise ValueError(f"hull_distances: expected queries (Q, f) and points (N, f), got {tuple(Qx.shape)} and "
                         f"{rows.shape}")
    if rows.n == 0:
        raise ValueError("hull_distances: no points; the convex hull of an empty set is empty (pass at least one "
                         "training feature)")
    check_finite("hull_distances queries", Qx)
    N, f = rows.shape
    Qn = Qx.shape[0]
    if max_working is None:
        max_working = max(64, min(N, f + 1 + 2 * k_add))
    max_working = min(max_working, N)
    k_init, k_add = min(k_init, N), min(k_add, N)
    st = centered_stats(rows, "hull_distances", check_finite)  # also checks that the points are finite
    cen = st["cen"]
    Qc = Qx - cen
    if pricing_dtype is None:  # float32 pricing only where float32 products are IEEE float32 and cannot overflow
        exact32 = float32_matmul_is_exact(dev) and float32_products_fit(f, 2 * st["absmax"], Qc)
        pricing_dtype = torch.float32 if (exact32 and dtype == torch.float64) else dtype
    R = math.sqrt(float(st["n2"].mean()))
    R = R if R > 0 else 1.0
    floor2 = (1e-3 * R) ** 2
    pr = Pricer(rows, st, pricing_dtype, dtype, chunk_n, gather_mb)

    out_p = torch.empty((Qn, f), dtype=dtype, device=dev)
    out_gap = torch.full((Qn,), float("inf"), dtype=dtype, device=dev)
    out_d = torch.empty((Qn,), dtype=dtype, device=dev)
    out_cert = torch.zeros(Qn, dtype=torch.bool, device=dev)
    stats = dict(rounds=0, pricing_passes=0, max_working=0, inner_iterations=0, R=R, inside_tol=1e-6 * R,
                 live_per_round=[])
    supp_all = []
    for q0 in range(0, Qn, chunk_q):
        qc = Qc[q0:q0 + chunk_q]
        B = qc.shape[0]
        S = pr.seed(qc, k_init)  # (B, K): nearest first
        a = torch.zeros(S.shape, dtype=dtype, device=dev)
        a[:, 0] = 1.0
        valid = torch.ones_like(S, dtype=torch.bool)
        G = torch.zeros((B,) + S.shape[1:] * 2, dtype=dtype, device=dev)
        k_old = 0  # Gram columns computed so far
        H = c = None  # inverses of the supports' KKT matrices (simplex_qp), kept between rounds
        live = torch.arange(B, device=dev)
        Sfin = torch.full((B, 1), -1, dtype=torch.long, device=dev)
        afin = torch.zeros((B, 1), dtype=dtype, device=dev)
        for rnd in range(max_rounds + 1):
            lpr = stats["live_per_round"]
            lpr += [0] * (rnd + 1 - len(lpr))
            lpr[rnd] += int(live.numel())
            ql = qc[live]
            u, H, c, its = _solve_working_sets(pr, ql, S, valid, a, G, k_old, H, c, inner_max_iter, add_per_iter)
            p = ql - u
            stats["inner_iterations"] += its
            # support first (by decreasing weight), the rest leaves
            supp = (a > 0) & valid
            ns = supp.sum(1)
            order = torch.argsort(torch.where(supp, -a, torch.full_like(a, float("inf"))), dim=1, stable=True)
            kmax = max(int(ns.max()), 1)
            o = order[:, :kmax]
            S, a = S.gather(1, o), a.gather(1, o)
            valid = torch.arange(kmax, device=dev)[None, :] < ns[:, None]
            a = torch.where(valid, a, torch.zeros_like(a))
            S = torch.where(valid, S, torch.zeros_like(S))
            G = G.gather(1, o[:, :, None].expand(-1, -1, G.shape[2])).gather(2, o[:, None, :].expand(-1, kmax, -1))
            G = G * (valid[:, :, None] & valid[:, None, :])
            H = H.gather(1, o[:, :, None].expand(-1, -1, H.shape[2])).gather(2, o[:, None, :].expand(-1, kmax, -1))
            up = (u * p).sum(1)
            d2 = (u * u).sum(1)
            scale = torch.clamp(d2, min=floor2)
            last = rnd == max_rounds
            vthr = up + 0.5 * tol * scale * (1 + 1e-9) if not last else torch.full_like(up, float("inf"))
            m = min(max(k_add, int(math.ceil(grow * kmax))), max(max_working - 1, 1))
            # exact scores of the support: u·(d_k - c) = u·q - (G a)_k  (u = -sum_j a_j (d_j - q))
            sS = (u * ql).sum(1, keepdim=True) - torch.bmm(G, a[:, :, None]).squeeze(2)
            sS = torch.where(valid, sS, torch.full_like(sS, -math.inf))
            vmax, vtop, itop, exact = pr.price(u, m, k_check, vthr, torch.where(valid, S, -1), sS)
            gap = (2.0 * (vmax - up)).clamp_min(0)
            done = (gap / scale <= tol) & exact
            fin = done | last
            if bool(fin.any()):
                idx = live[fin]
                if Sfin.shape[1] < kmax:
                    pad = kmax - Sfin.shape[1]
                    Sfin = torch.cat([Sfin, torch.full((B, pad), -1, dtype=torch.long, device=dev)], 1)
                    afin = torch.cat([afin, torch.zeros((B, pad), dtype=dtype, device=dev)], 1)
                Sfin[idx] = -1
                afin[idx] = 0.0
                Sfin[idx, :kmax] = torch.where(valid[fin], S[fin], torch.full_like(S[fin], -1))
                afin[idx, :kmax] = a[fin]
                out_p[q0 + idx] = p[fin] + cen
                out_gap[q0 + idx] = gap[fin]
                out_d[q0 + idx] = d2[fin].sqrt()
                out_cert[q0 + idx] = done[fin]
            keep = ~fin
            if last or not bool(keep.any()):
                break
            live, S, a, valid, G, H, c = live[keep], S[keep], a[keep], valid[keep], G[keep], H[keep], c[keep]
            vtop, itop, up = vtop[keep], itop[keep], up[keep]
            # new working set: the support, then the improving candidates not already in it
            cand_ok = (vtop > up[:, None]) & ~(itop[:, :, None] == torch.where(valid, S, -1)[:, None, :]).any(2)
            room = max(max_working - kmax, 0)
            if itop.shape[1] > room:  # keep the support and the best candidates that fit
                ordr = torch.argsort((~cand_ok).to(torch.int8), dim=1, stable=True)[:, :room]
                itop, cand_ok = itop.gather(1, ordr), cand_ok.gather(1, ordr)
            S = torch.cat([S, torch.where(cand_ok, itop, torch.zeros_like(itop))], 1)
            a = torch.cat([a, torch.zeros(itop.shape, dtype=dtype, device=dev)], 1)
            valid = torch.cat([valid, cand_ok], 1)
            Gn = torch.zeros((G.shape[0],) + S.shape[1:] * 2, dtype=dtype, device=dev)
            Gn[:, :kmax, :kmax] = G
            Hn = torch.diag_embed(torch.ones(S.shape, dtype=dtype, device=dev))
            Hn[:, :kmax, :kmax] = H
            G, H, k_old = Gn, Hn, kmax
            stats["max_working"] = max(stats["max_working"], int(valid.sum(1).max()))
        stats["rounds"] = max(stats["rounds"], rnd + 1)
        supp_all.append((Sfin, afin))
    stats.update(pricing_passes=pr.passes, float64_passes=pr.f64_passes, rescored=pr.rescored,
                 pricing_dtype=str(pricing_dtype).replace("torch.", ""), raw_pricing=pr.raw)
    K = max(s_[0].shape[1] for s_ in supp_all) if supp_all else 1
    sidx = torch.full((Qn, K), -1, dtype=torch.long, device=dev)
    sw = torch.zeros((Qn, K), dtype=dtype, device=dev)
    o = 0
    for Sfin, afin in supp_all:
        B, k = Sfin.shape
        sidx[o:o + B, :k] = Sfin
        sw[o:o + B, :k] = afin
        o += B
    used = int((sidx >= 0).sum(1).max()) if Qn else 0
    sidx, sw = sidx[:, :max(used, 1)], sw[:, :max(used, 1)]
    rel = out_gap / torch.clamp(out_d ** 2, min=floor2)
    lb = torch.where(out_d > 0, (out_d - out_gap / (2 * out_d.clamp_min(1e-300))).clamp_min(0),
                     torch.zeros_like(out_d))
    return HullResult(distance=out_d, projection=out_p, support_index=sidx, support_weight=sw,
                      gap=out_gap, relative_gap=rel, lower_bound=lb, certified=out_cert, stats=stats)
