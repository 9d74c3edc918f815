"""Exact, batched, certified flip points and margins in feature space (docs/geometry.md).

For a feature ``x`` with predicted class ``i`` and each ``j != i`` we solve

    minimize   ||y - x||^2
    subject to (w_i - w_j)·y + (b_i - b_j)  = 0
               (w_i - w_k)·y + (b_i - b_k) >= 0      k not in {i, j}
               lower <= y <= upper

for all (sample, class) pairs at once.  Write ``A`` for the rows ``a_k = w_i - w_k`` and
``r(y) = A y + c`` (``r_k = z_i(y) - z_k(y)``, the logit gaps).  Keeping the box in the inner
minimisation, the Lagrange dual is

    maximize g(mu) = 1/2 ||y(mu) - x||^2 - mu·r(y(mu)),   y(mu) = clip(x + A^T mu, lower, upper)
    subject to mu_k >= 0 (k != j), mu_j free,

a concave piecewise-quadratic problem in ``n - 1`` variables whose gradient is ``-r(y(mu))``.

Stages (all batched, no per-sample Python loops):

1. *Relaxation* ``|r_j(x)| / ||a_j||`` (distance to the unbounded hyperplane): a lower bound,
   returned as ``lower_bound``; it is never returned as the answer.
2. *One-constraint stage*: the exact solution with only the equality row and the box, a
   monotone 1-D Newton iteration on the piecewise-linear ``t -> a_j·clip(x - t a_j) + c_j``
   (its first step is the closed-form hyperplane projection when no bound is active at ``x``).
   When that point satisfies every other inequality it is the exact answer (KKT holds with
   ``mu_k = 0``), which is the common case.
3. *Semismooth Newton / primal-dual active set* on the small dual for the remaining pairs
   (:mod:`fsl.geometry.flip_dual`), with generalized Hessian ``A P A^T`` (``P`` = coordinates
   strictly inside the box), all pairs one batch of ``n x n`` systems.  A diverging dual (primal
   infeasible) is detected by verifying a Farkas certificate on ``d = mu / ||mu||``.

Certificates (``certified``):

* feasible pair: ``y`` lies in the box by construction, ``|r_j(y)| <= feas_tol * scale``,
  ``r_k(y) >= -feas_tol * scale``, ``mu`` is dual feasible, and the duality gap, i.e. the difference
  between ``||y - x||`` and the weak-duality lower bound ``sqrt(2 g(mu))``, is at most
  ``gap_tol * (1 + ||y - x||)``;
* infeasible pair (distance ``+inf``): ``d`` with ``d_k >= 0`` (k != j) such that
  ``sup_{lower <= y <= upper} d·(A y + c) < 0``: every ``y`` in the box has ``d·r(y) < 0`` while a
  feasible ``y`` would have ``d·r(y) = sum_k d_k r_k >= 0``.  The supremum needs
  ``(A^T d)_f <= 0`` where ``upper_f = inf`` and ``>= 0`` where ``lower_f = -inf``; entries of
  ``A^T d`` below ``1e-12 * ||A|| ||d||`` in magnitude are treated as zero (floating point cannot
  produce an exact zero).

Pairs that pass neither test after ``max_iter`` iterations have ``certified = False``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fsl.checks import check_finite

from ._common import as_box
from .flip_dual import solve_dual

Tensor = torch.Tensor


@dataclass
class FlipResult:
    """Output of :func:`flip_margins`; tensors live on the input's device.

    Attributes:
        distances: ``(B, n)`` float64; NaN at the predicted class, ``+inf`` where the ``pred|j``
            boundary does not exist inside the domain.
        margin: ``(B,)`` ``min_j distances`` (``+inf`` if no boundary exists at all).
        closest: ``(B,)`` int64 class attaining the margin (``-1`` if the margin is ``+inf``).
        pred: ``(B,)`` int64 predicted class (first argmax of the logits).
        certified: ``(B, n)`` bool; True at the predicted class.  False flags an answer that could
            not be verified (never silently returned as right).
        lower_bound: ``(B, n)`` the hyperplane relaxation ``r_j(x)/||w_i - w_j||`` (NaN at pred).
        points: ``(B, n, f)`` flip points when requested, NaN rows where undefined.
        multipliers: ``(B, n, n)`` dual multipliers ``mu`` (indexed by constraint class ``k``)
            when ``return_points`` is set, else None.
        stats: counts per stage (``pairs``, ``one_constraint``, ``newton``, ``infeasible``,
            ``uncertified``, ``newton_iterations``).
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


