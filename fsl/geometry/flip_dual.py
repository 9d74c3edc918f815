"""Stage 3 of :func:`fsl.geometry.flip_margins`: the flip-point QP of a (sample, class) pair solved
exactly on its Lagrange dual, with certificates (docs/geometry.md).

For a feature ``x`` with predicted class ``i`` and target class ``j``, write ``A`` for the rows
``a_k = w_i - w_k`` and ``r(y) = A y + c`` (the logit gaps). Keeping the box in the inner
minimisation, the dual

    maximize g(mu) = 1/2 ||y(mu) - x||^2 - mu·r(y(mu)),   y(mu) = clip(x + A^T mu, lower, upper)
    subject to mu_k >= 0 (k != j), mu_j free,

is concave and piecewise quadratic in ``n - 1`` variables with gradient ``-r(y(mu))``.
:func:`solve_dual` runs a projected semismooth Newton / primal-dual active-set method on it
(generalized Hessian ``A P A^T``, ``P`` the coordinates strictly inside the box; Armijo
backtracking along the projection arc), every pair of a batch at once. A pair is certified when
``y(mu)`` is feasible and the duality gap is closed, or infeasible when :func:`_farkas` verifies the
Farkas certificate ``d = mu / ||mu||`` (``sup_{lower <= y <= upper} d·r(y) < 0``: no ``y`` in the
box satisfies the constraints).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _residuals(y: Tensor, W: Tensor, b: Tensor, pi: Tensor) -> tuple[Tensor, Tensor]:
    """``r_k = z_i - z_k`` at ``y`` (M, n) and a per-pair scale for tolerances (M,)."""
    z = torch.addmm(b, y, W.T)
    zi = z.gather(1, pi[:, None])
    return zi - z, 1.0 + z.abs().amax(1)


def _box_parts(lo: Tensor, hi: Tensor) -> tuple[Tensor, ...]:
    """Per-coordinate pieces of the box that :func:`_farkas` needs, computed once."""
    lo_inf, hi_inf = torch.isinf(lo), torch.isinf(hi)
    lo_fin = torch.where(lo_inf, torch.zeros_like(lo), lo)
    hi_fin = torch.where(hi_inf, torch.zeros_like(hi), hi)
    return lo_inf, hi_inf, lo_fin, hi_fin, torch.maximum(lo_fin.abs(), hi_fin.abs())


def _farkas(d: Tensor, pi: Tensor, W: Tensor, cfull: Tensor, box: tuple[Tensor, ...],
            Wnorm: float, tol: float) -> Tensor:
    """Verify the infeasibility certificate ``d`` (M, n); returns (M,) bool."""
    lo_inf, hi_inf, lo_fin, hi_fin, mabs = box
    dn = d.abs().amax(1, keepdim=True).clamp_min(1e-300)
    d = d / dn
    nu = -d
    nu.scatter_add_(1, pi[:, None], d.sum(1, keepdim=True))
    v = nu @ W  # A^T d, (M, f)
    vt = 1e-12 * Wnorm * d.abs().sum(1, keepdim=True)
    pos = v > vt
    neg = v < -vt
    bad = (pos & hi_inf).any(1) | (neg & lo_inf).any(1)
    # sup over the box of v·y; entries below vt count with their worst case over finite bounds
    contrib = torch.where(pos, v * hi_fin, torch.where(neg, v * lo_fin, v.abs() * mabs))
    sigma = contrib.sum(1) + (d * cfull).sum(1)
    scale = 1.0 + (d.abs() * cfull.abs()).sum(1)
    return (~bad) & (sigma < -tol * scale)


def solve_dual(x, pi, pj, W, b, lo, hi, mu, O, Wnorm, opts, Wd2):
    """Projected semismooth Newton (primal-dual active set) on the dual for pairs (M,).

    Returns ``(y, distance, certified, infeasible, mu, iterations)``; ``distance`` is ``+inf`` for a
    pair with a verified Farkas certificate."""
    M, f = x.shape
    n = W.shape[0]
    dt = x.dtype
    dev = x.device
    ar = torch.arange(n, device=dev)
    cfull = b[pi][:, None] - b[None, :]
    eqm = ar[None, :] == pj[:, None]
    ineq = (ar[None, :] != pj[:, None]) & (ar[None, :] != pi[:, None])
    # PDAS scaling: mu has units of r / ||a||^2
    an2 = Wd2[pi]
    # rows with w_k == w_i have a zero norm: floor the scale so the steps stay defined
    an2 = torch.maximum(an2, (1e-12 * an2.amax(1, keepdim=True)).clamp_min(1e-30))
    cs = 1.0 / an2.clamp_min(1e-300)
    box = _box_parts(lo, hi)

    out_y = torch.full((M, f), float("nan"), dtype=dt, device=dev)
    out_d = torch.full((M,), float("nan"), dtype=dt, device=dev)
    out_cert = torch.zeros(M, dtype=torch.bool, device=dev)
    out_inf = torch.zeros(M, dtype=torch.bool, device=dev)
    out_mu = mu.clone()
    live = torch.arange(M, device=dev)
    damped = torch.zeros(M, dtype=torch.bool, device=dev)  # pairs whose plain Newton step failed once
    iters = 0
    step = None
    for it in range(opts["max_iter"] + 1):
        if live.numel() == 0:
            break
        iters = it
        m_ = mu
        pi_l, x_l = pi[live], x[live]
        nu = -m_
        nu.scatter_add_(1, pi_l[:, None], m_.sum(1, keepdim=True))
        z = torch.addmm(x_l, nu, W)
        y = torch.clamp(z, lo, hi)
        r, scale = _residuals(y, W, b, pi_l)
        eq_l, in_l = eqm[live], ineq[live]
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
                cf_c = cfull[live][cand]
                inf_ok[cand] = _farkas(m_[cand], pi_l[cand], W, cf_c, box, Wnorm, opts["farkas_tol"])
                if step is not None:  # the last step also points along a diverging dual
                    st = torch.where(ineq[live][cand], step[cand].clamp_min(0), step[cand])
                    inf_ok[cand] |= _farkas(st, pi_l[cand], W, cf_c, box, Wnorm, opts["farkas_tol"])
        fin = ok | inf_ok
        last = it == opts["max_iter"]
        if bool(fin.any()) or last:
            idx = live[fin] if not last else live
            sel = fin if not last else torch.ones_like(fin)
            out_y[idx] = y[sel]
            out_d[idx] = torch.where(inf_ok[sel], torch.full_like(dub[sel], float("inf")), dub[sel])
            out_cert[idx] = fin[sel]
            out_inf[idx] = inf_ok[sel]
            out_mu[idx] = m_[sel]
            if last:
                # uncertified: report the infeasible guess when the dual blew up
                blown = m_.abs().amax(1) * an2[live].amax(1).sqrt() > 1e6 * (1.0 + scale)
                out_d[live[blown]] = float("inf")
                break
        keep = ~fin
        live = live[keep]
        mu, z, r = m_[keep], z[keep], r[keep]
        step = step[keep] if step is not None else None
        damped = damped[keep]
        pi_l, eq_l, in_l = pi_l[keep], eq_l[keep], in_l[keep]
        Ml = live.numel()
        if Ml == 0:
            break
        x_l = x[live]
        cs_l = cs[live]
        # Bertsekas' projected Newton: inequalities at (near) zero with r_k > 0 are held fixed
        # (scaled gradient step), the rest get a Newton step on the generalized Hessian A P A^T.
        pg = torch.where(in_l, mu - (mu - cs_l * r).clamp_min(0), cs_l * r)
        pg = torch.where(ar[None, :] == pi_l[:, None], torch.zeros_like(pg), pg)
        w = pg.abs().amax(1, keepdim=True)
        eps = torch.minimum(w, 1e-3 * (1.0 + mu.abs().amax(1, keepdim=True)))
        fixed = in_l & (mu <= eps) & (r > 0)
        act = ~fixed & (ar[None, :] != pi_l[:, None])
        p = ((z > lo) & (z < hi)).to(dt)
        G = (p @ O).view(Ml, n, n)
        Gi = G.gather(1, pi_l[:, None, None].expand(Ml, 1, n)).squeeze(1)  # (Ml, n)
        Gii = Gi.gather(1, pi_l[:, None])
        H = G - Gi[:, :, None] - Gi[:, None, :] + Gii[:, :, None]
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
        Hs = H * (actf[:, :, None] * actf[:, None, :]) + torch.diag_embed(na + actf * an2[live] * wrel)
        dN, info = torch.linalg.solve_ex(Hs, (-r * actf)[:, :, None])
        dN = torch.where((info != 0)[:, None] | ~torch.isfinite(dN.squeeze(2)), -cs_l * r, dN.squeeze(2))
        dirn = torch.where(act, dN, torch.where(fixed, -cs_l * r, torch.zeros_like(r)))
        # Armijo backtracking along the projection arc.  The full Newton step is tried first for
        # every pair; the pairs that reject it evaluate all step sizes in one batch, Newton
        # candidates first, then scaled projected-gradient candidates as a fallback.
        phi0 = (mu * r).sum(1) - 0.5 * ((y[keep] - x_l) ** 2).sum(1)

        def trial(cand, rows, xrows, pirows):
            Mc, Kc, _ = cand.shape
            cf = cand.reshape(Mc * Kc, n)
            pik = pirows.repeat_interleave(Kc)
            nuc = -cf
            nuc.scatter_add_(1, pik[:, None], cf.sum(1, keepdim=True))
            xk = xrows.repeat_interleave(Kc, 0)
            yk = torch.clamp(torch.addmm(xk, nuc, W), lo, hi)
            rk, _ = _residuals(yk, W, b, pik)
            phik = ((cf * rk).sum(1) - 0.5 * ((yk - xk) ** 2).sum(1)).view(Mc, Kc)
            dec = ((mu[rows][:, None, :] - cand) * r[rows][:, None, :]).sum(2)
            return (phik <= phi0[rows][:, None] - 1e-4 * dec + 1e-14 * (1.0 + phi0[rows].abs()[:, None])) & (dec > 0)

        allr = torch.arange(Ml, device=dev)
        full = mu + dirn
        full = torch.where(in_l, full.clamp_min(0), full)
        ok1 = trial(full[:, None, :], allr, x_l, pi_l)[:, 0]
        newmu = torch.where(ok1[:, None], full, mu)
        anyok = ok1.clone()
        damped = damped | ~ok1
        rej = torch.nonzero(~ok1).squeeze(1)
        if rej.numel():
            K = opts["ls_steps"]
            alphas = 0.5 ** torch.arange(1, K + 1, dtype=dt, device=dev)
            mr, dr, rr = mu[rej], dirn[rej], r[rej]
            gdir = -cs_l[rej] * rr / (n - 1)
            cand = torch.cat([mr[:, None, :] + alphas[None, :, None] * dr[:, None, :],
                              mr[:, None, :] + alphas[None, :, None] * gdir[:, None, :]], 1)
            cand = torch.where(in_l[rej][:, None, :], cand.clamp_min(0), cand)
            okls = trial(cand, rej, x_l[rej], pi_l[rej])
            first = okls.to(torch.int8).argmax(1)
            got = okls.any(1)
            pick = cand[torch.arange(rej.numel(), device=dev), first]
            newmu[rej] = torch.where(got[:, None], pick, mr)
            anyok[rej] = got
        step = torch.where(anyok[:, None], newmu - mu, torch.zeros_like(mu))
        mu = torch.where(anyok[:, None], newmu, mu)
        mu = torch.where(ar[None, :] == pi_l[:, None], torch.zeros_like(mu), mu)
    return out_y, out_d, out_cert, out_inf, out_mu, iters
