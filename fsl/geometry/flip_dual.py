"""The hard pairs of :func:`fsl.geometry.flip_margins`: the flip-point QP of a (sample, class) pair
solved exactly on its Lagrange dual over a working set of class constraints, with certificates
(docs/geometry.md).

For a feature ``x`` with predicted class ``i`` and target class ``j``, write ``A`` for the rows
``a_k = w_i - w_k`` and ``r(y) = A y + c`` (the logit gaps). Keeping the box in the inner
minimisation, the dual

    maximize g(mu) = 1/2 ||y(mu) - x||^2 - mu·r(y(mu)),   y(mu) = clip(x + A^T mu, lower, upper)
    subject to mu_k >= 0 (k != j), mu_j free,

is concave and piecewise quadratic with gradient ``-r(y(mu))``. :func:`solve_rows` runs a projected
semismooth Newton / primal-dual active-set method (Bertsekas' projected Newton with Armijo
backtracking along the projection arc; generalized Hessian ``A_S P A_S^T``, ``P`` the coordinates
strictly inside the box) on the rows of a working set ``S`` of classes, every pair of a batch at
once. :func:`solve_pairs` is the working-set (cutting-plane) loop around it: ``S`` starts with ``j``
and the classes the one-constraint point violates; after each solve every one of the ``n - 1``
constraints is checked at ``y`` (one product with the head) and the violated ones join ``S``.
Dropping constraints only relaxes the primal, so ``sqrt(2 g(mu))`` stays a lower bound for the full
problem, and a Farkas certificate on a subset of the rows proves the full problem infeasible.

Cost per pair and iteration: ``O(m^2 f)`` for ``m = |S|`` (the Hessian) plus ``O(n f)`` per
working-set round for the check against all classes; memory ``O(m f)`` per pair (no ``n x n`` or
``n x f`` tensor per pair).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

#: classes of a pair solved at once when ``n - 1`` is at most this (no working-set rounds)
ALL_ROWS = 16
#: cap on the working set (batched LU on CPU is unreliable above 128 after set_num_threads,
#: see fsl.geometry._common.batched_solve)
MAX_ROWS = 128


def _box_parts(lo: Tensor, hi: Tensor) -> tuple[Tensor, ...]:
    """Per-coordinate pieces of the box that :func:`_farkas` needs, computed once."""
    lo_inf, hi_inf = torch.isinf(lo), torch.isinf(hi)
    lo_fin = torch.where(lo_inf, torch.zeros_like(lo), lo)
    hi_fin = torch.where(hi_inf, torch.zeros_like(hi), hi)
    return lo_inf, hi_inf, lo_fin, hi_fin, torch.maximum(lo_fin.abs(), hi_fin.abs())


def _sup_negative(v: Tensor, dc: Tensor, scale: Tensor, vt: Tensor, box: tuple[Tensor, ...], tol: float) -> Tensor:
    """``sup_{lower <= y <= upper} v·y + dc < -tol * scale`` per row of ``v`` (M, f); entries of ``v``
    below ``vt`` in magnitude count with their worst case over finite bounds."""
    lo_inf, hi_inf, lo_fin, hi_fin, mabs = box
    pos = v > vt
    neg = v < -vt
    bad = (pos & hi_inf).any(1) | (neg & lo_inf).any(1)
    contrib = torch.where(pos, v * hi_fin, torch.where(neg, v * lo_fin, v.abs() * mabs))
    return (~bad) & (contrib.sum(1) + dc < -tol * scale)


def _farkas(d: Tensor, ops, box: tuple[Tensor, ...], Wnorm: float, tol: float) -> Tensor:
    """Verify the infeasibility certificate ``d`` (M, m) on the rows of ``ops``; (M,) bool:
    ``sup_{lower <= y <= upper} d·(A y + c) < 0`` with ``d_k >= 0`` off the equality row."""
    dn = d.abs().amax(1, keepdim=True).clamp_min(1e-300)
    d = d / dn
    vt = 1e-12 * Wnorm * d.abs().sum(1, keepdim=True)
    return _sup_negative(ops.lift(d), (d * ops.c).sum(1), 1.0 + (d.abs() * ops.c.abs()).sum(1), vt, box, tol)


def dominated(js: Tensor, W: Tensor, b: Tensor, lo: Tensor, hi: Tensor, Wnorm: float, tol: float,
              budget: int) -> Tensor:
    """Classes ``j`` (J,) that never win: some ``k`` has ``z_j(y) < z_k(y)`` on the whole box, so every
    ``i|j`` boundary is empty. This is the Farkas certificate ``d = e_k - e_j`` of the flip QP
    (``d·r = z_j - z_k``), checked for all ``k`` in blocks of ``budget`` bytes: ``O(J n f)``."""
    n, f = W.shape
    box = _box_parts(lo, hi)
    out = torch.zeros(js.shape, dtype=torch.bool, device=W.device)
    step = max(1, budget // max(1, 3 * n * f * W.element_size()))
    for q0 in range(0, js.numel(), step):
        j = js[q0:q0 + step]
        v = (W[j][:, None, :] - W[None, :, :]).reshape(-1, f)  # (J n, f)
        dc = (b[j][:, None] - b[None, :]).reshape(-1)
        vt = torch.full((v.shape[0], 1), 2e-12 * Wnorm, dtype=v.dtype, device=v.device)
        neg = _sup_negative(v, dc, 1.0 + dc.abs(), vt, box, tol).view(-1, n)
        neg &= torch.arange(n, device=W.device)[None, :] != j[:, None]
        out[q0:q0 + step] = neg.any(1)
    return out


def class_gaps(y: Tensor, pi: Tensor, W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Logit gaps ``r_k = z_i(y) - z_k(y)`` of every class (M, n) for the predicted classes ``pi``
    (M,) and the tolerance scale ``1 + max_k |z_k(y)|`` (M,)."""
    z = torch.addmm(b, y, W.T)
    return z.gather(1, pi[:, None]) - z, 1.0 + z.abs().amax(1)


