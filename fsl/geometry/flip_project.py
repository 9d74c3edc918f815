"""The one-constraint stage of :func:`fsl.geometry.flip_margins` on a block of (sample, class) pairs.

For a feature ``x`` with predicted class ``i`` and a class ``j``, the one-constraint problem keeps
only the equality row ``a_j·y + c_j = 0`` (``a_j = w_i - w_j``, ``c_j = b_i - b_j``) and the box:

    minimize ||y - x||  subject to  a_j·y + c_j = 0,  lower <= y <= upper.

Its solution is ``y = clip(x - t a_j)`` for the ``t >= 0`` where the piecewise-linear, monotone
``t -> a_j·clip(x - t a_j) + c_j`` crosses zero, found by Newton's method on that function (its
first step is the closed-form hyperplane projection restricted to the coordinates that can move at
``x``). Its distance ``d1_j`` is a lower bound on the pair's flip distance, and it is the exact flip
distance when ``y`` satisfies every other class constraint (KKT holds with zero multipliers).

Every function here works on a block ``(B, K)`` of pairs: ``B`` samples times ``K`` class slots,
memory ``O(B K f)`` (``+ B K n`` for the check against all classes); a pair's result does not depend
on the other pairs of its block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .flip_dual import class_gaps

Tensor = torch.Tensor


@dataclass
class Block:
    """One-constraint results on a block of pairs (all ``(B, K)`` unless stated).

    ``y`` (B, K, f) the one-constraint point, ``t`` its step (``mu_j = -t``), ``d`` its distance
    (NaN where not solved), ``lb`` the hyperplane bound ``r_j(x)/||a_j||`` (NaN at the predicted
    class), ``stuck``: no point of the box reaches the boundary (a Farkas certificate with
    ``d = e_j``: the pair has distance ``+inf``), ``unsolved``: Newton did not converge.
    With ``check``: ``feasible`` (``y`` satisfies all ``n - 1`` constraints to ``feas_tol``, so ``d``
    is the exact distance) and ``crossing`` (the distance from ``x`` to the first point of the
    segment ``[x, y]`` where another class ties the predicted one: an upper bound on the margin).
    """

    y: Tensor
    t: Tensor
    d: Tensor
    lb: Tensor
    stuck: Tensor
    unsolved: Tensor
    feasible: Tensor | None = None
    crossing: Tensor | None = None


def project_block(Xc: Tensor, pc: Tensor, cls: Tensor, W: Tensor, b: Tensor, lo: Tensor, hi: Tensor,
                  feas_tol: float, check: bool, r0: Tensor | None = None) -> Block:
    """Solve the one-constraint problems of the pairs ``(Xc[s], pc[s] -> cls[s, k])``.

    Args:
        Xc: ``(B, f)`` features; pc: ``(B,)`` predicted classes; cls: ``(B, K)`` target classes
            (a slot equal to ``pc`` is no pair and returns NaN).
        W, b: the head; lo, hi: ``(f,)`` box.
        check: also evaluate all ``n`` logits at each ``y`` (``O(B K n f)``).
        r0: ``(B, n)`` logit gaps ``z_i(x) - z_k(x)``; with ``check`` gives ``crossing``.
    """
    Bc, K = Xc.shape[0], cls.shape[1]  # cls may be (1, K): the same classes for every sample
    f = Xc.shape[1]
    n = W.shape[0]
    dev = Xc.device
    has_lo = bool(torch.isfinite(lo).any())
    has_hi = bool(torch.isfinite(hi).any())
    isp = cls == pc[:, None]
    x = Xc[:, None, :]
    a = W[pc][:, None, :] - W[cls]  # (B, K, f): row a_j = w_i - w_j
    a2 = a * a
    an2 = a2.sum(-1)
    c = b[pc][:, None] - b[cls]
    h = (a * x).sum(-1) + c  # r_j(x) >= 0
    an = an2.sqrt()
    lb = torch.where(an > 0, h.clamp_min(0) / torch.where(an > 0, an, torch.ones_like(an)),
                     torch.where(h > 0, torch.full_like(h, float("inf")), torch.zeros_like(h)))
    lb = torch.where(isp, torch.full_like(lb, float("nan")), lb)
    tolh = 1e-13 * (1.0 + c.abs() + an * Xc.norm(dim=1)[:, None])
    go = (h > tolh) & ~isp
    inbox = ((Xc >= lo) & (Xc <= hi)).all(1)[:, None]
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
    stuck = go & (sl0 <= 0)
    unsolved = torch.zeros_like(stuck)
    go &= ~stuck
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

    # Newton from t > 0 moves every coordinate monotonically, so (for x in the box) a zero slope
    # while r_j > 0 means every coordinate with a_jf != 0 is at the bound that minimises a_j·y:
    # the boundary is out of reach
    y = None
    for _ in range(2):  # dense iterations: after two steps ~95% of the pairs are exact
        y, hh, sl = evaluate(x, a, a2, t)
        hh = hh + c
        go &= hh > tolh
        st = go & (sl <= 0)
        stuck |= st
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
            stuck[gs_[stq], gj_[stq]] = True
            if not bool(alive.any()):
                break
            ts = torch.where(alive, ts + hs / torch.where(sls > 0, sls, torch.ones_like(sls)), ts)
        unsolved[gs_[alive], gj_[alive]] = True
        t[gs_, gj_] = ts
        y[gs_, gj_] = ys
    # a stuck pair certifies +inf only when x lies in the box (else the monotonicity argument fails)
    unsolved |= stuck & ~inbox
    stuck &= inbox
    bad = stuck | unsolved
    t = torch.where(bad, torch.zeros_like(t), t)
    d = torch.where(bad | isp, torch.full_like(h, float("nan")), (y - x).norm(dim=-1))
    out = Block(y=y, t=t, d=d, lb=lb, stuck=stuck, unsolved=unsolved)
    if check:
        r, scale = class_gaps(y.reshape(-1, f), pc.repeat_interleave(K), W, b)  # at each point
        r, scale = r.view(Bc, K, n), scale.view(Bc, K)  # r[s, j, k] = z_i - z_k
        jm = torch.arange(n, device=dev)[None, None, :] == cls[:, :, None]  # k == j
        viol = torch.where(jm, r.abs(), (-r).clamp_min(0)).amax(-1)
        out.feasible = ~bad & (viol <= feas_tol * scale) & ~isp
        if r0 is not None:
            rx = r0[:, None, :]
            cross = (r < 0) & (rx > r)
            s = torch.where(cross, rx / torch.where(cross, rx - r, torch.ones_like(r)), torch.ones_like(r))
            s = s.amin(-1).clamp(0.0, 1.0)
            out.crossing = torch.where(bad | isp, torch.full_like(d, float("inf")), s * d)
        del r
    return out
