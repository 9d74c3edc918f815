r"""``method="lm"`` of :func:`fsl.inversion.invert_to_features`: continuation Levenberg-Marquardt with
restarts and a fallback (docs/inversion.md).

1. :func:`track` -- the continuation Levenberg-Marquardt solver of :mod:`fsl.inversion.continuation`
   along the feature segment from ``N(x_r)`` to the target (a sphere target becomes the point of the
   sphere on that segment). Cost: one forward pass per trial point and one exact Jacobian (``f``
   vector-Jacobian products per sample) per accepted step, solved in the ``f x f`` normal equations.
2. ``polish`` SQP iterations (:mod:`fsl.inversion.sqp`) that decrease ``||x - x_r||`` on the constraint.
3. :func:`pool_restarts` -- a point target the path misses is tracked again from the pool images with
   the nearest features (short segments), the closest hit to the reference kept.
4. The fallback: samples still outside the tolerance are solved again by "al+sqp"
   (:func:`fsl.inversion.al.solve_al_sqp`) from the reference, the better answer kept.
"""
from __future__ import annotations

import torch

from fsl.inversion.al import solve_al_sqp
from fsl.inversion.continuation import continuation_lm
from fsl.inversion.jacobian import features_of
from fsl.inversion.options import LMOptions, PoolOptions
from fsl.inversion.problem import FeatureConstraint
from fsl.inversion.sqp import solve_sqp


def track(sub: FeatureConstraint, model, xs, tol_s, mode, max_iter, max_jac, broyden, gen):
    """The continuation Levenberg-Marquardt solver (fsl.inversion.continuation) on a point problem;
    a sphere ``||N(x) - t|| = r`` is solved as the point of the sphere on the segment from ``N(x0)``
    to ``t`` (``t + r u``, ``u`` the unit direction from ``t`` to ``N(x0)``, random when they coincide),
    whose hit puts ``N(x)`` on the sphere within the same tolerance. Returns x, trial points (B,),
    :class:`fsl.inversion.continuation.PathInfo`."""
    dom = getattr(model, "feature_domain", None)
    floor = None if dom is None else dom.lower
    if mode == "point":
        return continuation_lm(sub, xs, tol_s, max_iter=max_iter, max_jac=max_jac, broyden=broyden, floor=floor)
    f0 = features_of(model, xs).double()
    u = f0 - sub.t
    nrm = u.norm(dim=1, keepdim=True)
    tiny = nrm.squeeze(1) <= 1e-9 * (1.0 + sub.t.norm(dim=1))
    if tiny.any():
        g = torch.randn(int(tiny.sum()), u.shape[1], generator=gen, dtype=torch.float64).to(u.device)
        u[tiny], nrm[tiny] = g, g.norm(dim=1, keepdim=True)
    point = FeatureConstraint(model, sub.t + sub.r.unsqueeze(1) * u / nrm, None, "point", sub.max_rows, gen)
    return continuation_lm(point, xs, tol_s, max_iter=max_iter, max_jac=max_jac, broyden=broyden, floor=floor)