class ClassRows:
    """The rows of all ``n`` classes, indexed by class (the predicted class' slot is padding): every
    product is one matrix product with the shared head ``W``; the Hessian comes from
    ``O = [w_k w_l^T]`` (f, n^2), so this is for small ``n``."""

    def __init__(self, W, b, pi, O):
        self.W, self.b, self.pi, self.O = W, b, pi, O
        self.c = b[pi][:, None] - b[None, :]

    def take(self, idx):
        return ClassRows(self.W, self.b, self.pi[idx], self.O)

    def _at(self, mu, pi):
        nu = -mu
        nu.scatter_add_(1, pi[:, None], mu.sum(1, keepdim=True))
        return nu @ self.W

    def lift(self, mu):
        return self._at(mu, self.pi)

    def gaps(self, y, pi=None):
        return class_gaps(y, self.pi if pi is None else pi, self.W, self.b)

    def lift_many(self, cand, rows):
        Mc, Kc, n = cand.shape
        return self._at(cand.reshape(Mc * Kc, n), self.pi[rows].repeat_interleave(Kc)).view(Mc, Kc, -1)

    def gaps_many(self, yk, rows):
        Mc, Kc, f = yk.shape
        return self.gaps(yk.reshape(Mc * Kc, f), self.pi[rows].repeat_interleave(Kc))[0].view(Mc, Kc, -1)

    def hessian(self, p):
        M = p.shape[0]
        n = self.W.shape[0]
        G = (p @ self.O).view(M, n, n)
        Gi = G.gather(1, self.pi[:, None, None].expand(M, 1, n)).squeeze(1)  # (M, n)
        Gii = Gi.gather(1, self.pi[:, None])
        return G - Gi[:, :, None] - Gi[:, None, :] + Gii[:, :, None]


