r"""Augmented-Lagrangian solver of the inversion problem (``method="al"``, and the first phase of
``method="al+sqp"``; docs/inversion.md).

For ``min ||x - r||^2  s.t.  c(x) = 0,  0 <= x <= 1`` (Yousefzadeh, arXiv 2202.04052, sections 4-5)
the augmented Lagrangian (Nocedal & Wright, Numerical Optimization, ch. 17)
``L = 0.5||x - r||^2 + lambda^T c + mu/2 ||c||^2`` is minimised over the box by projected Adam
(Kingma & Ba, arXiv 1412.6980; ``x`` clipped to [0, 1] after every step); then ``lambda += mu c``, and
``mu`` grows 4x when ``||c||`` did not drop below a quarter. Gradient-only: each inner step costs
one forward and one backward pass of the batch (no Jacobian), so it also runs where the ``f x p``
Jacobian of the SQP would not fit. Optionally followed by Gauss-Newton feasibility steps
(``polish``; one Jacobian each).

:func:`solve_al_sqp` (``method="al+sqp"``): ``al_iter`` augmented-Lagrangian iterations as the global
phase, then the SQP of :mod:`fsl.inversion.sqp` as the local one.
"""
from __future__ import annotations

import torch

from fsl.inversion.options import ALSQPOptions
from fsl.inversion.problem import FeatureConstraint
from fsl.inversion.sqp import linearised_step, solve_sqp


def solve_al(problem: FeatureConstraint, x0, xr, abs_tol, max_iter: int, inner_steps: int, lr: float,
             mu0: float, polish: int, mu_rel: float):
    """Batched augmented Lagrangian (module docstring) from ``x0`` towards the references ``xr``
    ((B, C, H, W), model dtype); ``abs_tol`` (B,) goal on ``||c||`` (a sample stops at half of it).

    ``max_iter`` outer iterations of ``inner_steps`` projected Adam steps (learning rate ``lr``,
    penalty ``mu0`` at the start), then up to ``polish`` Gauss-Newton feasibility steps
    (regularisation ``mu_rel``) for the samples still infeasible.

    Returns x (B, C, H, W), outer iterations (B,), stationarity (B,) NaN (not measured).
    """
    B = x0.shape[0]
    idx = torch.arange(B, device=x0.device)
    x = x0.detach().clone()
    lam = torch.zeros(B, problem.m, dtype=torch.float64, device=x0.device)
    mu = torch.full((B,), mu0, dtype=torch.float64, device=x0.device)
    prev = torch.full((B,), float("inf"), dtype=torch.float64, device=x0.device)
    iters = torch.zeros(B, dtype=torch.long, device=x0.device)
    model = problem.model
    for it in range(max_iter):
        c_now = problem.value(x, idx)
        cn = c_now.norm(dim=1)
        done = cn <= 0.5 * abs_tol
        if bool(done.all()):
            break
        iters[~done] += 1
        xv = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([xv], lr=lr)
        lam_f, mu_f = lam.to(x.dtype), mu.to(x.dtype)
        for _ in range(inner_steps):
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                feats = model.forward_features(xv)
                diff = feats - problem.t.to(x.dtype)
                if problem.mode == "point":
                    c = diff
                else:
                    c = (diff.norm(dim=1) - problem.r.to(x.dtype)).unsqueeze(1)
                obj = 0.5 * (xv - xr).flatten(1).pow(2).sum(1)
                L = obj + (lam_f * c).sum(1) + 0.5 * mu_f * c.pow(2).sum(1)
                L = L * (~done).to(x.dtype)
                L.sum().backward()
            opt.step()
            with torch.no_grad():
                xv.clamp_(0.0, 1.0)
        x = torch.where(done.view(-1, *([1] * (x.dim() - 1))), x, xv.detach())
        c_new = problem.value(x, idx)
        cnn = c_new.norm(dim=1)
        lam = torch.where(done.unsqueeze(1), lam, lam + mu.unsqueeze(1) * c_new)
        mu = torch.where((cnn > 0.25 * prev) & ~done, mu * 4.0, mu)
        prev = cnn
    # Gauss-Newton feasibility steps (distance-blind) for the samples still infeasible
    for _ in range(polish):
        c = problem.value(x, idx)
        bad = (c.norm(dim=1) > 0.5 * abs_tol).nonzero().squeeze(1)
        if bad.numel() == 0:
            break
        xb = x[bad]
        c, J = problem.value_and_jac(xb, bad)
        flat = xb.reshape(bad.numel(), -1).double()
        mu = torch.full((bad.numel(),), mu_rel, dtype=torch.float64, device=flat.device)
        dn, _, _, _, _, _ = linearised_step(flat, flat, c, J, mu)
        trial = (flat + dn).clamp(0, 1).to(x.dtype).reshape(xb.shape)
        ct = problem.value(trial, bad)
        ok = ct.norm(dim=1) < c.norm(dim=1)
        x[bad[ok]] = trial[ok]
    return x, iters, torch.full((B,), float("nan"), dtype=torch.float64, device=x0.device)


def solve_al_sqp(problem: FeatureConstraint, x0: torch.Tensor, xr: torch.Tensor, abs_tol: torch.Tensor,
                 options: ALSQPOptions):
    """``options.al_iter`` augmented-Lagrangian iterations from ``x0`` (no polish), then
    ``options.max_iter`` SQP iterations. Returns x, iterations of both phases (B,), the SQP's
    stationarity (B,)."""
    x, iters, _ = solve_al(problem, x0, xr, abs_tol, options.al_iter, options.inner_steps, options.lr,
                           options.mu0, 0, options.mu_rel)
    x, it2, stat = solve_sqp(problem, x, xr, abs_tol, options.max_iter, options.mu_rel, options.step_tol)
    return x, iters + it2, stat


__all__ = ["solve_al", "solve_al_sqp"]
