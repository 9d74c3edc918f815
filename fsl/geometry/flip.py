"""Exact, batched, certified flip points and margins in feature space (docs/geometry.md).

For a feature ``x`` with predicted class ``i`` and each ``j != i`` we solve

    minimize   ||y - x||^2
    subject to (w_i - w_j)·y + (b_i - b_j)  = 0
               (w_i - w_k)·y + (b_i - b_k) >= 0      k not in {i, j}
               lower <= y <= upper

Write ``a_k = w_i - w_k`` and ``r_k(y) = a_k·y + c_k`` (the logit gaps). Stages, all batched:

1. *Relaxation* ``r_j(x) / ||a_j||`` (distance to the unbounded hyperplane): a lower bound,
   returned as ``lower_bound``; never returned as the answer.
2. *One-constraint stage* (:mod:`fsl.geometry.flip_project`): the exact solution with only the
   equality row and the box, by a monotone 1-D Newton iteration whose first step is the hyperplane
   projection inside the box. When that point satisfies every other class constraint it is the
   exact answer (KKT holds with zero multipliers): the common case.
3. *Working-set dual* (:mod:`fsl.geometry.flip_dual`) for the remaining pairs: a projected
   semismooth Newton method on the Lagrange dual over the equality row and the class constraints
   found violated, checked against all ``n - 1`` classes after each solve; a diverging dual is
   recognised by a verified Farkas certificate.

**The margin** ``min_j d_j`` needs far less (``margin_only``). With ``d1_j`` the one-constraint
distance, ``min_j d_j = min_j d1_j``: the segment from ``x`` to the minimiser's one-constraint point
lies in the box, and if it crossed another boundary ``z_i = z_k`` that crossing would be a point of
``{z_i <= z_k}`` closer than ``d1``, i.e. ``d1_k`` smaller. So the margin is a minimum of
one-constraint distances, no dual needed, and pairs are pruned by bounds: the hyperplane bounds
``r_j(x)/||a_j|| <= d1_j`` of all pairs come from one product with the head; the ``candidates``
pairs with the smallest bounds are solved and checked, and the first crossing of another boundary
on each segment ``[x, y]`` bounds the margin from above (``U``); only the pairs with a bound below
``U`` are solved, and the minimiser's point is checked against all ``n`` classes.

Certificates (``certified``):

* feasible pair: ``y`` lies in the box by construction, ``|r_j(y)| <= feas_tol * scale``,
  ``r_k(y) >= -feas_tol * scale`` for all ``k``, ``mu`` is dual feasible, and the duality gap, i.e.
  the difference between ``||y - x||`` and the weak-duality bound ``sqrt(2 g(mu))``, is at most
  ``gap_tol * (1 + ||y - x||)``;
* infeasible pair (distance ``+inf``): ``d`` with ``d_k >= 0`` (k != j) such that
  ``sup_{lower <= y <= upper} d·(A y + c) < 0``; entries of ``A^T d`` below
  ``1e-12 * ||A|| ||d||`` in magnitude count with their worst sign;
* a pair skipped by ``margin_only``: its lower bound is at least the certified margin.

Pairs that pass no test have ``certified = False`` (never silently returned as right).

Cost: ``O(N n f)`` for the bounds; the one-constraint stage ``O(f)`` per pair and Newton step;
full distances check every pair against all classes, ``O(N n^2 f)``; the margin checks ``candidates
+ 1`` points per sample, ``O(N (candidates + 1) n f)`` plus ``O(f)`` per pair not pruned. Memory is
bounded by ``memory_budget`` (pairs per block), never ``(N, n, f)`` or ``(pairs, n, f)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fsl.checks import check_finite

from ._common import as_box
from .flip_dual import dominated, solve_pairs
from .flip_project import project_block

Tensor = torch.Tensor

#: default bytes of the working tensors of one block (samples x classes x features)
BUDGET_CPU = 256 * 2 ** 20
BUDGET_CUDA = 2 * 2 ** 30


@dataclass
class FlipResult:
    """Output of :func:`flip_margins`; tensors live on the input's device.

    Attributes:
        distances: ``(B, n)`` float64; NaN at the predicted class and at pairs skipped by
            ``margin_only``, ``+inf`` where the ``pred|j`` boundary does not exist in the domain.
        margin: ``(B,)`` ``min_j distances`` (``+inf`` if no boundary exists at all).
        closest: ``(B,)`` int64 class attaining the margin (``-1`` if the margin is ``+inf``).
        pred: ``(B,)`` int64 predicted class (first argmax of the logits).
        certified: ``(B, n)`` bool; True at the predicted class.  False flags an answer that could
            not be verified (never silently returned as right).
        lower_bound: ``(B, n)`` the hyperplane relaxation ``r_j(x)/||w_i - w_j||`` (NaN at pred);
            for a skipped pair the bound that let it be skipped.
        points: ``(B, n, f)`` flip points when requested, NaN rows where undefined.
        multipliers: ``(B, n, n)`` dual multipliers ``mu`` (indexed by constraint class ``k``)
            when ``return_points`` is set, else None.
        stats: counts per stage (``pairs``, ``one_constraint``, ``newton``, ``infeasible``,
            ``uncertified``, ``newton_iterations``, ``skipped``, ``solved`` one-constraint problems,
            ``working_set`` largest working set, ``blocks``).
    """

    distances: Tensor
    margin: Tensor
    closest: Tensor
    pred: Tensor
    certified: Tensor
    lower_bound: Tensor
    points: Tensor | None = None
    multipliers: Tensor | None = None
    stats: dict = field(default_factory=dict)

    @property
    def all_certified(self) -> bool:
        return bool(self.certified.all())


def _pair_bytes(f: int, n: int, itemsize: int) -> int:
    """Bytes of the block tensors per pair: rows, squares, masks, points (~6 f) and logits (~3 n)."""
    return itemsize * (6 * f + 3 * n) + 64


def _blocks(n_slots: int, rows: int, budget: int, per_pair: int) -> int:
    """Class slots per block so that ``rows x slots`` pairs fit the budget (at least 1)."""
    return max(1, min(n_slots, budget // max(1, rows * per_pair)))


class _Out:
    """The (B, n) outputs being filled."""

    def __init__(self, B, n, f, dtype, dev, points):
        self.dist = torch.full((B, n), float("nan"), dtype=dtype, device=dev)
        self.lowb = torch.full((B, n), float("nan"), dtype=dtype, device=dev)
        self.cert = torch.ones((B, n), dtype=torch.bool, device=dev)
        self.pred = torch.empty(B, dtype=torch.long, device=dev)
        self.pts = torch.full((B, n, f), float("nan"), dtype=dtype, device=dev) if points else None
        self.mus = torch.zeros((B, n, n), dtype=dtype, device=dev) if points else None

    def put(self, rows, cls, blk: "object", ok: Tensor):
        """Record the one-constraint points of a block where ``ok`` (exact pairs)."""
        s, k = torch.nonzero(ok, as_tuple=True)
        rs, js = rows[s], cls[s, k]
        self.dist[rs, js] = blk.d[s, k]
        if self.pts is not None:
            self.pts[rs, js] = blk.y[s, k]
            self.mus[rs, js, js] = -blk.t[s, k]


def flip_margins(features: Tensor, weight: Tensor, bias: Tensor, lower=None, upper=None,
                 return_points: bool = False, dtype: torch.dtype = torch.float64,
                 chunk_size: int | None = None, max_iter: int = 100, feas_tol: float = 1e-11,
                 gap_tol: float = 1e-9, farkas_tol: float = 1e-12, ls_steps: int = 16,
                 newton_chunk: int | None = None, margin_only: bool = False,
                 memory_budget: int | None = None, candidates: int = 8) -> FlipResult:
    """Exact distances from each feature to every decision boundary of its predicted class.

    Args:
        features: ``(B, f)`` feature vectors (any float dtype / device).
        weight: ``(n, f)`` head weight; ``bias``: ``(n,)``.
        lower, upper: feature domain, scalars or ``(f,)`` tensors, ``None`` = unbounded.
        return_points: also return the flip points ``(B, n, f)`` and the multipliers ``(B, n, n)``
            (memory grows with them: for small problems and gradients).
        dtype: computation dtype (float64 default).
        chunk_size: at most this many samples per block (default 1024 on the CPU, where larger
            blocks leave the cache, 16384 on CUDA); ``memory_budget`` may make blocks smaller.
        newton_chunk: at most this many pairs per batch of the dual stage (default from the budget).
        max_iter: Newton iterations of the dual stage.
        feas_tol: primal feasibility tolerance, relative to ``1 + max_k |z_k(y)|``.
        gap_tol: duality-gap tolerance on the distance, relative to ``1 + distance``.
        farkas_tol: the Farkas certificate needs ``sup d·r < -farkas_tol * (1 + sum |d_k c_k|)``.
        margin_only: only the margin (and its pair) must be exact: the pruned path of the module
            docstring. Pairs not solved exactly have distance NaN, ``certified`` True and a bound
            ``>=`` the margin in ``lower_bound`` (``stats["skipped"]`` counts them); ``margin``,
            ``closest`` and the margin pair's point and multiplier are those of the full solve.
        memory_budget: bytes for the tensors of one block of pairs (default 256 MiB on the CPU,
            2 GiB on CUDA); the answers do not depend on it.
        candidates: with ``margin_only``, pairs per sample solved and checked first (smallest
            hyperplane bounds) to bound the margin from above (all pairs up to ``2 candidates + 1``
            classes).
    """
    dev = features.device
    X = features.detach()  # converted to ``dtype`` block by block: no full float64 copy of the input
    W = weight.detach().to(device=dev, dtype=dtype)
    b = bias.detach().to(device=dev, dtype=dtype)
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[1] or b.shape != (W.shape[0],):
        raise ValueError(f"flip_margins: expected features (B, f), weight (n, f), bias (n,), got "
                         f"{tuple(X.shape)}, {tuple(W.shape)}, {tuple(b.shape)}")
    # a NaN feature would otherwise come back as margin +inf, "certified": a perfectly robust sample
    check_finite("flip_margins features", X)
    check_finite("flip_margins weight", W)
    check_finite("flip_margins bias", b)
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"flip_margins: memory_budget must be a positive number of bytes, got {memory_budget}")
    B, f = X.shape
    n = W.shape[0]
    cuda = dev.type == "cuda"
    budget = int(memory_budget or (BUDGET_CUDA if cuda else BUDGET_CPU))
    per_pair = _pair_bytes(f, n, torch.finfo(dtype).bits // 8)
    chunk = max(1, min(chunk_size or (16384 if cuda else 1024), budget // (per_pair * max(n, 1)) or 1))
    lo, hi = as_box(lower, upper, f, dtype, dev)
    sq = (W * W).sum(1)
    Wd2 = (sq[:, None] + sq[None, :] - 2.0 * (W @ W.T)).clamp_min(0)  # ||w_i - w_k||^2 (n, n)
    Wnorm = float(W.abs().max()) if W.numel() else 1.0
    opts = dict(ls_steps=ls_steps, max_iter=max_iter, feas_tol=feas_tol, gap_tol=gap_tol, farkas_tol=farkas_tol)
    out = _Out(B, n, f, dtype, dev, return_points)
    stats = dict(pairs=B * max(n - 1, 0), one_constraint=0, newton=0, infeasible=0, uncertified=0,
                 newton_iterations=0, skipped=0, solved=0, working_set=0, blocks=0)
    ar = torch.arange(n, device=dev)
    hard = []  # pairs left to the dual: (sample, j, i, mu_j)
    fallback = []  # margin_only samples whose minimiser failed its check: solved in full
    for s0 in range(0, B, chunk):
        rows = torch.arange(s0, min(B, s0 + chunk), device=dev)
        Xc = X[s0:s0 + rows.numel()].to(dtype)
        logits = torch.addmm(b, Xc, W.T)
        pc = logits.argmax(1)
        out.pred[rows] = pc
        if margin_only:
            fallback.append(_margin_chunk(rows, Xc, pc, logits, W, b, lo, hi, Wd2, sq, feas_tol, budget,
                                          per_pair, candidates, out, stats))
            continue
        K = _blocks(n, rows.numel(), budget, per_pair)
        s1 = s0 + rows.numel()
        for k0 in range(0, n, K):
            cls = ar[k0:k0 + K][None, :]  # the same classes for every sample of the chunk
            blk = project_block(Xc, pc, cls, W, b, lo, hi, feas_tol, check=True)
            stats["blocks"] += 1
            isp = cls == pc[:, None]
            ok = blk.feasible
            k1 = k0 + cls.shape[1]
            out.dist[s0:s1, k0:k1] = torch.where(ok, blk.d, float("nan"))
            if return_points:
                out.pts[s0:s1, k0:k1] = torch.where(ok[..., None], blk.y, float("nan"))
                out.mus[s0:s1, k0:k1, k0:k1] = torch.diag_embed(torch.where(ok, -blk.t, 0.0))
            out.lowb[s0:s1, k0:k1] = blk.lb
            out.cert[s0:s1, k0:k1] = ok | isp
            stats["one_constraint"] += int(ok.sum())
            stats["solved"] += int((~isp).sum())
            s, k = torch.nonzero(~ok & ~isp, as_tuple=True)
            if s.numel():
                hard.append((rows[s], k + k0, pc[s], -blk.t[s, k]))
    if hard:
        _dual_stage(hard, X, W, b, lo, hi, Wd2, Wnorm, opts, budget, newton_chunk, cuda, out, stats)
    redo = torch.cat(fallback) if fallback else torch.empty(0, dtype=torch.long, device=dev)
    if redo.numel():  # rare: solve those samples in full and take their rows
        full = flip_margins(X[redo], W, b, lo, hi, return_points=return_points, dtype=dtype, chunk_size=chunk_size,
                            max_iter=max_iter, feas_tol=feas_tol, gap_tol=gap_tol, farkas_tol=farkas_tol,
                            ls_steps=ls_steps, newton_chunk=newton_chunk, memory_budget=memory_budget)
        out.dist[redo], out.lowb[redo], out.cert[redo] = full.distances, full.lower_bound, full.certified
        if return_points:
            out.pts[redo], out.mus[redo] = full.points, full.multipliers
        for key in ("newton", "infeasible", "newton_iterations"):
            stats[key] += full.stats[key]
        stats["fallback"] = int(redo.numel())
    isp_all = ar[None, :] == out.pred[:, None]
    stats["skipped"] = int((torch.isnan(out.dist) & ~isp_all).sum())
    stats["uncertified"] = int((~out.cert).sum())
    dd = torch.nan_to_num(out.dist, nan=float("inf"))
    margin, closest = dd.min(1) if n else (torch.full((B,), float("inf"), dtype=dtype, device=dev),
                                           torch.full((B,), -1, dtype=torch.long, device=dev))
    closest = torch.where(torch.isinf(margin), torch.full_like(closest, -1), closest)
    return FlipResult(distances=out.dist, margin=margin, closest=closest, pred=out.pred, certified=out.cert,
                      lower_bound=out.lowb, points=out.pts, multipliers=out.mus, stats=stats)


def _dual_stage(hard, X, W, b, lo, hi, Wd2, Wnorm, opts, budget, newton_chunk, cuda, out, stats):
    """The working-set dual on every pair the one-constraint stage left, in budget-sized batches."""
    hs, hj, hi_, hm = (torch.cat([h[q] for h in hard]) for q in range(4))
    n, f = W.shape
    # a class some other class beats on the whole domain has no boundary with anyone: +inf, certified
    js, inv = torch.unique(hj, return_inverse=True)
    dom = dominated(js, W, b, lo, hi, Wnorm, opts["farkas_tol"], budget)[inv]
    if bool(dom.any()):
        out.dist[hs[dom], hj[dom]] = float("inf")
        out.cert[hs[dom], hj[dom]] = True
        stats["infeasible"] += int(dom.sum())
        hs, hj, hi_, hm = hs[~dom], hj[~dom], hi_[~dom], hm[~dom]
    stats["newton"] = int(hs.numel())
    m = min(max(n - 1, 1), 32)
    per = W.element_size() * f * (3 * m + 4 * opts["ls_steps"] + 4 + n // max(f, 1)) + 64
    step = max(1, min(newton_chunk or (65536 if cuda else 8192), budget // per))
    for q0 in range(0, hs.numel(), step):
        sl = slice(q0, q0 + step)
        qs, qj, qi = hs[sl], hj[sl], hi_[sl]
        y, d, cert, inf, mu, its, rows = solve_pairs(X[qs].to(W.dtype), qi, qj, hm[sl], W, b, lo, hi, Wd2, Wnorm, opts)
        stats["newton_iterations"] = max(stats["newton_iterations"], its)
        stats["working_set"] = max(stats["working_set"], rows)
        stats["infeasible"] += int(inf.sum())
        out.dist[qs, qj] = d
        out.cert[qs, qj] = cert
        if out.pts is not None:
            out.pts[qs, qj] = torch.where(torch.isinf(d)[:, None], torch.full_like(y, float("nan")), y)
            out.mus[qs, qj] = mu


def _margin_chunk(rows, Xc, pc, logits, W, b, lo, hi, Wd2, sq, feas_tol, budget, per_pair, candidates,
                  out, stats) -> Tensor:
    """The pruned margin path of :func:`flip_margins` on one chunk of samples; returns the rows whose
    minimiser failed its check (to be solved in full)."""
    Bc, n = logits.shape
    f = Xc.shape[1]
    dev, dt = Xc.device, Xc.dtype
    ar = torch.arange(n, device=dev)
    isp = ar[None, :] == pc[:, None]
    r0 = logits.gather(1, pc[:, None]) - logits  # r_k(x) >= 0
    # hyperplane bounds for every pair from the Gram matrix; its rounding (at most ~4 f eps
    # (|w_i|^2 + |w_k|^2)) is added so the bound stays below the true one
    eps = torch.finfo(dt).eps
    an2 = Wd2[pc] + 8.0 * (f + 2) * eps * (sq[pc][:, None] + sq[None, :])
    lbp = torch.where(an2 > 0, r0.clamp_min(0) / an2.sqrt(), torch.where(r0 > 0, float("inf"), 0.0))
    lbp = lbp * (1.0 - 1e-12)
    lbp = torch.where(isp, torch.full_like(lbp, float("inf")), lbp)
    out.lowb[rows] = torch.where(isp, torch.full_like(lbp, float("nan")), lbp)
    d1 = torch.full((Bc, n), float("inf"), dtype=dt, device=dev)  # one-constraint distances found
    unreach = torch.zeros((Bc, n), dtype=torch.bool, device=dev)
    verified = torch.zeros((Bc, n), dtype=torch.bool, device=dev)  # exact: checked against all classes
    # few classes: check them all (no upper bound, no second round)
    k1 = max(n - 1, 1) if n - 1 <= 2 * candidates else max(1, candidates)
    cls1 = torch.topk(lbp, k1, dim=1, largest=False).indices
    cls1 = torch.where(isp.gather(1, cls1), pc[:, None], cls1)  # n == 1: no pair
    U = torch.full((Bc,), float("inf"), dtype=dt, device=dev)
    K = _blocks(k1, Bc, budget, per_pair)
    for k0 in range(0, k1, K):
        cl = cls1[:, k0:k0 + K]
        # the upper bound only serves to prune pairs outside the candidates
        blk = project_block(Xc, pc, cl, W, b, lo, hi, feas_tol, check=True, r0=r0 if k1 < n - 1 else None)
        stats["blocks"] += 1
        _record(blk, cl, pc, d1, unreach)
        if blk.crossing is not None:
            U = torch.minimum(U, blk.crossing.amin(1))
        out.put(rows, cl, blk, blk.feasible)  # exact pairs (the checked candidates)
        verified.scatter_(1, cl, blk.feasible)
        stats["one_constraint"] += int(blk.feasible.sum())
        stats["solved"] += int((cl != pc[:, None]).sum())
    # every pair whose bound is below the upper bound may hold the margin
    todo = (lbp <= U[:, None] * (1.0 + 1e-9)) & torch.isinf(d1) & ~unreach & ~isp
    todo.scatter_(1, cls1, False)
    counts = todo.sum(1)
    kmax = int(counts.max()) if Bc else 0
    if kmax:
        order = torch.argsort((~todo).to(torch.int8), dim=1, stable=True)[:, :kmax]
        valid = torch.arange(kmax, device=dev)[None, :] < counts[:, None]
        cls2 = torch.where(valid, order, pc[:, None])
        K = _blocks(kmax, Bc, budget, per_pair)
        for k0 in range(0, kmax, K):
            cl = cls2[:, k0:k0 + K]
            blk = project_block(Xc, pc, cl, W, b, lo, hi, feas_tol, check=False)
            stats["blocks"] += 1
            _record(blk, cl, pc, d1, unreach)
            stats["solved"] += int((cl != pc[:, None]).sum())
    # the minimiser of the one-constraint distances: its point must satisfy every constraint
    best = torch.nan_to_num(d1, nan=-1.0).argmin(1)
    bad = torch.isnan(d1).any(1)  # a pair whose one-constraint Newton did not converge
    fin = torch.isfinite(d1.gather(1, best[:, None]).squeeze(1)) & ~bad
    ok = verified.gather(1, best[:, None]).squeeze(1) & fin
    rest = torch.nonzero(fin & ~ok).squeeze(1)  # minimisers not among the checked candidates
    if rest.numel():
        blk = project_block(Xc[rest], pc[rest], best[rest, None], W, b, lo, hi, feas_tol, check=True)
        ok[rest] = blk.feasible[:, 0]
        out.put(rows[rest], best[rest, None], blk, blk.feasible)
    # pairs whose boundary is out of reach (w_i = w_k with b_i > b_k, or a stuck one-constraint
    # Newton: a Farkas certificate with d = e_j) have the exact distance +inf
    unreach |= (lbp == float("inf")) & ~isp
    out.dist[rows] = torch.where(unreach, float("inf"), out.dist[rows])
    # bounds of the pairs not solved exactly: their one-constraint distance where computed
    known = torch.isfinite(d1) & torch.isnan(out.dist[rows]) & ~isp
    out.lowb[rows] = torch.where(known, d1 * (1.0 - 1e-9), out.lowb[rows])
    none = ~fin & ~bad  # no boundary reachable from any pair: margin +inf, certified by the bounds
    return rows[~ok & ~none]


def _record(blk, cl, pc, d1, unreach):
    """Write a block's one-constraint distances into ``d1`` (+inf where the boundary is out of
    reach, NaN where Newton did not converge) and its unreachable pairs into ``unreach``."""
    nopair = cl == pc[:, None]
    d = torch.where(blk.stuck | nopair, float("inf"), blk.d)
    d1.scatter_(1, cl, torch.where(blk.unsolved & ~nopair, float("nan"), d))
    unreach.scatter_(1, cl, blk.stuck & ~nopair)