class GatheredRows:
    """The rows of a working set, gathered per pair: ``A`` (M, m, f), ``c`` (M, m) (padding rows
    zero); products are batched ``m x f`` ones, the scale covers the predicted class and the set."""

    def __init__(self, A, c, wi, bi, valid):
        self.rows, self.c, self.wi, self.bi, self.valid = A, c, wi, bi, valid

    def take(self, idx):
        return GatheredRows(self.rows[idx], self.c[idx], self.wi[idx], self.bi[idx], self.valid[idx])

    def lift(self, mu):
        return torch.bmm(mu[:, None, :], self.rows).squeeze(1)

    def gaps(self, y):
        r = torch.bmm(self.rows, y[:, :, None]).squeeze(2) + self.c
        zi = (y * self.wi).sum(1) + self.bi
        zk = torch.where(self.valid, (zi[:, None] - r).abs(), torch.zeros_like(r))
        return r, 1.0 + torch.maximum(zi.abs(), zk.amax(1))

    def lift_many(self, cand, rows):
        return torch.bmm(cand, self.rows[rows])

    def gaps_many(self, yk, rows):
        return torch.bmm(yk, self.rows[rows].transpose(1, 2)) + self.c[rows][:, None, :]

    def hessian(self, p):
        return torch.bmm(self.rows * p[:, None, :], self.rows.transpose(1, 2))