def pool_restarts(sub: FeatureConstraint, model, xs, xr_s, tol_s, it_s, pool: PoolOptions, options: LMOptions,
                  gen):
    """Samples still missing their point target start the continuation again from the ``pool.k`` pool
    images whose features are nearest to the target (short feature segments); the closest hit to the
    reference (after ``pool.polish`` SQP iterations) replaces the miss. Returns (xs, it_s, used)."""
    dev = xs.device
    used = torch.zeros(xs.shape[0], dtype=torch.bool, device=dev)
    ar = torch.arange(xs.shape[0], device=dev)
    c0 = sub.value(xs, ar).norm(dim=1)
    mi = (c0 > tol_s).nonzero().squeeze(1)
    images, pool_features = pool.images, pool.features
    if mi.numel() == 0 or images.shape[0] == 0:
        return xs, it_s, used
    images = images.to(dev, xs.dtype)
    if pool_features is None:
        pool_features = torch.cat([features_of(model, images[s:s + 512]) for s in range(0, images.shape[0], 512)])
    pf = pool_features.to(dev).double()
    kk = min(int(pool.k), images.shape[0])
    near = torch.cdist(sub.t[mi], pf).topk(kk, dim=1, largest=False).indices  # (m, kk)
    rep = mi.repeat_interleave(kk)
    psub = sub.subset(rep)
    xp, itp, _ = track(psub, model, images[near.flatten()].clone(), tol_s[rep], "point", options.max_iter,
                       options.max_jac, options.broyden, gen)
    if pool.polish:
        xp, itp2, _ = solve_sqp(psub, xp, xr_s[rep], tol_s[rep], pool.polish, options.mu_rel, options.step_tol)
        itp = itp + itp2
    cp = psub.value(xp, torch.arange(rep.numel(), device=dev)).norm(dim=1)
    dist = (xp.double() - xr_s[rep].double()).flatten(1).norm(dim=1)
    score = torch.where(cp <= tol_s[rep], dist, 1e30 + cp).view(mi.numel(), kk)
    best = score.argmin(1)
    pick = torch.arange(mi.numel(), device=dev) * kk + best
    better = cp[pick] < c0[mi]
    xs[mi[better]] = xp[pick[better]]
    it_s[mi] = it_s[mi] + itp.view(mi.numel(), kk).sum(1)
    used[mi[better]] = True
    return xs, it_s, used


def solve_lm(sub: FeatureConstraint, model, xs: torch.Tensor, xr_s: torch.Tensor, tol_s: torch.Tensor, mode: str,
             options: LMOptions, gen: torch.Generator):
    """``method="lm"`` on the samples of ``sub`` (module docstring): starting images ``xs``, references
    ``xr_s`` (b, C, H, W), goals ``tol_s`` (b,) on ``||c||``; ``mode`` is the requested mode ("point",
    "ball" or "sphere"; ``sub`` is a point or sphere constraint).

    Returns x (b, C, H, W), iterations (b,), stationarity (b,) (NaN unless ``options.polish``) and the
    per-sample diagnostics ``progress``, ``jacobians``, ``stalled``, ``fallback``, ``pool``."""
    dev = xs.device
    n = xs.shape[0]
    st_s = torch.full((n,), float("nan"), dtype=torch.float64, device=dev)
    xs, it_s, info = track(sub, model, xs, tol_s, mode, options.max_iter, options.max_jac, options.broyden, gen)
    extra = {"progress": info.progress, "jacobians": info.jacobians, "stalled": info.stalled}
    if options.polish:
        xs, it2, st_s = solve_sqp(sub, xs, xr_s, tol_s, options.polish, options.mu_rel, options.step_tol)
        it_s = it_s + it2
    extra["fallback"] = torch.zeros(n, dtype=torch.bool, device=dev)
    extra["pool"] = torch.zeros(n, dtype=torch.bool, device=dev)
    if options.pool is not None and mode == "point":
        xs, it_s, used = pool_restarts(sub, model, xs, xr_s, tol_s, it_s, options.pool, options, gen)
        extra["pool"] = used
    if options.fallback is not None:
        # samples the path did not bring within tol: the al+sqp solver from the reference
        miss = (sub.value(xs, torch.arange(n, device=dev)).norm(dim=1) > tol_s
                if mode == "point" else
                (sub.value(xs, torch.arange(n, device=dev)).abs().squeeze(1) > tol_s))
        mi = miss.nonzero().squeeze(1)
        if mi.numel():
            fsub = sub.subset(mi)
            xf, itf, _ = solve_al_sqp(fsub, xr_s[mi].clone(), xr_s[mi], tol_s[mi], options.fallback)
            cf = fsub.value(xf, torch.arange(mi.numel(), device=dev)).norm(dim=1)
            cl = sub.value(xs[mi], mi).norm(dim=1)
            better = cf < cl
            xs[mi[better]] = xf[better]
            it_s[mi] = it_s[mi] + itf
            extra["fallback"][mi[better]] = True
    return xs, it_s, st_s, extra


__all__ = ["solve_lm", "track", "pool_restarts"]
