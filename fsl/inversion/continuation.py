r"""Continuation Levenberg-Marquardt inversion (``invert_to_features(method="lm")``; docs/inversion.md).

For a batch of targets ``t_b`` and starting images ``x_b`` (the references) the solver follows the
straight feature segment from ``f0 = N(x)`` to ``t``::

    tau(s) = f0 + s (t - f0),   s: 0 -> 1,

tracking ``N(x(s)) = tau(s)`` with Levenberg-Marquardt (minimum-norm Gauss-Newton) steps on the
feature residual ``c = N(x) - tau(s)``::

    d = -J_F^T (J_F J_F^T + mu * mean(diag) I)^{-1} (c + J_B d_B)     (only f x f normal equations)

where a pixel whose step would leave ``[0, 1]`` is fixed at that bound (``B``, its move enters the
right-hand side) and the rest (``F``) is solved again (:func:`box_gn_step`, a projected active-set
step). A step is accepted when it decreases ``||c||``; ``mu`` follows the ratio of actual to
predicted decrease (Moré 1978; Nocedal & Wright, Numerical Optimization, ch. 10). The stage
parameter ``s`` advances when the stage residual is below ``eta * (stage length) * ||t - f0||``
(final stage: half the tolerance); the stage length doubles after a reached stage and is divided by
4 after ``patience`` rejected steps in a row (each raising ``mu`` 4x) on an exact Jacobian: the stage
length is the trust region of the path
(adaptive predictor-corrector continuation, Allgower & Georg, Numerical Continuation Methods, 1990).

Target coordinates on the floor ``L`` of the feature domain (SELU's ``-lambda*alpha``, ReLU's 0;
closest flip points put many there) use the residual ``g log(g / h)``, ``g = f - L + delta``,
``h = tau - L + delta`` (equal to ``f - tau`` to first order, same Jacobian row): its Gauss-Newton
step is the Newton step of ``log g``, exact for SELU's exponential approach ``lambda*alpha*e^z`` to
the floor, where the plain residual only gains a factor ``e`` per step.

Jacobians: exact ``J = dN/dx`` (``f`` vector-Jacobian products per sample, torch.func) after every
accepted step (``broyden=False``, default), or Broyden's rank-one secant update
``J += (dN - J dx) dx^T / ||dx||^2`` from every trial point (one forward pass) with the exact
Jacobian recomputed only after a rejected secant step (``broyden=True``), or the chord method
(``broyden="chord"``: J frozen until a step is rejected).

Because every step is the minimum-norm correction and the path starts at the reference, the images
``x(s)`` are a morph from the reference along the feature segment (``record`` keeps them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fsl.geometry._common import spd_solve



@dataclass
class PathInfo:
    """Per-sample diagnostics of :func:`continuation_lm` (all tensors on the solver's device).

    Attributes:
        progress: (B,) float64, the segment fraction ``s`` reached (1 = the target's stage).
        jacobians: (B,) int64, exact Jacobians computed.
        steps: (B,) int64, trial points evaluated (forward passes).
        stalled: (B,) bool, stopped because no step decreased the residual even on the shortest
            allowed stage (``ds < ds_min``) -- a local obstruction, not a budget stop.
        path: (B, K, p) float64 images at the recorded ``s`` values (NaN where not reached), or None.
        path_s: (K,) float64, the recorded ``s`` values, or None.
    """

    progress: torch.Tensor
    jacobians: torch.Tensor
    steps: torch.Tensor
    stalled: torch.Tensor
    path: torch.Tensor | None = None
    path_s: torch.Tensor | None = None


def box_gn_step(x: torch.Tensor, c: torch.Tensor, J: torch.Tensor, mu: torch.Tensor, passes: int = 6) -> torch.Tensor:
    """Minimum-norm Levenberg-Marquardt step ``d`` for ``c + J d = 0`` that keeps ``x + d`` in [0, 1].

    A pixel whose step would leave the box is fixed at that bound (its move ``bound - x`` enters the
    right-hand side) and the step is solved again on the remaining free pixels,
    ``d_F = -J_F^T (J_F J_F^T + mu * mean(diag) I)^{-1} (c + J_B d_B)``, at most ``passes`` times
    (a projected active-set step: unlike clipping the full step, it keeps the linear model's
    prediction). Shapes: x (B, p), c (B, m), J (B, m, p) float64, mu (B,). Returns d (B, p).
    """
    B, p = x.shape
    free = torch.ones_like(x, dtype=torch.bool)
    fixed = torch.zeros_like(x)
    eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
    d = fixed
    for _ in range(passes):
        Jf = J * free.unsqueeze(1)
        A = Jf @ Jf.transpose(1, 2)
        scale = A.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)
        A = A + (mu * scale).view(B, 1, 1) * eye
        rhs = c + (J @ fixed.unsqueeze(2)).squeeze(2)
        y = spd_solve(A, rhs.unsqueeze(2))
        d = fixed - (Jf.transpose(1, 2) @ y).squeeze(2) * free
        xn = x + d
        lo, hi = free & (xn < 0.0), free & (xn > 1.0)
        if not (lo.any() or hi.any()):
            break
        fixed = torch.where(lo, -x, torch.where(hi, 1.0 - x, fixed))
        free = free & ~(lo | hi)
    return d


def continuation_lm(problem, x0: torch.Tensor, abs_tol: torch.Tensor, max_iter: int = 80,
                    max_jac: int = 80, mu0: float = 1e-4, ds0: float = 0.25, eta: float = 0.25,
                    broyden: bool = False, patience: int = 4, ds_min: float = 1e-4, floor: float | None = None,
                    record: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, PathInfo]:
    """Follow ``tau(s) = f0 + s (t - f0)`` from ``s = 0`` to 1 (module docstring).

    Args:
        problem: a point-mode :class:`fsl.inversion.problem.FeatureConstraint` (``t`` (B, f) float64
            targets, ``value(x, idx)`` -> ``N(x) - t`` float64, ``value_and_jac(x, idx)`` ->
            (``N(x) - t``, ``J`` (B, f, p))).
        x0: (B, C, H, W) starting images in [0, 1] (model dtype), usually the references.
        abs_tol: (B,) goal on ``||N(x) - t||``; the last stage stops at half of it (margin for the
            re-measurement in the model's dtype).
        max_iter: trial points per sample (each one forward pass).
        max_jac: exact Jacobians per sample (the first included).
        mu0: initial relative Levenberg-Marquardt damping.
        ds0: first stage length as a fraction of the segment (1 = aim at the target at once).
        eta: a stage is reached when ``||N(x) - tau(s)|| <= eta * ds * ||t - f0||``.
        broyden: False (default): an exact Jacobian after every accepted step, within ``max_jac``.
            True: Broyden rank-one secant updates of J after every trial, the exact Jacobian
            recomputed only when a step on an updated J is rejected. "chord": the same lazy
            recomputation without the secant update (J frozen between rejections). Both need fewer
            Jacobians per step; on the trained models they did not hit more (docs/inversion.md).
        patience: rejected steps in a row on an exact Jacobian before the stage is shortened.
        ds_min: shortest stage before a sample is declared stalled.
        floor: the feature domain's lower bound (``model.feature_domain.lower``); target coordinates
            on it get a logarithmic residual (module docstring).
        record: optional sorted (K,) values of ``s`` in (0, 1] whose images are kept (the morph);
            each is reached to the full tolerance ``abs_tol / 2``.

    Returns:
        x (B, C, H, W) in the dtype of ``x0``, iterations (B,), :class:`PathInfo`.
    """
    shape, dtype, dev = x0.shape, x0.dtype, x0.device
    B = shape[0]
    lazy = bool(broyden)  # keep J across accepted steps, recompute after a rejected step on an old J
    secant = broyden is True or broyden == "broyden"  # ... and update it by Broyden's formula
    x = x0.reshape(B, -1).double().clone()
    idx = torch.arange(B, device=dev)

    def img(v):
        return v.to(dtype).reshape(-1, *shape[1:])

    t = problem.t
    c_full, J = problem.value_and_jac(img(x), idx)
    fx = c_full + t
    f0 = fx.clone()
    seg = t - f0
    segn = seg.norm(dim=1)
    f64 = dict(dtype=torch.float64, device=dev)
    s = torch.zeros(B, **f64)
    ds = torch.full((B,), float(ds0), **f64)
    mu = torch.full((B,), float(mu0), **f64)
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # J exact at the current x
    njac = torch.ones(B, dtype=torch.long, device=dev)
    fails = torch.zeros(B, dtype=torch.long, device=dev)  # rejected steps in a row on an exact J
    steps = torch.zeros(B, dtype=torch.long, device=dev)
    stalled = torch.zeros(B, dtype=torch.bool, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    rec = None if record is None else torch.as_tensor(record, **f64).reshape(-1)
    path = None if rec is None else torch.full((B, rec.numel(), x.shape[1]), float("nan"), **f64)
    half = 0.5 * abs_tol.to(**f64)

    # coordinates whose target sits on the floor of the feature domain (e.g. SELU's -lambda*alpha, a
    # ReLU's 0): residual g log(g / h), g = f - L + delta, h = tau - L + delta (= f - tau to first
    # order, same Jacobian row): the Gauss-Newton step of log g, exact for an exponential approach
    if floor is not None:
        near = (t - floor).abs() <= 1e-6 * (1.0 + abs(float(floor)))
        k = near.sum(1, keepdim=True).clamp_min(1).double()
        delta = (0.25 * half.unsqueeze(1) / k.sqrt()).expand_as(t)
    else:
        near = torch.zeros_like(t, dtype=torch.bool)

    def merit(f, tau, rows):
        """Residual (B', f) whose Gauss-Newton step is taken (rows of J unchanged)."""
        c = f - tau
        if floor is None or not near[rows].any():
            return c
        m, dl = near[rows], delta[rows]
        g = (f - floor + dl).clamp_min(1e-300)
        h = (tau - floor + dl).clamp_min(1e-300)
        return torch.where(m, g * torch.log(g / h), c)

    def predict(f, Jdx, rows):
        lin = f + Jdx
        if floor is None or not near[rows].any():
            return lin
        g = (f - floor + delta[rows]).clamp_min(1e-300)
        return torch.where(near[rows], floor - delta[rows] + g * torch.exp((Jdx / g).clamp_max(50.0)), lin)

    def next_goal():
        goal = torch.minimum(s + ds, torch.ones_like(s))
        tight = goal >= 1.0
        if rec is not None and rec.numel():
            # the next recorded s strictly above the current s caps the goal
            pos = torch.searchsorted(rec, s.contiguous(), right=True)
            has = pos < rec.numel()
            nxt = rec[pos.clamp_max(rec.numel() - 1)]
            cap = has & (nxt <= goal + 1e-12)
            goal = torch.where(cap, nxt, goal)
            tight = tight | cap
        tol = torch.where(tight, half, torch.maximum(half, eta * (goal - s) * segn))
        return goal, tol, tight

    for it in range(max_iter):
        # advance every sample whose current stage is reached (a few stages at once when cheap)
        for _ in range(8):
            goal, stol, tight = next_goal()
            c = fx + (1.0 - goal).unsqueeze(1) * seg - t  # N(x) - tau(goal)
            reached = ~done & (c.norm(dim=1) <= stol)
            if not reached.any():
                break
            if path is not None:
                hit = reached & tight
                for k in hit.nonzero().flatten().tolist():
                    j = int(torch.searchsorted(rec, goal[k:k + 1].contiguous()))
                    if j < rec.numel() and abs(float(rec[j] - goal[k])) <= 1e-12:
                        path[k, j] = x[k]
            s = torch.where(reached, goal, s)
            ds = torch.where(reached, (2.0 * ds).clamp_max(1.0), ds)
            done = done | (reached & (s >= 1.0))
        act = (~done).nonzero().flatten()
        if act.numel() == 0:
            break
        goal, stol, _ = next_goal()
        fresh_before = fresh[act].clone()
        tau = (f0 + goal.unsqueeze(1) * seg)[act]
        xa, Ja, fa = x[act], J[act], fx[act]
        d = box_gn_step(xa, merit(fa, tau, act), Ja, mu[act])
        trial = (xa + d).clamp(0.0, 1.0)
        dx = trial - xa
        ct_full = problem.value(img(trial), act)
        ft = ct_full + t[act]
        steps[act] += 1
        # accept on the feature residual itself; the prediction uses the same model as the step
        # (linear, and exponential on the floor coordinates)
        Jdx = (Ja @ dx.unsqueeze(2)).squeeze(2)
        ca, ct = fa - tau, ft - tau
        pred = predict(fa, Jdx, act) - tau
        cn2, ctn2, pn2 = ca.pow(2).sum(1), ct.pow(2).sum(1), pred.pow(2).sum(1)
        ratio = (cn2 - ctn2) / (cn2 - pn2).clamp_min(1e-300)
        ok = ctn2 < cn2 * (1.0 - 1e-4) ** 2
        # secant update from the trial (valid whether or not the step is accepted)
        if secant:
            dxn2 = dx.pow(2).sum(1)
            upd = dxn2 > 0
            if upd.any():
                r = (ft - fx[act]) - (Ja @ dx.unsqueeze(2)).squeeze(2)
                Ja = Ja + (r / dxn2.clamp_min(1e-300).unsqueeze(1)).unsqueeze(2) * dx.unsqueeze(1) * \
                    upd.view(-1, 1, 1)
                J[act] = Ja
            fresh[act[upd]] = False  # the secant J is no longer the exact one at x
        acc = act[ok]
        x[acc], fx[acc] = trial[ok], ft[ok]
        fresh[acc] = False
        fac = torch.where(ratio > 0.75, 1.0 / 3.0, torch.where(ratio < 0.25, 2.0, 1.0))
        mu[act] = torch.where(ok, (mu[act] * fac).clamp(1e-10, 1e10), (mu[act] * 4.0).clamp_max(1e10))
        # a rejected step raises mu; `patience` rejections in a row on an exact Jacobian (or with no
        # Jacobian left) shorten the stage by 4 (the stage length is the path's trust region); a
        # rejected step on a secant J gets the exact Jacobian instead
        rej = act[~ok]
        was_fresh = fresh_before[~ok]
        fails[act[ok]] = 0
        counts = was_fresh | (njac[rej] >= max_jac) | (not lazy)
        fails[rej] = fails[rej] + counts.long()
        shrink = torch.zeros_like(done)
        shrink[rej] = fails[rej] >= patience
        if shrink.any():
            ds = torch.where(shrink, ds * 0.25, ds)
            mu = torch.where(shrink, torch.full_like(mu, float(mu0)), mu)
            fails = torch.where(shrink, torch.zeros_like(fails), fails)
            gave_up = shrink & (ds < ds_min)
            stalled |= gave_up
            done |= gave_up
        if lazy:
            need = torch.zeros_like(done)
            need[rej] = ~was_fresh
            need &= ~done
        else:
            need = ~fresh & ~done
        need &= njac < max_jac
        need &= ~done
        if need.any():
            rows = need.nonzero().flatten()
            cj, Jj = problem.value_and_jac(img(x[rows]), rows)
            J[rows] = Jj
            fx[rows] = cj + t[rows]
            fresh[rows] = True
            njac[rows] += 1
    info = PathInfo(progress=s, jacobians=njac, steps=steps, stalled=stalled, path=path,
                    path_s=rec)
    return img(x), steps, info


__all__ = ["continuation_lm", "PathInfo"]