def solve_rows(x, ops, eq, ineq, an2, lo, hi, mu, Wnorm, opts):
    """Projected semismooth Newton on the dual restricted to the rows of ``ops`` (:class:`ClassRows`
    or :class:`GatheredRows`, ``m`` rows per pair).

    ``eq``/``ineq`` (M, m) mark the equality row and the inequality rows (other slots are padding,
    their multiplier stays 0); ``an2`` (M, m) ``||a_k||^2``; ``mu`` (M, m) the start.
    Returns ``(y, distance, certified, infeasible, mu, iterations)``; ``distance`` is ``+inf`` for a
    pair with a verified Farkas certificate, ``certified`` refers to the rows given."""
    M, f = x.shape
    dt = x.dtype
    dev = x.device
    pad = ~(eq | ineq)
    an2 = torch.where(pad, torch.ones_like(an2), an2)
    # rows with w_k == w_i have a zero norm: floor the scale so the steps stay defined
    an2 = torch.maximum(an2, (1e-12 * an2.amax(1, keepdim=True)).clamp_min(1e-30))
    cs = 1.0 / an2.clamp_min(1e-300)
    box = _box_parts(lo, hi)
    valid = ~pad

    out_y = torch.full((M, f), float("nan"), dtype=dt, device=dev)
    out_d = torch.full((M,), float("nan"), dtype=dt, device=dev)
    out_cert = torch.zeros(M, dtype=torch.bool, device=dev)
    out_inf = torch.zeros(M, dtype=torch.bool, device=dev)
    out_mu = mu.clone()
    live = torch.arange(M, device=dev)
    damped = torch.zeros(M, dtype=torch.bool, device=dev)  # pairs whose plain Newton step failed once
    iters = 0
    step = None
    ops_l, x_l = ops, x
    eq_l, in_l, pad_l, val_l, cs_l, an2_l = eq, ineq, pad, valid, cs, an2
    for it in range(opts["max_iter"] + 1):
        if live.numel() == 0:
            break
        iters = it
        m_ = mu
        z = x_l + ops_l.lift(m_)
        y = torch.clamp(z, lo, hi)
        r, scale = ops_l.gaps(y)
        feas = torch.where(eq_l, r.abs(), torch.where(in_l, (-r).clamp_min(0), torch.zeros_like(r))).amax(1)
        d2 = ((y - x_l) ** 2).sum(1)
        comp = 2.0 * (m_ * r).sum(1)  # = d_ub^2 - d_lb^2
        dub = d2.sqrt()
        dlb = (d2 - comp).clamp_min(0).sqrt()
        ok = (feas <= opts["feas_tol"] * scale) & ((dub - dlb).abs() <= opts["gap_tol"] * (1.0 + dub))
        inf_ok = torch.zeros_like(ok)
        big = m_.abs().amax(1) > 0 if it > 0 else torch.zeros_like(ok)
        if bool(big.any()):
            cand = torch.nonzero(~ok & big).squeeze(1)
            if cand.numel():
                oc = ops_l.take(cand)
                inf_ok[cand] = _farkas(m_[cand], oc, box, Wnorm, opts["farkas_tol"])
                if step is not None:  # the last step also points along a diverging dual
                    st = torch.where(in_l[cand], step[cand].clamp_min(0), step[cand])
                    inf_ok[cand] |= _farkas(st, oc, box, Wnorm, opts["farkas_tol"])
        fin = ok | inf_ok
        last = it == opts["max_iter"]
        if bool(fin.any()) or last:
            sel = fin if not last else torch.ones_like(fin)
            idx = live[sel]
            out_y[idx] = y[sel]
            out_d[idx] = torch.where(inf_ok[sel], torch.full_like(dub[sel], float("inf")), dub[sel])
            out_cert[idx] = fin[sel]
            out_inf[idx] = inf_ok[sel]
            out_mu[idx] = m_[sel]
            if last:
                # uncertified: report the infeasible guess when the dual blew up
                blown = m_.abs().amax(1) * an2_l.amax(1).sqrt() > 1e6 * (1.0 + scale)
                out_d[live[blown]] = float("inf")
                break
        keep = ~fin
        live = live[keep]
        if live.numel() == 0:
            break
        mu, z, r, y = m_[keep], z[keep], r[keep], y[keep]
        step = step[keep] if step is not None else None
        damped = damped[keep]
        ops_l, x_l = ops_l.take(keep), x_l[keep]
        eq_l, in_l, pad_l, val_l = eq_l[keep], in_l[keep], pad_l[keep], val_l[keep]
        cs_l, an2_l = cs_l[keep], an2_l[keep]
        Ml = live.numel()
        # Bertsekas' projected Newton: inequalities at (near) zero with r_k > 0 are held fixed
        # (scaled gradient step), the rest get a Newton step on the generalized Hessian A P A^T.
        pg = torch.where(in_l, mu - (mu - cs_l * r).clamp_min(0), cs_l * r)
        pg = torch.where(pad_l, torch.zeros_like(pg), pg)
        w = pg.abs().amax(1, keepdim=True)
        eps = torch.minimum(w, 1e-3 * (1.0 + mu.abs().amax(1, keepdim=True)))
        fixed = in_l & (mu <= eps) & (r > 0)
        act = ~fixed & ~pad_l
        p = ((z > lo) & (z < hi)).to(dt)
        H = ops_l.hessian(p)
        actf = act.to(dt)
        na = 1.0 - actf
        # Levenberg-style damping proportional to the projected gradient.  A plain Newton step
        # (damping at rounding level) converges in one or two steps when the active set is right;
        # pairs whose plain step was rejected (singular A P A^T: more active rows than free
        # coordinates) and slow pairs switch to damping up to 1e-4.
        wrel = w / (1.0 + mu.abs().amax(1, keepdim=True))
        if it >= 3:
            damped = torch.ones_like(damped)
        wrel = torch.where(damped[:, None], wrel.clamp(1e-12, 1e-4), wrel.clamp(1e-16, 1e-14))
        Hs = H * (actf[:, :, None] * actf[:, None, :]) + torch.diag_embed(na + actf * an2_l * wrel)
        dN, info = torch.linalg.solve_ex(Hs, (-r * actf)[:, :, None])
        dN = torch.where((info != 0)[:, None] | ~torch.isfinite(dN.squeeze(2)), -cs_l * r, dN.squeeze(2))
        dirn = torch.where(act, dN, torch.where(fixed, -cs_l * r, torch.zeros_like(r)))
        # Armijo backtracking along the projection arc.  The full Newton step is tried first for
        # every pair; the pairs that reject it evaluate all step sizes in one batch, Newton
        # candidates first, then scaled projected-gradient candidates as a fallback.
        phi0 = (mu * r).sum(1) - 0.5 * ((y - x_l) ** 2).sum(1)

        def trial(cand, rows):
            xr = x_l[rows]
            yk = torch.clamp(xr[:, None, :] + ops_l.lift_many(cand, rows), lo, hi)  # (Mc, Kc, f)
            rk = ops_l.gaps_many(yk, rows)
            phik = (cand * rk).sum(2) - 0.5 * ((yk - xr[:, None, :]) ** 2).sum(2)
            dec = ((mu[rows][:, None, :] - cand) * r[rows][:, None, :]).sum(2)
            return (phik <= phi0[rows][:, None] - 1e-4 * dec + 1e-14 * (1.0 + phi0[rows].abs()[:, None])) & (dec > 0)

        allr = torch.arange(Ml, device=dev)
        full = mu + dirn
        full = torch.where(in_l, full.clamp_min(0), full)
        ok1 = trial(full[:, None, :], allr)[:, 0]
        newmu = torch.where(ok1[:, None], full, mu)
        anyok = ok1.clone()
        damped = damped | ~ok1
        rej = torch.nonzero(~ok1).squeeze(1)
        if rej.numel():
            K = opts["ls_steps"]
            alphas = 0.5 ** torch.arange(1, K + 1, dtype=dt, device=dev)
            mr, dr, rr = mu[rej], dirn[rej], r[rej]
            gdir = -cs_l[rej] * rr / val_l[rej].sum(1, keepdim=True).clamp_min(1)
            cand = torch.cat([mr[:, None, :] + alphas[None, :, None] * dr[:, None, :],
                              mr[:, None, :] + alphas[None, :, None] * gdir[:, None, :]], 1)
            cand = torch.where(in_l[rej][:, None, :], cand.clamp_min(0), cand)
            okls = trial(cand, rej)
            first = okls.to(torch.int8).argmax(1)
            got = okls.any(1)
            pick = cand[torch.arange(rej.numel(), device=dev), first]
            newmu[rej] = torch.where(got[:, None], pick, mr)
            anyok[rej] = got
        step = torch.where(anyok[:, None], newmu - mu, torch.zeros_like(mu))
        mu = torch.where(anyok[:, None], newmu, mu)
        mu = torch.where(pad_l, torch.zeros_like(mu), mu)
    return out_y, out_d, out_cert, out_inf, out_mu, iters


