"""Guaranteed balls (docs/geometry.md): counts of points strictly inside, union coverage, Lipschitz.

Every decision ``||a - b||^2 < rho`` is the float64 test ``sum((a - b)^2) < rho`` (the *direct*
test; the brute-force reference).  To get there fast, all pairs first go through one matrix
product in float32 (a *filter*):

    m = s_b - 2 a·b   compared with   t_a,     where  ||a - b||^2 < rho  <=>  m < t

(ball counts: ``s_b = |b|^2``, ``t_a = r_a^2 - |a|^2``; union: ``s_b = |b|^2 - r_b^2``,
``t_a = -|a|^2``).  The float32 result has a rigorous error bound
``E = (f + 8) u (2 |a| |b| + |s_b|)`` (``u = 2^-24``: rounding of the inputs to float32, the
``f``-term dot product in any summation order, the final addition), so ``m < t - E`` is surely
inside and ``m >= t + E`` surely outside; only the pairs in between (a thin band, typically
far below 0.1% of the pairs) are decided by the direct float64 test.  The counts are therefore
exactly those of the float64 brute force, at the speed of a float32 GEMM.  When float32 matrix
products may run in reduced precision (TF32/bf16: ``torch.get_float32_matmul_precision() !=
"highest"`` or ``torch.backends.cuda.matmul.allow_tf32``), the filter runs in float64 instead.

Pruning by decision region: a ball of radius at most the flip margin of its centre ``c`` (the
guaranteed ball) holds, within the feature domain, only points whose prediction is the class
of ``c`` (possibly tied): a point of another region on the ball's inside would put a boundary
point on the segment to ``c`` closer than the margin.  :func:`region_labels` labels points by
predicted class, with ``-1`` for near-ties and points outside the domain; ``ball_counts`` and
``union_coverage`` given such labels skip every pair of two different non-negative labels.

Streaming: every ``(N, f)`` argument may be a tensor of any float dtype, a numpy array or memory
map, or a row-sliceable array (:mod:`fsl.geometry.stream`).  Both sides are read in blocks of
``chunk_q`` / ``chunk_n`` rows (float32 rows of a float32 input are used as they are, no copy),
the float64 squared norms are computed once (``N`` floats), and the direct float64 test gathers
only the rows of its pairs: no ``(N, f)`` float64 copy is made.  Cost: one filter product of
``2 f`` flops per compatible pair, the norms pass, and ``O(f)`` per pair in the band.
"""
from __future__ import annotations

import torch

from fsl.checks import check_finite

from ._common import as_box, float32_matmul_is_exact, float32_products_fit
from .stream import Rows, as_rows, device_of, row_norms

Tensor = torch.Tensor


def _squared_radii(radii, q: int, device) -> Tensor:
    """``(q,)`` float64 ``r^2``; ``-1`` for non-positive radii (balls that hold nothing); NaN raises."""
    r = torch.as_tensor(radii, device=device).detach().to(torch.float64).reshape(-1)
    if r.numel() == 1 and q != 1:
        r = r.expand(q)
    if r.numel() != q:
        raise ValueError(f"radii: expected {q} values (one per ball), got {r.numel()}")
    if bool(torch.isnan(r).any()):
        bad = torch.nonzero(torch.isnan(r)).flatten()[:5].tolist()
        raise ValueError(f"radii: {int(torch.isnan(r).sum())} NaN radii (first balls: {bad}); a NaN margin is "
                         f"not a radius. Filter those balls or fix the margins")
    return torch.where(r <= 0, torch.full_like(r, -1.0), r * r)


