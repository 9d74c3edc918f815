r"""Two-phase SQP / projected Gauss-Newton solver of the inversion problem (``method="sqp"``; docs/inversion.md).

Yousefzadeh (arXiv 2202.04052, sections 4-5) poses the inversion as
``min ||x - r||^2  s.t.  c(x) = 0,  0 <= x <= 1``; this is an equality-constrained SQP method
(Nocedal & Wright, Numerical Optimization, ch. 18). Each step solves the linearised problem exactly
on the free pixels,
``min ||x + d - r||^2  s.t.  c(x) + J d = 0,  d_i = 0 for pixels held at a bound``, via the
small ``m x m`` system ``(J J^T + mu I) lambda = c - J (x - r)`` in float64 (``m = f`` for a
point, ``m = 1`` for a sphere; never a ``p x p`` matrix): :func:`linearised_step`. The box is an
active set (pixels at a bound whose step points outward are frozen) plus a projection of every
trial point. Cost per iteration: one Jacobian of ``c`` (``f`` vector-Jacobian products per sample
for a point, one for a sphere), an ``m x m`` solve, and a forward pass per trial point.

:func:`solve_sqp`: phase A (infeasible samples) takes Levenberg-Marquardt Gauss-Newton steps on
``||c||``; phase B (feasible samples) the SQP step ``dn + alpha dt`` followed by Gauss-Newton
corrections with the same Jacobian (chord steps, against the Maratos effect), accepted only when
feasible again and strictly closer to the reference.
"""
from __future__ import annotations

import torch

from fsl.geometry._common import spd_solve
from fsl.inversion.problem import FeatureConstraint

_BOUND_EPS = 1e-6  # a pixel this close to 0 or 1 counts as held at the bound (active set)


def linearised_step(x, xr, c, J, mu):
    """Solve the linearised subproblem on the free pixels.

    ``min ||x + d - r||^2  s.t.  c + J d = 0,  d_i = 0`` for pixels held at a bound, with
    Levenberg-Marquardt regularisation ``J_F J_F^T + mu * mean(diag) * I``.

    Shapes: x, xr (B, p) float64; c (B, m); J (B, m, p); mu (B,).
    Returns the normal (feasibility) part dn = -J_F^+ c, the tangential part
    dt = -(I - J_F^+ J_F) (x - r)_F, lambda (B, m), the free mask (B, p), and (A, J_F) for
    chord corrections.
    """
    B, p = x.shape
    e = x - xr
    free = torch.ones_like(x, dtype=torch.bool)
    at_lo = x <= _BOUND_EPS
    at_hi = x >= 1.0 - _BOUND_EPS
    eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
    for _ in range(4):
        Jf = J * free.unsqueeze(1)
        ef = e * free
        A = Jf @ Jf.transpose(1, 2)
        scale = A.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)
        A = A + (mu * scale).view(B, 1, 1) * eye
        Je = (Jf @ ef.unsqueeze(2)).squeeze(2)
        sol = spd_solve(A, torch.stack([c, Je], dim=2))  # (B, m, 2)
        lam = sol[..., 0] - sol[..., 1]
        dn = -(Jf.transpose(1, 2) @ sol[..., :1]).squeeze(2) * free
        dt = (-ef + (Jf.transpose(1, 2) @ sol[..., 1:]).squeeze(2)) * free
        d = dn + dt
        newly = free & ((at_lo & (d < 0)) | (at_hi & (d > 0)))
        if not newly.any():
            break
        free = free & ~newly
    return dn, dt, lam, free, A, Jf


def chord_correction(A, Jf, c):
    """Gauss-Newton correction with a frozen Jacobian: ``-J_F^T A^{-1} c`` (B, p)."""
    return -(Jf.transpose(1, 2) @ spd_solve(A, c.unsqueeze(2))).squeeze(2)