def _violations(y: Tensor, pi: Tensor, pj: Tensor, W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Violation of every class constraint at ``y`` (M, n) (``|r_j|`` for ``j``, ``max(0, -r_k)``
    otherwise, 0 at the predicted class) and the scale ``1 + max_k |z_k(y)|`` (M,)."""
    r, scale = class_gaps(y, pi, W, b)
    ar = torch.arange(W.shape[0], device=y.device)
    v = torch.where(ar[None, :] == pj[:, None], r.abs(), (-r).clamp_min(0))
    v = torch.where(ar[None, :] == pi[:, None], torch.zeros_like(v), v)
    return v, scale


def solve_pairs(x, pi, pj, mu_j, W, b, lo, hi, Wd2, Wnorm, opts, add: int = 8):
    """Exact flip points of the pairs ``(x, pi -> pj)`` (M,) by the working-set loop.

    ``mu_j`` (M,) starts the equality multiplier (minus the one-constraint step ``t``).
    Returns ``(y, distance, certified, infeasible, mu (M, n) by class, iterations, max rows)``."""
    M, f = x.shape
    n = W.shape[0]
    dev, dt = x.device, x.dtype
    ar = torch.arange(n, device=dev)
    if n - 1 <= ALL_ROWS:  # every class at once, indexed by class: no working-set rounds
        O = (W.T[:, :, None] * W.T[:, None, :]).reshape(f, n * n)
        mu = torch.zeros((M, n), dtype=dt, device=dev)
        mu[torch.arange(M, device=dev), pj] = mu_j
        eq = ar[None, :] == pj[:, None]
        ineq = ~eq & (ar[None, :] != pi[:, None])
        y, d, cert, inf, mu, its = solve_rows(x, ClassRows(W, b, pi, O), eq, ineq, Wd2[pi], lo, hi, mu, Wnorm, opts)
        return y, d, cert, inf, mu, its, n - 1
    # j and the classes the one-constraint point violates, most violated first
    y0 = torch.clamp(x + mu_j[:, None] * (W[pi] - W[pj]), lo, hi)
    v, scale = _violations(y0, pi, pj, W, b)
    v = torch.where(ar[None, :] == pj[:, None], torch.zeros_like(v), v)
    vv, vk = torch.topk(v, min(add, n), dim=1)
    S = torch.cat([pj[:, None], torch.where(vv > opts["feas_tol"] * scale[:, None], vk, -1)], 1)
    mu = torch.where(S == pj[:, None], mu_j[:, None], torch.zeros(S.shape, dtype=dt, device=dev))

    out_y = torch.full((M, f), float("nan"), dtype=dt, device=dev)
    out_d = torch.full((M,), float("nan"), dtype=dt, device=dev)
    out_cert = torch.zeros(M, dtype=torch.bool, device=dev)
    out_inf = torch.zeros(M, dtype=torch.bool, device=dev)
    out_mu = torch.zeros((M, n), dtype=dt, device=dev)
    live = torch.arange(M, device=dev)
    iters = 0
    rows_max = 0
    while live.numel():
        Sk = S.clamp_min(0)
        pl, jl = pi[live], pj[live]
        A = W[pl][:, None, :] - W[Sk]
        c = b[pl][:, None] - b[Sk]
        A = torch.where((S < 0)[..., None], torch.zeros_like(A), A)
        c = torch.where(S < 0, torch.zeros_like(c), c)
        eq = S == jl[:, None]
        ineq = (S >= 0) & ~eq
        an2 = Wd2[pl[:, None], Sk]
        rows_max = max(rows_max, int((S >= 0).sum(1).max()))
        ops = GatheredRows(A, c, W[pl], b[pl], S >= 0)
        left = dict(opts, max_iter=max(opts["max_iter"] - iters, 0))  # one iteration budget for all rounds
        y, d, cert, inf, mu, its = solve_rows(x[live], ops, eq, ineq, an2, lo, hi, mu, Wnorm, left)
        iters += its + 1
        v, scale = _violations(torch.nan_to_num(y), pl, jl, W, b)
        inS = torch.zeros((S.shape[0], n), dtype=torch.int32, device=dev).scatter_add(1, Sk, (S >= 0).to(torch.int32))
        v = torch.where(inS > 0, torch.zeros_like(v), v)  # the rows in S were checked by the solve
        tol = opts["feas_tol"] * scale
        grow = cert & ~inf & (v.amax(1) > tol)
        width = int((S >= 0).sum(1).max())
        if width >= min(n - 1, MAX_ROWS):  # cannot grow further: those pairs stay uncertified
            cert = cert & ~grow
            grow = torch.zeros_like(grow)
        fin = ~grow
        idx = live[fin]
        out_y[idx], out_d[idx], out_cert[idx], out_inf[idx] = y[fin], d[fin], cert[fin], inf[fin]
        out_mu[idx] = torch.zeros((idx.numel(), n), dtype=dt, device=dev).scatter_add(
            1, Sk[fin], torch.where(S[fin] >= 0, mu[fin], torch.zeros_like(mu[fin])))
        if not bool(grow.any()):
            break
        live, S, mu, v, tol = live[grow], S[grow], mu[grow], v[grow], tol[grow]
        k_add = min(add, MAX_ROWS - width, n)
        vv, vk = torch.topk(v, k_add, dim=1)
        S = torch.cat([S, torch.where(vv > tol[:, None], vk, -1)], 1)
        mu = torch.cat([mu, torch.zeros((mu.shape[0], k_add), dtype=dt, device=dev)], 1)
    return out_y, out_d, out_cert, out_inf, out_mu, iters, rows_max