def _prepare(fn: str, a_name: str, A, b_name: str, B, regions_a, regions_b, region_names: tuple[str, str],
             chunk_q, chunk_n):
    """Shared input handling of :func:`ball_counts` and :func:`union_coverage`: row sources on
    ``A``'s device, shape / finiteness / region checks, float64 squared norms, block sizes and the
    filter dtype (float32 when float32 matrix products are exact IEEE float32 on the device and the
    squares cannot overflow float32, :func:`float32_products_fit`; else float64)."""
    dev = device_of(A, B)
    sa, sb = tuple(A.shape), tuple(B.shape)
    if len(sa) != 2 or len(sb) != 2 or sa[1] != sb[1]:
        raise ValueError(f"expected {a_name} (Q, f) and {b_name} (N, f), got {sa} and {sb}")
    Ar, Br = as_rows(A, a_name, dev), as_rows(B, b_name, dev)
    a2, amax = row_norms(Ar, fn, check_finite)
    b2, bmax = row_norms(Br, fn, check_finite)
    ga = _as_groups(regions_a, Ar.n, dev, region_names[0])
    gb = _as_groups(regions_b, Br.n, dev, region_names[1])
    if (ga is None) != (gb is None):
        raise ValueError(f"pass both {region_names[0]} and {region_names[1]}, or neither")
    chunk_q, chunk_n = _default_chunks(dev, chunk_q, chunk_n)
    exact = float32_matmul_is_exact(dev) and float32_products_fit(Ar.f, amax, bmax)
    return Ar, Br, a2, b2, ga, gb, chunk_q, chunk_n, torch.float32 if exact else torch.float64


def _as_groups(groups, n: int, device, name: str) -> Tensor | None:
    if groups is None:
        return None
    g = torch.as_tensor(groups, device=device).reshape(-1).to(torch.long)
    if g.numel() != n:
        raise ValueError(f"{name}: expected {n} labels, got {g.numel()}")
    return g


def _blocks(row_groups: Tensor | None, col_groups: Tensor | None, nrow: int, ncol: int, device):
    """``(rows, cols)`` index pairs covering every pair whose labels are compatible."""
    if row_groups is None or col_groups is None:
        yield torch.arange(nrow, device=device), None  # None: every column
        return
    wild_c = col_groups < 0
    for g in torch.unique(row_groups).tolist():
        rows = torch.nonzero(row_groups == g).squeeze(1)
        cols = None if g < 0 else torch.nonzero((col_groups == g) | wild_c).squeeze(1)
        if rows.numel() and (cols is None or cols.numel()):
            yield rows, cols


def _compatible(row_groups: Tensor | None, col_groups: Tensor | None, rows: Tensor, cols: Tensor) -> Tensor:
    if row_groups is None or col_groups is None:
        return torch.ones(rows.shape, dtype=torch.bool, device=rows.device)
    gr, gc = row_groups[rows], col_groups[cols]
    return (gr < 0) | (gc < 0) | (gr == gc)


def _direct_inside(A: Tensor, B: Tensor, rho: Tensor) -> Tensor:
    """The float64 reference test ``sum((a - b)^2) < rho`` row by row."""
    return ((A - B) ** 2).sum(1) < rho


