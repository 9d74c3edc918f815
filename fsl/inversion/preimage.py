r"""Jacobian null-space preimages of latent vectors (docs/inversion.md).

Near ``x0`` with ``z0 = N(x0)``, ``N(x0 + D) = z0 + J D + O(||D||^2)`` with ``J = dN/dx`` (f x p).
Directions ``D`` in the null space of ``J`` leave the output unchanged to first order, so the
output moves by ``O(step^2)`` along them (``O(step)`` along generic directions). Following the
level set ``N(x) = z0`` beyond first order needs a correction after each step: here a
Gauss-Newton projection ``x <- x - J(x)^+ (N(x) - z0)`` (minimum-norm, so it moves as little as
possible off the step). The neighbourhood ``||N(x) - z0|| <= eps`` is explored the same way, with
steps in arbitrary directions, projected back onto the sphere of radius eps when they leave it.

Everything is batched over the starting images (B, C, H, W) and follows their device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fsl.geometry._common import spd_solve
from fsl.checks import check_count, check_images, check_values
from fsl.inversion.jacobian import feature_jacobian, features_of, frozen_eval


@dataclass
class NullSpace:
    """SVD of the feature Jacobian at each ``x0``.

    Attributes:
        jacobian: (B, f, p) ``dN/dx`` (model dtype).
        singular_values: (B, min(f, p)) float64, descending.
        rank: (B,) numerical rank, ``sigma_i > tol_b``.
        tol: (B,) ``sigma_1 * max(f, p) * eps(model dtype)`` unless an rtol was given.
        basis: (B, p, p - min rank) orthonormal null-space basis (float64) if requested
            (``V[:, r:]`` of the full SVD, ``r`` = the batch's minimum rank), else None. Per sample
            the LAST ``p - rank_b`` columns are the null space; the first ``rank_b - r`` are
            singular vectors above the cut. With equal ranks (the usual case) all columns are.
    """

    jacobian: torch.Tensor
    singular_values: torch.Tensor
    rank: torch.Tensor
    tol: torch.Tensor
    basis: torch.Tensor | None


def jacobian_null_space(model: nn.Module, x0: torch.Tensor, rtol: float | None = None,
                        with_basis: bool = True, max_rows: int = 4096) -> NullSpace:
    """Null space of ``dN/dx`` at every ``x0`` (B, C, H, W) via ``torch.func`` (vmap + jacrev).

    ``x0`` must be finite floating-point images (any values: the Jacobian of the network map on
    ``R^p``) and at least one (ValueError / TypeError otherwise)."""
    check_images("jacobian_null_space x0", x0, ndim=4, unit_box=False)
    check_count("jacobian_null_space x0", x0.shape[0])
    with frozen_eval(model):
        J = feature_jacobian(model, x0, max_rows)
    J64 = J.double()
    f, p = J.shape[1], J.shape[2]
    if with_basis:
        _, S, Vh = torch.linalg.svd(J64, full_matrices=True)
    else:
        S = torch.linalg.svdvals(J64)
        Vh = None
    eps = torch.finfo(J.dtype).eps
    tol = S[:, 0] * (rtol if rtol is not None else max(f, p) * eps)
    rank = (S > tol.unsqueeze(1)).sum(dim=1)
    basis = None
    if with_basis:
        r = int(rank.min())
        basis = Vh[:, r:, :].transpose(1, 2).contiguous()
    return NullSpace(J, S, rank, tol, basis)


def _check_jacobian(name: str, jacobian) -> torch.Tensor:
    """``jacobian`` as a finite (B, f, p) float64 tensor (ValueError otherwise)."""
    return check_values(name, jacobian, 3, what="(B, f, p)", unit="sample").double()


def null_space_directions(jacobian: torch.Tensor, k: int, generator: torch.Generator | None = None,
                          rcond: float = 1e-10) -> torch.Tensor:
    """``k`` random unit directions in the null space of each Jacobian, without a full SVD.

    A Gaussian ``g`` is projected with ``(I - J^+ J) g = g - J^T (J J^T)^+ J g`` (float64; the
    pseudo-inverse of the small f x f Gram matrix is cut at ``rcond * ||J J^T||``).

    Args:
        jacobian: (B, f, p), finite (ValueError otherwise); k >= 0.

    Returns:
        (B, k, p) float64 unit vectors with ``J d ~ 0`` (``B = 0`` or ``k = 0``: empty).
    """
    J = _check_jacobian("null_space_directions jacobian", jacobian)
    if int(k) < 0:
        raise ValueError(f"null_space_directions: k must be >= 0, got {k}")
    B, f, p = J.shape
    g = torch.randn(B, k, p, generator=generator, dtype=torch.float64).to(J.device)
    G = torch.linalg.pinv(J @ J.transpose(1, 2), rtol=rcond, hermitian=True)  # (B, f, f)
    proj = g - ((J.transpose(1, 2) @ (G @ (J @ g.transpose(1, 2)))).transpose(1, 2))
    # one refinement pass removes the rounding left by the first projection
    proj = proj - ((J.transpose(1, 2) @ (G @ (J @ proj.transpose(1, 2)))).transpose(1, 2))
    return proj / proj.norm(dim=2, keepdim=True).clamp_min(1e-300)


@dataclass
class StepResponse:
    """Output change along directions at several step sizes.

    Attributes:
        steps: (S,) step sizes h (pixel L2 units, directions have unit norm).
        actual: (B, k, S) float64 ``||N(x0 + h d) - z0||``.
        first_order: (B, k, S) float64 ``||J (h d)||`` (about 0 for null directions).
        random_actual: (B, k, S) the same for random unit directions (reference, O(h)).
        slope: (B,) float64 least-squares slope of ``log actual`` vs ``log h`` (median over
            directions): about 2 for null directions, 1 for generic ones.
        random_slope: (B,) same for random directions.
    """

    steps: torch.Tensor
    actual: torch.Tensor
    first_order: torch.Tensor
    random_actual: torch.Tensor
    slope: torch.Tensor
    random_slope: torch.Tensor


def _loglog_slope(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    lx = h.double().log()
    ly = y.clamp_min(1e-300).log()
    lx = lx - lx.mean()
    ly = ly - ly.mean(dim=-1, keepdim=True)
    return (ly * lx).sum(-1) / (lx * lx).sum()


def null_step_response(model: nn.Module, x0: torch.Tensor, steps=(1e-2, 3e-2, 1e-1, 3e-1, 1.0),
                       k: int = 8, generator: torch.Generator | None = None,
                       jacobian: torch.Tensor | None = None) -> StepResponse:
    """Measure ``||N(x0 + h d) - z0||`` for ``k`` random null-space directions per sample.

    No clipping to [0, 1]: the linearisation is about the network map on all of ``R^p``
    (for display, clip the images yourself). ``x0``: at least one finite image; ``steps``: at
    least two distinct finite step sizes > 0 (the slope is a log-log fit); ``k >= 1``
    (ValueError / TypeError otherwise).
    """
    check_images("null_step_response x0", x0, ndim=4, unit_box=False)
    check_count("null_step_response x0", x0.shape[0])
    steps_t = check_values("null_step_response steps", torch.as_tensor(steps, dtype=torch.float64).reshape(-1), 1,
                           what="(S,)", unit="value")
    if bool((steps_t <= 0).any()) or torch.unique(steps_t).numel() < 2:
        raise ValueError(f"null_step_response steps: need at least two distinct step sizes > 0 for the log-log "
                         f"slope, got {steps_t.tolist()}")
    if int(k) < 1:
        raise ValueError(f"null_step_response: k must be >= 1, got {k}")
    if jacobian is not None:
        jacobian = _check_jacobian("null_step_response jacobian", jacobian).to(x0.device)
        if jacobian.shape[0] != x0.shape[0] or jacobian.shape[2] != x0[0].numel():
            raise ValueError(f"null_step_response jacobian: shape {tuple(jacobian.shape)} does not fit x0 "
                             f"{tuple(x0.shape)} (expected ({x0.shape[0]}, f, {x0[0].numel()}))")
    with frozen_eval(model):
        J = jacobian if jacobian is not None else feature_jacobian(model, x0)
        z0 = features_of(model, x0).double()
        D = null_space_directions(J, k, generator)  # (B, k, p)
        R = torch.randn(D.shape, generator=generator, dtype=torch.float64).to(D.device)
        R = R / R.norm(dim=2, keepdim=True)
        B = x0.shape[0]
        shape = x0.shape[1:]

        def response(dirs):
            out = torch.empty(B, k, len(steps_t), dtype=torch.float64, device=x0.device)
            for si, h in enumerate(steps_t.tolist()):
                xs = x0.unsqueeze(1) + (h * dirs).to(x0.dtype).reshape(B, k, *shape)
                z = features_of(model, xs.reshape(B * k, *shape)).double().reshape(B, k, -1)
                out[:, :, si] = (z - z0.unsqueeze(1)).norm(dim=2)
            return out

        actual = response(D)
        rand_actual = response(R)
        first = (J.double().unsqueeze(1) @ D.unsqueeze(3)).squeeze(3).norm(dim=2)  # (B, k)
        first = first.unsqueeze(2) * steps_t.to(first.device)
    slope = _loglog_slope(steps_t.to(actual.device), actual).median(dim=1).values
    rslope = _loglog_slope(steps_t.to(actual.device), rand_actual).median(dim=1).values
    return StepResponse(steps_t, actual, first, rand_actual, slope, rslope)


def _gauss_newton_to(model, x, target, tol_abs, max_iter=20, box=True, mu_rel=1e-10):
    """Project ``x`` (B, C, H, W) onto ``N(x) = target`` by min-norm Gauss-Newton steps.

    Pixels at a bound are frozen when the step points outward (``box=True``). Returns the new
    images and the residuals ``||N(x) - target||`` (B,) float64.
    """
    B = x.shape[0]
    x = x.clone()
    res = (features_of(model, x).double() - target).norm(dim=1)
    for _ in range(max_iter):
        bad = (res > tol_abs).nonzero().squeeze(1)
        if bad.numel() == 0:
            break
        xb = x[bad]
        J = feature_jacobian(model, xb).double()
        c = features_of(model, xb).double() - target[bad]
        flat = xb.reshape(bad.numel(), -1).double()
        free = torch.ones_like(flat, dtype=torch.bool)
        if box:
            at_lo, at_hi = flat <= 1e-6, flat >= 1 - 1e-6
        for _ in range(3):
            Jf = J * free.unsqueeze(1)
            A = Jf @ Jf.transpose(1, 2)
            sc = A.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)
            A = A + (mu_rel * sc).view(-1, 1, 1) * torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
            d = -(Jf.transpose(1, 2) @ spd_solve(A, c.unsqueeze(2))).squeeze(2) * free
            if not box:
                break
            newly = free & ((at_lo & (d < 0)) | (at_hi & (d > 0)))
            if not newly.any():
                break
            free &= ~newly
        # backtracking on the residual
        step = torch.ones(bad.numel(), dtype=torch.float64, device=x.device)
        best = res[bad].clone()
        newx = xb.clone()
        for _ in range(6):
            trial = flat + step.unsqueeze(1) * d
            if box:
                trial = trial.clamp(0.0, 1.0)
            trial = trial.to(x.dtype).reshape(xb.shape)
            r_t = (features_of(model, trial).double() - target[bad]).norm(dim=1)
            ok = r_t < best
            newx[ok] = trial[ok]
            best = torch.where(ok, r_t, best)
            step = torch.where(ok, torch.zeros_like(step), step * 0.5)
            if (step == 0).all():
                break
        if bool((best >= res[bad]).all()):
            x[bad] = newx
            break
        x[bad] = newx
        res[bad] = best
    res = (features_of(model, x).double() - target).norm(dim=1)
    return x, res


@dataclass
class LevelSetWalk:
    """A walk in pixel space that stays on (or inside) a preimage.

    Attributes:
        images: (T + 1, B, C, H, W) the walk, ``images[0] = x0``.
        residual: (T + 1, B) float64 ``||N(x_t) - z0||`` after each projection.
        first_order_residual: (T, B) float64 ``||N(x_t + step) - z0||`` BEFORE the projection
            (what the null-space step alone gives).
        distance: (T + 1, B) float64 ``||x_t - x0||``.
        on_set: (T + 1, B) bool, residual within the tolerance (eps * (1 + tol) for a ball).
        tol_abs: (B,) absolute tolerance used.
    """

    images: torch.Tensor
    residual: torch.Tensor
    first_order_residual: torch.Tensor
    distance: torch.Tensor
    on_set: torch.Tensor
    tol_abs: torch.Tensor


def level_set_walk(model: nn.Module, x0: torch.Tensor, n_steps: int = 10, step: float = 0.5,
                   eps: float = 0.0, tol: float = 1e-4, box: bool = True,
                   generator: torch.Generator | None = None, persistence: float = 0.8,
                   max_newton: int = 20) -> LevelSetWalk:
    """Walk along the preimage ``{x : N(x) = z0}`` (``eps = 0``) or ``{||N(x) - z0|| <= eps}``.

    Each step moves ``step`` (pixel L2) along a random direction -- in the null space of the
    current Jacobian for the level set (smoothed by ``persistence`` with the previous direction,
    re-projected), or an arbitrary random direction for the ball -- then projects back with
    Gauss-Newton: onto ``N(x) = z0`` for the level set, onto the sphere point
    ``z0 + eps (N(x) - z0)/||N(x) - z0||`` when a ball step left the ball.

    Args:
        x0: (B, C, H, W) start images (in [0, 1] when ``box``).
        tol: relative tolerance, absolute ``tol * max(||z0||, 1e-6)``.
        box: keep the walk in [0, 1] (clip steps, freeze pixels at a bound in the projection).

    ``x0`` must hold at least one finite image (in [0, 1] when ``box``); ``eps``, ``step`` finite
    and >= 0, ``tol`` > 0 (ValueError / TypeError otherwise).
    """
    check_images("level_set_walk x0", x0, ndim=4, unit_box=box)
    check_count("level_set_walk x0", x0.shape[0])
    for nm, v in (("eps", eps), ("step", step)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"level_set_walk: {nm} must be finite and >= 0, got {v}")
    if not (math.isfinite(float(tol)) and float(tol) > 0):
        raise ValueError(f"level_set_walk: tol must be finite and > 0, got {tol}")
    with frozen_eval(model):
        B = x0.shape[0]
        z0 = features_of(model, x0).double()
        tol_abs = tol * z0.norm(dim=1).clamp_min(1e-6)
        x = x0.clone()
        imgs = [x0.clone()]
        res = [torch.zeros(B, dtype=torch.float64, device=x0.device)]
        res[0] = (features_of(model, x0).double() - z0).norm(dim=1)
        pre = []
        prev_dir = None
        for _ in range(n_steps):
            if eps == 0.0:
                J = feature_jacobian(model, x)
                g = null_space_directions(J, 1, generator)[:, 0]
                if prev_dir is not None:
                    mix = persistence * prev_dir + (1 - persistence) * g
                    mix = null_space_directions_from(J, mix)
                    g = mix
                d = g
            else:
                d = torch.randn(x.flatten(1).shape, generator=generator, dtype=torch.float64).to(x.device)
                d = d / d.norm(dim=1, keepdim=True)
                if prev_dir is not None:
                    d = persistence * prev_dir + (1 - persistence) * d
                    d = d / d.norm(dim=1, keepdim=True)
            prev_dir = d
            xn = x + (step * d).to(x.dtype).reshape(x.shape)
            if box:
                xn = xn.clamp(0.0, 1.0)
            zn = features_of(model, xn).double()
            r_pre = (zn - z0).norm(dim=1)
            pre.append(r_pre)
            if eps == 0.0:
                xn, r = _gauss_newton_to(model, xn, z0, tol_abs, max_newton, box)
            else:
                out = r_pre > eps
                r = r_pre.clone()
                if out.any():
                    oi = out.nonzero().squeeze(1)
                    tgt = z0[oi] + eps * (zn[oi] - z0[oi]) / r_pre[oi].unsqueeze(1)
                    xo, _ = _gauss_newton_to(model, xn[oi], tgt, tol_abs[oi], max_newton, box)
                    xn[oi] = xo
                    r[oi] = (features_of(model, xo).double() - z0[oi]).norm(dim=1)
            x = xn
            imgs.append(x.clone())
            res.append(r)
        images = torch.stack(imgs)
        residual = torch.stack(res)
        dist = (images.double() - x0.double().unsqueeze(0)).flatten(2).norm(dim=2)
        bound = tol_abs if eps == 0.0 else eps + tol_abs
        on_set = residual <= bound.unsqueeze(0)
        pre_t = torch.stack(pre) if pre else torch.empty(0, B, dtype=torch.float64)
    return LevelSetWalk(images, residual, pre_t, dist, on_set, tol_abs)


def null_space_directions_from(jacobian: torch.Tensor, vectors: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """Project given vectors (B, p) onto the null space of ``jacobian`` (B, f, p); unit norm, float64.

    Both must be finite with matching ``B`` and ``p`` (ValueError otherwise)."""
    J = _check_jacobian("null_space_directions_from jacobian", jacobian)
    v = check_values("null_space_directions_from vectors", vectors, 2, what="(B, p)").double()
    if v.shape != (J.shape[0], J.shape[2]):
        raise ValueError(f"null_space_directions_from: vectors {tuple(v.shape)} do not fit the jacobian "
                         f"{tuple(J.shape)} (expected ({J.shape[0]}, {J.shape[2]}))")
    v = v.to(J.device).unsqueeze(2)
    G = torch.linalg.pinv(J @ J.transpose(1, 2), rtol=rcond, hermitian=True)
    for _ in range(2):
        v = v - J.transpose(1, 2) @ (G @ (J @ v))
    v = v.squeeze(2)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
