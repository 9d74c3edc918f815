r"""Inversion from feature space to pixels (Yousefzadeh, arXiv 2202.04052, sections 4-5; docs/inversion.md).

For every target feature ``t_b`` find the image ``x_b`` in the box ``[0, 1]^p`` closest to its
reference ``r_b``::

    minimize  ||x - r||^2     subject to   N(x) = t                 (mode="point")
                                            ||N(x) - t|| <= radius    (mode="ball")
                                            ||N(x) - t||  = radius    (mode="sphere")
                                            0 <= x <= 1

``N = model.forward_features``.  The problem is non-convex (``N`` is a deep net), so a local
solution is returned; what is guaranteed is the honesty of the report: the residual is measured
again on the returned image, and ``success`` is true only when it meets the tolerance.

Batched solvers:

* ``method="lm"`` (default): continuation Levenberg-Marquardt along the feature segment from
  ``N(x_r)`` to ``t`` (:mod:`fsl.inversion.continuation`), misses re-solved by "al+sqp".
* ``method="sqp"``: an equality-constrained SQP / projected Gauss-Newton method. Each
  step solves the linearised problem exactly on the free pixels,
  ``min ||x + d - r||^2  s.t.  c(x) + J d = 0,  d_i = 0 for pixels held at a bound``, via the
  small ``m x m`` system ``(J J^T + mu I) lambda = c - J (x - r)`` in float64 (``m = f`` for a
  point, ``m = 1`` for a sphere), with an Armijo backtracking line search on the exact
  penalty ``0.5 ||x - r||^2 + rho ||c(x)||`` (``rho > ||lambda||``), a second-order correction
  against the Maratos effect, and a pure Gauss-Newton feasibility fallback when the line search
  fails. The box is an active set (pixels at a bound whose step points outward are frozen)
  plus a projection of every trial point.
* ``method="al"``: augmented Lagrangian with a projected Adam inner solver
  (``L = 0.5||x-r||^2 + lambda^T c + mu/2 ||c||^2``; ``lambda += mu c``; ``mu`` grows when ``||c||``
  stalls), optionally followed by Gauss-Newton feasibility steps (``al_polish``); "al+sqp" runs
  15 AL iterations, then the SQP.

A ball is solved as follows: a reference already inside the ball is its own solution (distance 0);
otherwise the closest feasible point lies on the sphere (on the segment from the reference to
any feasible point the constraint changes sign), so the sphere problem is solved.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fsl.inversion._common import (_chord, _linearised_step, check_images, check_values, feature_jacobian,
                                  features_of, frozen_eval, vjp_rows)

MODES = ("point", "ball", "sphere")
METHODS = ("lm", "al+sqp", "sqp", "al")


@dataclass
class InversionResult:
    """Per-sample outcome of :func:`invert_to_features` (all tensors on the inputs' device).

    Attributes:
        images: (B, C, H, W) solutions, inside [0, 1].
        features: (B, f) ``N(images)``, re-evaluated on the returned images.
        feature_residual: (B,) float64. ``mode="point"``: ``||N(x) - t|| / max(||t||, abs_floor)``;
            ``"ball"``: ``max(||N(x) - t|| - r, 0) / r``; ``"sphere"``: ``| ||N(x) - t|| - r | / r``.
        feature_error: (B,) float64 ``||N(x) - t||`` (absolute).
        distance: (B,) float64 ``||x - x_r||`` (Euclidean, pixel units in [0, 1]).
        success: (B,) bool, ``feature_residual <= tol`` (measured, never assumed).
        iterations: (B,) int64 outer iterations used per sample.
        stationarity: (B,) float64 ``||tangential step|| / max(||x - x_r||, 1e-12)`` at the end:
            how far the linearised problem would still move the image along the constraint
            surface (small = a local minimiser of the distance; SQP only, NaN for "al").
        target_in_domain: (B,) bool, whether ``t`` lies in ``model.feature_domain`` (a target
            outside cannot be reached; it is still attempted and reported honestly).
        mode, tol, method: what was solved.
    """

    images: torch.Tensor
    features: torch.Tensor
    feature_residual: torch.Tensor
    feature_error: torch.Tensor
    distance: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    stationarity: torch.Tensor
    target_in_domain: torch.Tensor
    mode: str = "point"
    tol: float = 1e-3
    method: str = "sqp"
    extra: dict = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean()) if self.success.numel() else float("nan")


# ----------------------------------------------------------------------------------------------
# constraint evaluation


class _Problem:
    """Constraint ``c(x)`` (B, m) and its Jacobian for one mode; everything returned in float64."""

    def __init__(self, model: nn.Module, targets: torch.Tensor, radius: torch.Tensor | None,
                 mode: str, max_rows: int, generator: torch.Generator | None):
        self.model, self.t, self.r, self.mode = model, targets, radius, mode
        self.max_rows = max_rows
        self.generator = generator
        self.m = targets.shape[1] if mode == "point" else 1

    def value(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        feats = features_of(self.model, x).double()
        diff = feats - self.t[idx]
        if self.mode == "point":
            return diff
        return (diff.norm(dim=1) - self.r[idx]).unsqueeze(1)

    def value_and_jac(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "point":
            J = feature_jacobian(self.model, x, self.max_rows).double()
            c = features_of(self.model, x).double() - self.t[idx]
            return c, J
        feats = features_of(self.model, x).double()
        diff = feats - self.t[idx]
        nrm = diff.norm(dim=1, keepdim=True)
        u = diff / nrm.clamp_min(1e-30)
        # at N(x) = t the sphere's gradient is undefined: use a random unit direction
        tiny = (nrm.squeeze(1) <= 1e-9 * (1.0 + self.t[idx].norm(dim=1)))
        if tiny.any():
            g = torch.randn(int(tiny.sum()), diff.shape[1], generator=self.generator,
                            dtype=torch.float64, device="cpu").to(diff.device)
            u[tiny] = g / g.norm(dim=1, keepdim=True)
        _, row = vjp_rows(self.model, x, u)
        c = (nrm.squeeze(1) - self.r[idx]).unsqueeze(1)
        return c, row.double().unsqueeze(1)


def _residual_report(model, x, targets, radius, mode, abs_floor):
    feats = features_of(model, x)
    err = (feats.double() - targets).norm(dim=1)
    if mode == "point":
        res = err / targets.norm(dim=1).clamp_min(abs_floor)
    elif mode == "ball":
        res = (err - radius).clamp_min(0.0) / radius
    else:
        res = (err - radius).abs() / radius
    return feats, err, res


def _in_domain(model, targets) -> torch.Tensor:
    dom = getattr(model, "feature_domain", None)
    ok = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    if dom is None:
        return ok
    if dom.lower is not None:
        ok &= (targets >= dom.lower - 1e-6).all(dim=1)
    if dom.upper is not None:
        ok &= (targets <= dom.upper + 1e-6).all(dim=1)
    return ok


# ----------------------------------------------------------------------------------------------
# SQP


def _sqp(problem: _Problem, x0: torch.Tensor, xr: torch.Tensor, abs_tol: torch.Tensor,
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
                dn, _, _, _, _, _ = _linearised_step(xa[sel], xa[sel], c[sel], J[sel], mu_a[todo])
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
            dn, dt, lam, free, A, Jf = _linearised_step(xb, xrb, cb, J[ib], mu[active[ib]])
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
                    corr = _chord(A[todo[bad]], Jf[todo[bad]], ct[bad]) * free[todo[bad]]
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


# ----------------------------------------------------------------------------------------------
# augmented Lagrangian + projected Adam


def _al(problem: _Problem, x0, xr, abs_tol, max_iter: int, inner_steps: int, lr: float,
        mu0: float, polish: int, mu_rel: float):
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
        dn, _, _, _, _, _ = _linearised_step(flat, flat, c, J, mu)
        trial = (flat + dn).clamp(0, 1).to(x.dtype).reshape(xb.shape)
        ct = problem.value(trial, bad)
        ok = ct.norm(dim=1) < c.norm(dim=1)
        x[bad[ok]] = trial[ok]
    return x, iters, torch.full((B,), float("nan"), dtype=torch.float64, device=x0.device)


# ----------------------------------------------------------------------------------------------
# public entry point


def invert_to_features(model: nn.Module, targets: torch.Tensor, references: torch.Tensor,
                       radius: float | torch.Tensor | None = None, mode: str = "point",
                       tol: float = 1e-3, max_iter: int | None = None, method: str = "lm",
                       al_iter: int | None = None,
                       init: torch.Tensor | None = None, abs_floor: float = 1e-6,
                       mu_rel: float = 1e-6, step_tol: float = 1e-4, max_rows: int = 4096,
                       al_inner_steps: int = 40, al_lr: float = 0.01, al_mu0: float = 1.0,
                       al_polish: int = 20, lm_max_jac: int = 80, lm_broyden: bool | str = False, lm_fallback: bool = True,
                       polish: int = 0, pool: torch.Tensor | None = None, pool_features: torch.Tensor | None = None,
                       pool_k: int = 3, pool_polish: int = 10, seed: int = 0) -> InversionResult:
    """Images in [0, 1] closest to ``references`` that map to ``targets`` (or to a ball/sphere).

    Args:
        model: classifier with ``forward_features``; put in eval mode (restored afterwards),
            its parameters get no gradient. Runs on the model's device and dtype.
        targets: (B, f) target features ``t``.
        references: (B, C, H, W) reference images ``x_r`` in [0, 1] (or (C, H, W), broadcast).
        radius: scalar or (B,) radius, required for ``mode="ball"|"sphere"``, must be > 0.
        mode: "point" (``N(x) = t``), "ball" (``||N(x) - t|| <= r``), "sphere" (``= r``).
        tol: relative tolerance of the reported ``feature_residual`` (see InversionResult).
        max_iter: outer iterations (default 80 trial points for "lm", 60 for SQP, 30 for AL).
        method: "lm" (default: continuation Levenberg-Marquardt along the feature segment,
            fsl.inversion.continuation), "al+sqp" (the previous default), "sqp" or "al".
        init: optional (B, C, H, W) starting images (default: the references).
        abs_floor: floor of ``||t||`` in the relative point residual (targets near 0).
        mu_rel: relative Levenberg-Marquardt regularisation of ``J J^T`` (float64 solve).
        step_tol: SQP stop when feasible and ``||d|| <= step_tol (1 + ||x - x_r||)``.
        max_rows: memory bound of the Jacobian (``sample x output`` rows per backward chunk).
        lm_max_jac, lm_broyden: exact Jacobians per sample, and how J is kept between them
            (method "lm"; False: exact after every accepted step, True: Broyden updates, "chord":
            frozen until a step is rejected; fsl.inversion.continuation.continuation_lm).
        lm_fallback: solve the samples "lm" leaves outside ``tol`` again with "al+sqp" from the
            reference and keep the better (``extra["fallback"]``).
        polish: SQP iterations after "lm" that decrease ``||x - x_r||`` on the constraint.
        pool, pool_features, pool_k, pool_polish: optional (N, C, H, W) images (e.g. training
            images) and their features (computed when None): a point target that "lm" misses from
            the reference is tracked again from the ``pool_k`` pool images with the nearest
            features, followed by ``pool_polish`` SQP iterations towards the reference; the closest
            hit is kept (``extra["pool"]``). Before the al+sqp fallback.

    Returns:
        :class:`InversionResult`; an empty batch (``B = 0``) gives empty tensors of the same shapes.

    Raises:
        ValueError: non-finite targets, references or init; references or init outside [0, 1]
            or of the wrong shape; targets whose width is not the model's feature dimension; a
            radius that is not finite and > 0 or not one value per target.
        TypeError: integer (or bool) references or init.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    targets = check_values("invert_to_features targets", targets, 2, what="(B, f)")
    check_images("invert_to_features references", references, ndim=(3, 4))
    if init is not None:
        check_images("invert_to_features init", init, ndim=4)
    with frozen_eval(model):
        device = targets.device
        p0 = next(iter(model.parameters()), None)
        mdtype = p0.dtype if p0 is not None else torch.float32
        mdev = p0.device if p0 is not None else device
        t = targets.detach().to(mdev).double()
        B = t.shape[0]
        refs = references.detach().to(mdev, mdtype)
        if refs.dim() == 3:
            refs = refs.unsqueeze(0).expand(B, *refs.shape).contiguous()
        if refs.shape[0] != B:
            raise ValueError(f"invert_to_features references: batch {refs.shape[0]} != targets batch {B} (pass "
                             f"one reference per target, or one (C, H, W) image for all)")
        if init is not None and tuple(init.shape) != tuple(refs.shape):
            raise ValueError(f"invert_to_features init: shape {tuple(init.shape)} != references {tuple(refs.shape)}")
        if B:
            f_model = features_of(model, refs[:1]).shape[1]
            if t.shape[1] != f_model:
                raise ValueError(f"invert_to_features targets: {t.shape[1]} features per target, but the model's "
                                 f"forward_features gives {f_model}")
        if mode == "point":
            r = None
            abs_tol = tol * t.norm(dim=1).clamp_min(abs_floor)
        else:
            if radius is None:
                raise ValueError(f"mode={mode!r} needs a radius")
            r = torch.as_tensor(radius, dtype=torch.float64, device=mdev).reshape(-1)
            if r.numel() not in (1, B):
                raise ValueError(f"invert_to_features radius: expected a scalar or one radius per target ({B}), got "
                                 f"{r.numel()} values")
            r = r.expand(B).clone()
            if (r <= 0).any() or not torch.isfinite(r).all():
                raise ValueError(f"invert_to_features radius: radius must be finite and > 0, got {r.tolist()[:5]} "
                                 f"(use mode='point' for r = 0)")
            abs_tol = tol * r
        x0 = refs.clone() if init is None else init.detach().to(mdev, mdtype).clone()
        gen = torch.Generator().manual_seed(seed)
        problem = _Problem(model, t, r, "point" if mode == "point" else "sphere", max_rows, gen)

        solve_idx = torch.arange(B, device=mdev)
        extra: dict = {}
        x = x0.clone()
        iters = torch.zeros(B, dtype=torch.long, device=mdev)
        stat = torch.full((B,), float("nan"), dtype=torch.float64, device=mdev)
        if mode == "ball":
            # a reference already inside the ball is its own (distance-0) solution
            inside = (features_of(model, refs).double() - t).norm(dim=1) <= r
            x[inside] = refs[inside]
            stat[inside] = 0.0
            solve_idx = (~inside).nonzero().squeeze(1)
        if solve_idx.numel():
            sub = _SubProblem(problem, solve_idx)
            xs, xr_s, tol_s = x[solve_idx], refs[solve_idx], abs_tol[solve_idx]
            it_s = torch.zeros(solve_idx.numel(), dtype=torch.long, device=mdev)
            st_s = torch.full((solve_idx.numel(),), float("nan"), dtype=torch.float64, device=mdev)
            if method == "lm":
                xs, it_s, info = _lm(sub, model, xs, tol_s, mode, max_iter or 80, lm_max_jac, lm_broyden, gen)
                extra = {"progress": info.progress, "jacobians": info.jacobians, "stalled": info.stalled,
                         "solve_idx": solve_idx}
                if polish:
                    xs, it2, st_s = _sqp(sub, xs, xr_s, tol_s, polish, mu_rel, step_tol)
                    it_s = it_s + it2
                extra["fallback"] = torch.zeros(solve_idx.numel(), dtype=torch.bool, device=mdev)
                extra["pool"] = torch.zeros(solve_idx.numel(), dtype=torch.bool, device=mdev)
                if pool is not None and mode == "point":
                    xs, it_s, used = _pool_restarts(sub, model, xs, xr_s, tol_s, it_s, pool, pool_features,
                                                    pool_k, pool_polish, max_iter or 80, lm_max_jac, lm_broyden,
                                                    gen, mu_rel, step_tol)
                    extra["pool"] = used
                if lm_fallback:
                    # samples the path did not bring within tol: the al+sqp solver from the reference
                    miss = (sub.value(xs, torch.arange(solve_idx.numel(), device=mdev)).norm(dim=1) > tol_s
                            if mode == "point" else
                            (sub.value(xs, torch.arange(solve_idx.numel(), device=mdev)).abs().squeeze(1) > tol_s))
                    mi = miss.nonzero().squeeze(1)
                    if mi.numel():
                        fsub = _SubProblem(sub, mi)
                        xf, itf, _ = _al(fsub, xr_s[mi].clone(), xr_s[mi], tol_s[mi], al_iter or 15, al_inner_steps,
                                         al_lr, al_mu0, 0, mu_rel)
                        xf, itf2, stf = _sqp(fsub, xf, xr_s[mi], tol_s[mi], 60, mu_rel, step_tol)
                        cf = fsub.value(xf, torch.arange(mi.numel(), device=mdev)).norm(dim=1)
                        cl = sub.value(xs[mi], mi).norm(dim=1)
                        better = cf < cl
                        xs[mi[better]] = xf[better]
                        it_s[mi] = it_s[mi] + itf + itf2
                        extra["fallback"][mi[better]] = True
            if method in ("al", "al+sqp"):
                n_al = al_iter if al_iter is not None else (max_iter or 30 if method == "al" else 15)
                xs, it_s, st_s = _al(sub, xs, xr_s, tol_s, n_al, al_inner_steps, al_lr, al_mu0,
                                     al_polish if method == "al" else 0, mu_rel)
            if method in ("sqp", "al+sqp"):
                xs, it2, st_s = _sqp(sub, xs, xr_s, tol_s, max_iter or 60, mu_rel, step_tol)
                it_s = it_s + it2
            x[solve_idx], iters[solve_idx], stat[solve_idx] = xs, it_s, st_s
        feats, err, res = _residual_report(model, x, t, r, mode, abs_floor)
        dist = (x.double() - refs.double()).flatten(1).norm(dim=1)
        success = torch.isfinite(res) & (res <= tol)
        out = InversionResult(
            images=x.to(device), features=feats.to(device), feature_residual=res.to(device),
            feature_error=err.to(device), distance=dist.to(device), success=success.to(device),
            iterations=iters.to(device), stationarity=stat.to(device),
            target_in_domain=_in_domain(model, t).to(device), mode=mode, tol=tol, method=method,
            extra=_expand_extra(extra, B, device))
    return out


def _expand_extra(extra: dict, B: int, device) -> dict:
    """Per-sample solver diagnostics of the solved subset, spread over the whole batch (samples not
    solved, e.g. a reference already inside the ball: progress 1, 0 Jacobians, not stalled)."""
    if not extra:
        return {}
    idx = extra.pop("solve_idx")
    out = {"progress": torch.ones(B, dtype=torch.float64), "jacobians": torch.zeros(B, dtype=torch.long),
           "stalled": torch.zeros(B, dtype=torch.bool), "fallback": torch.zeros(B, dtype=torch.bool),
           "pool": torch.zeros(B, dtype=torch.bool)}
    for k, v in extra.items():
        out[k] = out[k].to(v.device)
        out[k][idx] = v
        out[k] = out[k].to(device)
    return out


def _lm(sub: "_Problem", model, xs, tol_s, mode, max_iter, max_jac, broyden, gen):
    """The continuation Levenberg-Marquardt solver (fsl.inversion.continuation) on a point problem;
    a sphere ``||N(x) - t|| = r`` is solved as the point of the sphere on the segment from ``N(x0)``
    to ``t`` (``t + r u``, ``u`` the unit direction from ``t`` to ``N(x0)``, random when they coincide),
    whose hit puts ``N(x)`` on the sphere within the same tolerance."""
    from fsl.inversion.continuation import continuation_lm

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
    point = _Problem(model, sub.t + sub.r.unsqueeze(1) * u / nrm, None, "point", sub.max_rows, gen)
    return continuation_lm(point, xs, tol_s, max_iter=max_iter, max_jac=max_jac, broyden=broyden, floor=floor)


def _pool_restarts(sub, model, xs, xr_s, tol_s, it_s, pool, pool_features, k, n_polish, max_iter, max_jac,
                   broyden, gen, mu_rel, step_tol):
    """Samples still missing their target start the continuation again from the ``k`` pool images
    whose features are nearest to the target (short feature segments); the closest hit to the
    reference (after ``n_polish`` SQP iterations) replaces the miss. Returns (xs, it_s, used)."""
    dev = xs.device
    used = torch.zeros(xs.shape[0], dtype=torch.bool, device=dev)
    ar = torch.arange(xs.shape[0], device=dev)
    c0 = sub.value(xs, ar).norm(dim=1)
    mi = (c0 > tol_s).nonzero().squeeze(1)
    if mi.numel() == 0 or pool.shape[0] == 0:
        return xs, it_s, used
    pool = pool.to(dev, xs.dtype)
    if pool_features is None:
        pool_features = torch.cat([features_of(model, pool[s:s + 512]) for s in range(0, pool.shape[0], 512)])
    pf = pool_features.to(dev).double()
    kk = min(int(k), pool.shape[0])
    near = torch.cdist(sub.t[mi], pf).topk(kk, dim=1, largest=False).indices  # (m, kk)
    rep = mi.repeat_interleave(kk)
    psub = _SubProblem(sub, rep)
    xp, itp, _ = _lm(psub, model, pool[near.flatten()].clone(), tol_s[rep], "point", max_iter, max_jac, broyden, gen)
    if n_polish:
        xp, itp2, _ = _sqp(psub, xp, xr_s[rep], tol_s[rep], n_polish, mu_rel, step_tol)
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


class _SubProblem(_Problem):
    """A :class:`_Problem` restricted to a subset of the batch (indices are re-based)."""

    def __init__(self, parent: _Problem, idx: torch.Tensor):
        self.model, self.mode, self.m = parent.model, parent.mode, parent.m
        self.max_rows, self.generator = parent.max_rows, parent.generator
        self.t = parent.t[idx]
        self.r = None if parent.r is None else parent.r[idx]


def relative_point_residual(features: torch.Tensor, targets: torch.Tensor,
                            abs_floor: float = 1e-6) -> torch.Tensor:
    """(B,) float64 ``||features - targets|| / max(||targets||, abs_floor)`` of two finite (B, f)
    tensors (ValueError for NaN/inf or different shapes; ``B = 0`` gives an empty result)."""
    f = check_values("relative_point_residual features", features, 2, what="(B, f)").double()
    t = check_values("relative_point_residual targets", targets, 2, what="(B, f)").double()
    if f.shape != t.shape:
        raise ValueError(f"relative_point_residual: features {tuple(f.shape)} and targets {tuple(t.shape)} differ")
    return (f - t).norm(dim=1) / t.norm(dim=1).clamp_min(abs_floor)


__all__ = ["InversionResult", "invert_to_features", "relative_point_residual", "MODES"]