def _band(M: Tensor, lo: Tensor, hi: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column (within the chunk) of the entries of ``M[rows]`` in the filter's band
    ``lo <= M < hi``: the pairs that need the direct float64 test."""
    Mb = M[rows]
    bi, bj = torch.nonzero((Mb >= lo[rows]) & (Mb < hi[rows]), as_tuple=True)
    return rows[bi], bj


def _filtered_pairs(A: Rows, rows: Tensor, B: Rows, cols: Tensor | None, a2: Tensor, b2: Tensor, s: Tensor,
                    t: Tensor, chunk_q: int, chunk_n: int, dtype):
    """Blocks of the low-precision filter ``m = s_b - 2 a·b`` against ``t_a`` for the rows ``rows`` of
    ``A`` and the columns ``cols`` of ``B`` (``None``: all); ``a2``, ``b2``: squared norms of the rows
    and columns, ``s`` (per column) and ``t`` (per row of ``rows``) in float64.

    Yields ``(q0, n0, M, lo, hi, Aq, cidx)``: ``M`` (rows, cols) in ``dtype``; ``lo``/``hi`` (rows, 1)
    such that ``M < lo`` implies ``m < t`` and ``M >= hi`` implies ``m >= t`` in exact arithmetic;
    ``Aq`` the float64 rows ``rows[q0:...]``; ``cidx`` the global column indices of the block.
    """
    f = A.f
    u = float(torch.finfo(dtype).eps) / 2
    kappa = (f + 8) * u * 1.01
    e64 = 8.0 * float(torch.finfo(torch.float64).eps)  # rounding of t and s themselves (float64)
    an = a2[rows].sqrt()
    t_err = e64 * (t.abs() + an * an)
    ncol = B.n if cols is None else cols.numel()
    for q0 in range(0, rows.numel(), chunk_q):
        Aq = A.take(rows[q0:q0 + chunk_q])
        Al = (-2.0 * Aq).to(dtype)  # fl(-2a) = -2 fl(a): the scaling is exact
        tq, anq = t[q0:q0 + chunk_q], an[q0:q0 + chunk_q]
        for n0 in range(0, ncol, chunk_n):
            n1 = min(n0 + chunk_n, ncol)
            if cols is None:
                cidx = torch.arange(n0, n1, device=Aq.device)
                X = B.chunk(n0, n1, dtype)
            else:
                cidx = cols[n0:n1]
                X = B.take(cidx, dtype)
            sn = s[cidx]
            bmax, smax = b2[cidx].max().sqrt(), sn.abs().max()
            E = kappa * (2.0 * anq * bmax + smax) + t_err[q0:q0 + chunk_q] + e64 * (smax + bmax * bmax)
            lo, hi = tq - E, tq + E
            # rounding lo / hi to the filter's precision must not move them inwards
            lo = (lo - 2 * u * lo.abs()).to(dtype)[:, None]
            hi = (hi + 2 * u * hi.abs()).to(dtype)[:, None]
            M = torch.addmm(sn.to(dtype)[None, :], Al, X.T)
            yield q0, n0, M, lo, hi, Aq, cidx


def _default_chunks(device: torch.device, chunk_q, chunk_n) -> tuple[int, int]:
    if device.type == "cuda":
        return chunk_q or 4096, chunk_n or 32768
    return chunk_q or 512, chunk_n or 4096  # cache-sized blocks: larger ones are slower on the CPU


def region_labels(features: Tensor, weight: Tensor, bias: Tensor, lower=None, upper=None,
                  rel_tol: float = 1e-6) -> Tensor:
    """Decision region of each feature for the pruning of :func:`ball_counts` / :func:`union_coverage`.

    Args:
        features: ``(N, f)``; weight ``(n, f)``, bias ``(n,)``: the head; lower/upper: the domain.
        rel_tol: a prediction whose two largest logits differ by at most ``rel_tol * (1 + max |z|)``
            is a near-tie (it may sit on a boundary within the solvers' tolerances).

    Returns: ``(N,)`` int64, the predicted class, or ``-1`` for near-ties and for features outside
    the domain (such points are compared with every ball).
    """
    dev = device_of(features, weight)
    F = as_rows(features, "features", dev)
    W = weight.detach().to(dev, torch.float64)
    b = bias.detach().to(dev, torch.float64)
    lo, hi = as_box(lower, upper, F.f, torch.float64, dev)
    out = torch.empty(F.n, dtype=torch.long, device=dev)
    for n0, X in F.blocks(8192, torch.float64):
        z = torch.addmm(b, X, W.T)
        pred = z.argmax(1)
        if z.shape[1] > 1:
            top2 = z.topk(2, dim=1).values
            tie = (top2[:, 0] - top2[:, 1]) <= rel_tol * (1.0 + z.abs().amax(1))
        else:
            tie = torch.zeros_like(pred, dtype=torch.bool)
        unsure = tie | ((X < lo) | (X > hi)).any(1) | ~torch.isfinite(z).all(1)
        out[n0:n0 + X.shape[0]] = torch.where(unsure, torch.full_like(pred, -1), pred)
    return out


def ball_counts(centers, radii: Tensor, points, exclude_self=True,
                center_regions: Tensor | None = None, point_regions: Tensor | None = None,
                chunk_q: int | None = None, chunk_n: int | None = None) -> Tensor:
    """Number of ``points`` strictly inside each ball ``||p - c|| < r`` (float64 decisions).

    Args:
        centers: ``(Q, f)``; radii: ``(Q,)`` or a scalar (``inf`` counts every point, ``<= 0``
            counts none, NaN raises); points: ``(N, f)``.  Tensors, numpy arrays or memory maps
            (see the module docstring: streamed, never copied whole).
        exclude_self: ``True``: when ``points`` is ``centers`` (the same tensor, or an equal one),
            point ``q`` is not counted in ball ``q`` (other exact duplicates are counted);
            a ``(Q,)`` long tensor: index of the point to exclude for each center (-1 = none);
            ``False``: count everything.
        center_regions, point_regions: optional ``(Q,)`` / ``(N,)`` labels from
            :func:`region_labels`.  Pass them only for balls that lie in their centre's decision
            region (radius at most the flip margin): pairs with two different non-negative labels
            are then skipped without a test.
        chunk_q, chunk_n: block sizes (default 512 x 4096 on the CPU, 4096 x 32768 on CUDA).

    Returns: ``(Q,)`` int64.
    """
    C, P, c2, p2, cg, pg, chunk_q, chunk_n, dtype = _prepare(
        "ball_counts", "centers", centers, "points", points, center_regions, point_regions,
        ("center_regions", "point_regions"), chunk_q, chunk_n)
    dev = C.device
    Qn, N = C.n, P.n
    r2 = _squared_radii(radii, Qn, dev)
    selfidx = _self_index(exclude_self, C, P)
    counts = torch.zeros(Qn, dtype=torch.long, device=dev)
    everything = torch.isinf(r2)
    nothing = r2 < 0
    if bool(everything.any()):  # infinite radius: every compatible point
        rows = torch.nonzero(everything).squeeze(1)
        if cg is None:
            counts[rows] = N
        else:
            per = torch.bincount(pg[pg >= 0], minlength=int(max(cg.max(), pg.max(), 0)) + 1)
            wild = int((pg < 0).sum())
            g = cg[rows]
            counts[rows] = torch.where(g < 0, torch.full_like(g, N), per[g.clamp_min(0)] + wild)
    live = torch.nonzero(~everything & ~nothing).squeeze(1)
    if live.numel() and N:
        lg = cg[live] if cg is not None else None
        for rows_l, cols in _blocks(lg, pg, live.numel(), N, dev):
            rows = live[rows_l]
            rr = r2[rows]
            out = torch.zeros(rows.numel(), dtype=torch.long, device=dev)
            for q0, n0, M, lo, hi, Aq, cidx in _filtered_pairs(C, rows, P, cols, c2, p2, p2, rr - c2[rows],
                                                               chunk_q, chunk_n, dtype):
                sure = (M < lo).sum(1, dtype=torch.int32)
                maybe = (M < hi).sum(1, dtype=torch.int32)
                out[q0:q0 + M.shape[0]] += sure.long()
                band_rows = torch.nonzero(maybe > sure).squeeze(1)
                if band_rows.numel():
                    qi, bj = _band(M, lo, hi, band_rows)
                    ok = _direct_inside(Aq[qi], P.take(cidx[bj]), rr[qi + q0])
                    out.index_add_(0, qi + q0, ok.long())
            counts[rows] += out
    if selfidx is not None:  # remove the excluded point where it was counted
        q = torch.nonzero(selfidx >= 0).squeeze(1)
        q = q[~nothing[q]]
        if q.numel():
            p = selfidx[q]
            if bool((p >= N).any()):
                raise ValueError(f"exclude_self: index out of range for {N} points")
            counted = _compatible(cg, pg, q, p) & (everything[q] | _direct_inside(C.take(q), P.take(p), r2[q]))
            counts[q] -= counted.long()
    if Qn and int(counts.min()) < 0:  # pragma: no cover - bug guard: a count is never negative
        raise RuntimeError(f"ball_counts: negative count {int(counts.min())}; please report this input")
    return counts


def union_coverage(queries, centers, radii: Tensor, query_regions: Tensor | None = None,
                   center_regions: Tensor | None = None, chunk_q: int | None = None,
                   chunk_n: int | None = None) -> Tensor:
    """``(Q,)`` bool: the query lies strictly inside at least one ball ``||q - c_k|| < r_k``.

    ``queries`` ``(Q, f)`` and ``centers`` ``(N, f)``: tensors, numpy arrays or memory maps (see
    the module docstring).  ``query_regions`` / ``center_regions``: optional labels from
    :func:`region_labels` (see :func:`ball_counts`; valid for balls of radius at most their centre's
    flip margin).
    """
    X, C, x2, c2, qg, cg, chunk_q, chunk_n, dtype = _prepare(
        "union_coverage", "queries", queries, "centers", centers, query_regions, center_regions,
        ("query_regions", "center_regions"), chunk_q, chunk_n)
    dev = X.device
    r2 = _squared_radii(radii, C.n, dev)
    out = torch.zeros(X.n, dtype=torch.bool, device=dev)
    valid = r2 >= 0
    inf_b = torch.isinf(r2)
    if bool(inf_b.any()):  # an infinite ball covers every compatible query
        if qg is None:
            out[:] = True
        else:
            gs = cg[inf_b]
            out |= (qg < 0) | (gs < 0).any() | torch.isin(qg, gs)
    keep = torch.nonzero(valid & ~inf_b).squeeze(1)
    if keep.numel() == 0:
        return out
    s = c2 - r2  # per centre; only the kept ones are read
    for rows, cols in _blocks(qg, cg[keep] if cg is not None else None, X.n, keep.numel(), dev):
        rows = rows[~out[rows]]
        if rows.numel() == 0:
            continue
        cols = keep if cols is None else keep[cols]
        cov = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        for q0, n0, M, lo, hi, Aq, cidx in _filtered_pairs(X, rows, C, cols, x2, c2, s, -x2[rows],
                                                           chunk_q, chunk_n, dtype):
            cq = cov[q0:q0 + M.shape[0]]
            cq |= (M < lo).any(1)
            band_rows = torch.nonzero((M < hi).any(1) & ~cq).squeeze(1)
            if band_rows.numel():
                qi, bj = _band(M, lo, hi, band_rows)
                ok = _direct_inside(Aq[qi], C.take(cidx[bj]), r2[cidx[bj]])
                cov[qi[ok] + q0] = True
        out[rows] |= cov
    return out


def _self_index(exclude_self, centers: Rows, points: Rows) -> Tensor | None:
    dev = centers.device
    if exclude_self is False or exclude_self is None:
        return None
    if isinstance(exclude_self, Tensor):
        idx = exclude_self.to(device=dev, dtype=torch.long).reshape(-1)
        if idx.numel() != centers.n:
            raise ValueError(f"exclude_self: expected {centers.n} indices (one per center), got {idx.numel()}")
        return idx
    if not (centers.same_as(points) or centers.equal(points)):
        return None
    return torch.arange(centers.n, device=dev)


def ambiguity(margin: Tensor, hull_distance: Tensor) -> Tensor:
    """``d_min - d_h`` (docs/geometry.md): the most negative values are the most ambiguous samples."""
    return margin - hull_distance


def lipschitz(weight: Tensor) -> float:
    """Lipschitz constant of the head ``y -> W y + b`` in the 2-norm: ``sigma_max(W)``."""
    return float(torch.linalg.matrix_norm(weight.detach().to(torch.float64), ord=2))