def _one_constraint(x: Tensor, a: Tensor, c: Tensor, lo: Tensor, hi: Tensor, max_iter: int) -> Tensor:
    """Exact ``t >= 0`` with ``a·clip(x - t a) + c = 0`` by monotone Newton (M,); NaN if none."""
    M = x.shape[0]
    t = torch.zeros(M, dtype=x.dtype, device=x.device)
    h0 = (torch.clamp(x, lo, hi) * a).sum(1) + c
    todo = torch.nonzero(h0 > 0).squeeze(1)
    for _ in range(max_iter):
        if todo.numel() == 0:
            break
        xs, as_, ts = x[todo], a[todo], t[todo]
        z = torch.addcmul(xs, ts[:, None], as_, value=-1.0)
        y = torch.clamp(z, lo, hi)
        h = (y * as_).sum(1) + c[todo]
        moving = ((z > lo) | (as_ < 0)) & ((z < hi) | (as_ > 0))
        s = (as_ * as_ * moving).sum(1)
        scale = 1e-14 * (1.0 + (y * as_).abs().sum(1) + c[todo].abs())
        stuck = (s <= 0) & (h > scale)
        t[todo[stuck]] = float("nan")
        step = torch.where(s > 0, h / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        go = (h > scale) & (s > 0) & (step > 0)
        t[todo[go]] = ts[go] + step[go]
        todo = todo[go]
    return t


def flip_margins(features: Tensor, weight: Tensor, bias: Tensor, lower=None, upper=None,
                 return_points: bool = False, dtype: torch.dtype = torch.float64,
                 chunk_size: int | None = None, max_iter: int = 100, feas_tol: float = 1e-11,
                 gap_tol: float = 1e-9, farkas_tol: float = 1e-12, ls_steps: int = 16,
                 newton_chunk: int | None = None, margin_only: bool = False) -> FlipResult:
    """Exact distances from each feature to every decision boundary of its predicted class.

    Args:
        features: ``(B, f)`` feature vectors (any float dtype / device).
        weight: ``(n, f)`` head weight; ``bias``: ``(n,)``.
        lower, upper: feature domain, scalars or ``(f,)`` tensors, ``None`` = unbounded.
        return_points: also return the flip points ``(B, n, f)`` and the multipliers.
        dtype: computation dtype (float64 default).
        chunk_size: samples per batch of the first stages (all pairs of a chunk are one batch);
            default 1024 on the CPU (cache-sized: larger is slower there), 16384 on CUDA.
        newton_chunk: pairs per batch of the Newton stage; default 8192 on the CPU, 65536 on CUDA.
        max_iter: Newton iterations for the pairs not solved by the one-constraint stage.
        feas_tol: primal feasibility tolerance, relative to ``1 + max_k |z_k(y)|``.
        gap_tol: duality-gap tolerance on the distance, relative to ``1 + distance``.
        farkas_tol: the Farkas certificate needs ``sup d·r < -farkas_tol * (1 + sum |d_k c_k|)``.
        margin_only: only the margin (and its pair) must be exact: a pair left to the Newton stage
            is skipped when its one-constraint distance (equality row and box only: a lower bound
            on its distance) is at least the smallest exact distance of its sample. Skipped pairs
            have distance NaN, ``certified`` True and that bound in ``lower_bound``
            (``stats["skipped"]`` counts them). ``margin``, ``closest`` and the margin pair's point
            and multipliers are the same as without it. Used by margin-aware training.
    """
    dev = features.device
    X = features.detach().to(dtype)
    W = weight.detach().to(device=dev, dtype=dtype)
    b = bias.detach().to(device=dev, dtype=dtype)
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[1] or b.shape != (W.shape[0],):
        raise ValueError(f"flip_margins: expected features (B, f), weight (n, f), bias (n,), got "
                         f"{tuple(X.shape)}, {tuple(W.shape)}, {tuple(b.shape)}")
    # a NaN feature would otherwise come back as margin +inf, "certified": a perfectly robust sample
    check_finite("flip_margins features", X)
    check_finite("flip_margins weight", W)
    check_finite("flip_margins bias", b)
    B, f = X.shape
    n = W.shape[0]
    cuda = dev.type == "cuda"
    chunk_size = chunk_size or (16384 if cuda else 1024)
    newton_chunk = newton_chunk or (65536 if cuda else 8192)
    lo, hi = as_box(lower, upper, f, dtype, dev)
    O = (W.T[:, :, None] * W.T[:, None, :]).reshape(f, n * n)
    Wd2 = ((W[:, None, :] - W[None, :, :]) ** 2).sum(2)  # ||w_i - w_k||^2, (n, n)
    Wnorm = float(W.abs().max()) if W.numel() else 1.0
    opts = dict(ls_steps=ls_steps, max_iter=max_iter, feas_tol=feas_tol, gap_tol=gap_tol, farkas_tol=farkas_tol)

    dist = torch.full((B, n), float("nan"), dtype=dtype, device=dev)
    lowb = torch.full((B, n), float("nan"), dtype=dtype, device=dev)
    cert = torch.ones((B, n), dtype=torch.bool, device=dev)
    pred = torch.empty(B, dtype=torch.long, device=dev)
    pts = torch.full((B, n, f), float("nan"), dtype=dtype, device=dev) if return_points else None
    mus = torch.zeros((B, n, n), dtype=dtype, device=dev) if return_points else None
    stats = dict(pairs=0, one_constraint=0, newton=0, infeasible=0, uncertified=0, newton_iterations=0, skipped=0)
    ar = torch.arange(n, device=dev)

    hard = []  # pairs the one-constraint stage did not certify: (sample, j, i, -t)
    has_lo = bool(torch.isfinite(lo).any())
    has_hi = bool(torch.isfinite(hi).any())
    for s0 in range(0, B, chunk_size):
        Xc = X[s0:s0 + chunk_size]
        Bc = Xc.shape[0]
        logits = torch.addmm(b, Xc, W.T)
        pc = logits.argmax(1)
        pred[s0:s0 + Bc] = pc
        isp = ar[None, :] == pc[:, None]  # (Bc, n) the predicted class itself
        x = Xc[:, None, :]
        a = W[pc][:, None, :] - W[None, :, :]  # (Bc, n, f): row a_j = w_i - w_j
        a2 = a * a
        an2 = a2.sum(-1)
        c = b[pc][:, None] - b[None, :]
        h = (a * x).sum(-1) + c  # r_j(x) >= 0
        an = an2.sqrt()
        lb = torch.where(an > 0, h.clamp_min(0) / torch.where(an > 0, an, torch.ones_like(an)),
                         torch.where(h > 0, torch.full_like(h, float("inf")), torch.zeros_like(h)))
        lb = torch.where(isp, torch.full_like(lb, float("nan")), lb)
        # stage 2: equality row + box, exact by monotone Newton on t.  The first step is the
        # closed-form hyperplane projection restricted to the coordinates that can move at x.
        tolh = 1e-13 * (1.0 + c.abs() + an * Xc.norm(dim=1)[:, None])
        go = (h > tolh) & ~isp
        if has_lo or has_hi:
            mov0 = torch.ones_like(a, dtype=torch.bool)
            if has_lo:
                mov0 &= (x > lo) | (a < 0)
            if has_hi:
                mov0 &= (x < hi) | (a > 0)
            sl0 = (a2 * mov0).sum(-1)
            del mov0
        else:
            sl0 = an2
        bad = go & (sl0 <= 0)
        go &= ~bad
        t = torch.where(go, h / torch.where(sl0 > 0, sl0, torch.ones_like(sl0)), torch.zeros_like(h))

        def evaluate(xx, aa, a2a, tt):
            z = torch.addcmul(xx, tt[..., None], aa, value=-1.0)
            if has_lo or has_hi:
                m = (z > lo) & (z < hi) if (has_lo and has_hi) else ((z > lo) if has_lo else (z < hi))
                sl = (a2a * m).sum(-1)
                yy = torch.clamp(z, lo, hi) if (has_lo and has_hi) else (
                    z.clamp_(min=lo) if has_lo else z.clamp_(max=hi))
            else:
                sl = a2a.sum(-1)
                yy = z
            return yy, torch.linalg.vecdot(yy, aa), sl

        y = None
        for _ in range(2):  # dense iterations: after two steps ~95% of the pairs are exact
            y, hh, sl = evaluate(x, a, a2, t)
            hh = hh + c
            go &= hh > tolh
            st = go & (sl <= 0)
            bad |= st
            go &= ~st
            if not bool(go.any()):
                break
            t = torch.where(go, t + hh / torch.where(sl > 0, sl, torch.ones_like(sl)), t)
        if bool(go.any()):  # the few remaining pairs: compacted iterations
            gs_, gj_ = torch.nonzero(go, as_tuple=True)
            xs, as_, a2s, cs_, tls = Xc[gs_], a[gs_, gj_], a2[gs_, gj_], c[gs_, gj_], tolh[gs_, gj_]
            ts = t[gs_, gj_]
            alive = torch.ones_like(ts, dtype=torch.bool)
            for _ in range(2 * f + 4):
                ys, hs, sls = evaluate(xs, as_, a2s, ts)
                hs = hs + cs_
                alive &= hs > tls
                stq = alive & (sls <= 0)
                alive &= ~stq
                bad[gs_[stq], gj_[stq]] = True
                if not bool(alive.any()):
                    break
                ts = torch.where(alive, ts + hs / torch.where(sls > 0, sls, torch.ones_like(sls)), ts)
            bad[gs_[alive], gj_[alive]] = True
            t[gs_, gj_] = ts
            y[gs_, gj_] = ys
        t = torch.where(bad, torch.zeros_like(t), t)
        zy = torch.addmm(b, y.reshape(-1, f), W.T).view(Bc, n, n)  # logits at each flip point
        r = zy.gather(2, pc[:, None, None].expand(Bc, n, 1)) - zy  # r[s, j, k] = z_i - z_k
        scale = 1.0 + zy.abs().amax(-1)
        jm = torch.eye(n, dtype=torch.bool, device=dev)[None]  # k == j
        viol = torch.where(jm, r.abs(), (-r).clamp_min(0)).amax(-1)
        okB = ~bad & (viol <= feas_tol * scale) & ~isp
        dpair = (y - x).norm(dim=-1)
        dpair = torch.where(okB, dpair, torch.full_like(dpair, float("nan")))
        cpair = okB | isp
        stats["pairs"] += Bc * (n - 1)
        stats["one_constraint"] += int(okB.sum())
        rs, rj = torch.nonzero(~cpair, as_tuple=True)
        if return_points:
            ypair = torch.where(okB[..., None], y, torch.full_like(y, float("nan")))
            mupair = torch.zeros((Bc, n, n), dtype=dtype, device=dev)
            mupair[:, ar, ar] = torch.where(okB, -t, torch.zeros_like(t))
        if rs.numel():
            # the one-constraint optimum (where its Newton converged) bounds the pair's distance below
            lb1 = torch.where(bad[rs, rj], lb[rs, rj], (y[rs, rj] - Xc[rs]).norm(dim=-1) * (1 - 1e-9))
            hard.append((rs + s0, rj, pc[rs], -t[rs, rj], lb1))
        dist[s0:s0 + Bc] = torch.where(isp, torch.full_like(dpair, float("nan")), dpair)
        lowb[s0:s0 + Bc] = lb
        cert[s0:s0 + Bc] = cpair
        if return_points:
            pts[s0:s0 + Bc] = ypair
            mus[s0:s0 + Bc] = mupair

    if hard:  # all remaining pairs of all chunks: one batched Newton solve
        hs = torch.cat([h_[0] for h_ in hard])
        hj = torch.cat([h_[1] for h_ in hard])
        hi_ = torch.cat([h_[2] for h_ in hard])
        hm = torch.cat([h_[3] for h_ in hard])
        if margin_only:
            hlb = torch.cat([h_[4] for h_ in hard])
            best = torch.nan_to_num(dist, nan=float("inf")).amin(1)
            skip = hlb >= best[hs]
            lowb[hs[skip], hj[skip]] = hlb[skip]
            cert[hs[skip], hj[skip]] = True
            stats["skipped"] = int(skip.sum())
            hs, hj, hi_, hm = hs[~skip], hj[~skip], hi_[~skip], hm[~skip]
        stats["newton"] = hs.numel()
        step_ = max(1, newton_chunk)
        for q0 in range(0, hs.numel(), step_):
            sl_ = slice(q0, q0 + step_)
            qs, qj, qi = hs[sl_], hj[sl_], hi_[sl_]
            mu0 = torch.zeros((qs.numel(), n), dtype=dtype, device=dev)
            mu0[torch.arange(qs.numel(), device=dev), qj] = hm[sl_]
            yN, dN, cN, iN, muN, its = solve_dual(X[qs], qi, qj, W, b, lo, hi, mu0, O, Wnorm, opts, Wd2)
            stats["newton_iterations"] = max(stats["newton_iterations"], its)
            stats["infeasible"] += int(iN.sum())
            dist[qs, qj] = dN
            cert[qs, qj] = cN
            if return_points:
                pts[qs, qj] = torch.where(torch.isinf(dN)[:, None], torch.full_like(yN, float("nan")), yN)
                mus[qs, qj] = muN
    stats["uncertified"] = int((~cert).sum())
    dd = torch.nan_to_num(dist, nan=float("inf"))
    margin, closest = dd.min(1)
    closest = torch.where(torch.isinf(margin), torch.full_like(closest, -1), closest)
    return FlipResult(distances=dist, margin=margin, closest=closest, pred=pred, certified=cert,
                      lower_bound=lowb, points=pts, multipliers=mus, stats=stats)