def solve_sqp(problem: FeatureConstraint, x0: torch.Tensor, xr: torch.Tensor, abs_tol: torch.Tensor,
              max_iter: int, mu_rel: float, step_tol: float, n_chord: int = 3):
    """Batched two-phase SQP. x0, xr: (B, C, H, W) in the model dtype; abs_tol (B,) goal on ||c||.

    Phase A (infeasible samples): Levenberg-Marquardt Gauss-Newton steps ``-J_F^+ c`` (minimum-norm,
    so they stay close to the start) with a sufficient-decrease test on ``||c||``.
    Phase B (feasible samples, ``||c|| <= abs_tol / 2``): the SQP step ``dn + alpha * dt`` followed
    by up to ``n_chord`` Gauss-Newton corrections with the same Jacobian; a trial is accepted only
    if it is feasible again and strictly closer to the reference (a feasible, monotone path),
    otherwise alpha is halved. A sample stops when ``||dt|| <= step_tol * ||x - r||`` or no alpha
    down to 2^-8 is accepted.

    Returns x (B, C, H, W), iterations (B,), stationarity ``||dt|| / ||x - r||`` (B,).
    """
    shape = x0.shape
    B = shape[0]
    dtype = x0.dtype
    dev = x0.device
    x = x0.reshape(B, -1).double().clone()
    xr64 = xr.reshape(B, -1).double()
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    stat = torch.full((B,), float("nan"), dtype=torch.float64, device=dev)
    mu = torch.full((B,), mu_rel, dtype=torch.float64, device=dev)
    alpha0 = torch.ones(B, dtype=torch.float64, device=dev)
    active = torch.arange(B, device=dev)

    def to_img(v):
        return v.to(dtype).reshape(-1, *shape[1:])

    for it in range(max_iter):
        if active.numel() == 0:
            break
        xa, xra = x[active], xr64[active]
        c, J = problem.value_and_jac(to_img(xa), active)
        cn = c.norm(dim=1)
        tol_a = 0.5 * abs_tol[active]
        feas = cn <= tol_a
        iters[active] += 1
        keep = torch.ones(active.numel(), dtype=torch.bool, device=dev)

        # ---------------- phase A: restore feasibility (LM Gauss-Newton)
        ia = (~feas).nonzero().squeeze(1)
        if ia.numel():
            mu_a = mu[active[ia]].clone()
            acc = torch.zeros(ia.numel(), dtype=torch.bool, device=dev)
            for _ in range(8):
                todo = (~acc).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                sel = ia[todo]
                dn, _, _, _, _, _ = linearised_step(xa[sel], xa[sel], c[sel], J[sel], mu_a[todo])
                trial = (xa[sel] + dn).clamp(0.0, 1.0)
                ct = problem.value(to_img(trial), active[sel])
                ok = ct.norm(dim=1) <= (1.0 - 1e-4) * cn[sel]
                x[active[sel[ok]]] = trial[ok]
                acc[todo[ok]] = True
                mu_a[todo[ok]] = (mu_a[todo[ok]] / 3.0).clamp_min(mu_rel)
                mu_a[todo[~ok]] = mu_a[todo[~ok]] * 10.0 + 1e-8
            mu[active[ia]] = mu_a
            keep[ia[~acc]] = False  # no decrease of ||c|| possible: infeasible, stop

        # ---------------- phase B: decrease the distance on the constraint surface
        ib = feas.nonzero().squeeze(1)
        if ib.numel():
            xb, xrb, cb = xa[ib], xra[ib], c[ib]
            dn, dt, lam, free, A, Jf = linearised_step(xb, xrb, cb, J[ib], mu[active[ib]])
            en = (xb - xrb).norm(dim=1)
            st = dt.norm(dim=1) / en.clamp_min(1e-12)
            stat[active[ib]] = st
            done = st <= step_tol
            alpha = alpha0[active[ib]].clone()
            acc = done.clone()
            for _ in range(9):
                todo = (~acc).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                trial = (xb[todo] + dn[todo] + alpha[todo, None] * dt[todo]).clamp(0.0, 1.0)
                gi = active[ib[todo]]
                ct = problem.value(to_img(trial), gi)
                for _ in range(n_chord):
                    bad = ct.norm(dim=1) > tol_a[ib[todo]]
                    if not bad.any():
                        break
                    corr = chord_correction(A[todo[bad]], Jf[todo[bad]], ct[bad]) * free[todo[bad]]
                    trial[bad] = (trial[bad] + corr).clamp(0.0, 1.0)
                    ct[bad] = problem.value(to_img(trial[bad]), gi[bad])
                ok = (ct.norm(dim=1) <= tol_a[ib[todo]]) & ((trial - xrb[todo]).norm(dim=1) < en[todo])
                x[gi[ok]] = trial[ok]
                acc[todo[ok]] = True
                alpha0[gi[ok]] = (alpha[todo[ok]] * 2.0).clamp_max(1.0)
                alpha[todo[~ok]] *= 0.5
            keep[ib[done | ~acc]] = False
            alpha0[active[ib[~acc]]] = alpha[~acc]
        active = active[keep]
    # final stationarity of samples still active when the iteration budget ran out
    return to_img(x), iters, stat


__all__ = ["solve_sqp", "linearised_step", "chord_correction"]
