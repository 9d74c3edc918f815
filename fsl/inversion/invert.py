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

:func:`invert_to_features` checks the input, builds the constraint
(:class:`fsl.inversion.problem.FeatureConstraint`) and dispatches to one batched solver, each with
its options (:mod:`fsl.inversion.options`):

* ``method="lm"`` (default, :class:`LMOptions`): continuation Levenberg-Marquardt along the feature
  segment from ``N(x_r)`` to ``t`` (:mod:`fsl.inversion.lm`, :mod:`fsl.inversion.continuation`),
  misses re-solved by "al+sqp";
* ``method="sqp"`` (:class:`SQPOptions`): two-phase SQP / projected Gauss-Newton on the small
  ``m x m`` system (:mod:`fsl.inversion.sqp`);
* ``method="al"`` (:class:`ALOptions`): augmented Lagrangian with a projected Adam inner solver,
  optionally followed by Gauss-Newton feasibility steps (:mod:`fsl.inversion.al`);
* ``method="al+sqp"`` (:class:`ALSQPOptions`): 15 AL iterations, then the SQP.

A ball is solved as follows: a reference already inside the ball is its own solution (distance 0);
otherwise the closest feasible point lies on the sphere (on the segment from the reference to
any feasible point the constraint changes sign), so the sphere problem is solved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fsl.checks import check_images, check_values
from fsl.inversion.al import solve_al, solve_al_sqp
from fsl.inversion.jacobian import features_of, frozen_eval
from fsl.inversion.lm import solve_lm
from fsl.inversion.options import ALOptions, ALSQPOptions, LMOptions, SQPOptions, options_for
from fsl.inversion.problem import FeatureConstraint
from fsl.inversion.sqp import solve_sqp

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
        extra: ``method="lm"`` only (else empty): per-sample (B,) ``progress`` (segment fraction
            reached), ``jacobians``, ``stalled``, ``fallback`` (the al+sqp answer was kept) and
            ``pool`` (a pool restart's answer was kept).
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



def invert_to_features(model: nn.Module, targets: torch.Tensor, references: torch.Tensor,
                       radius: float | torch.Tensor | None = None, mode: str = "point", tol: float = 1e-3, *,
                       method: str = "lm",
                       options: LMOptions | ALSQPOptions | SQPOptions | ALOptions | dict[str, Any] | None = None,
                       init: torch.Tensor | None = None, abs_floor: float = 1e-6, max_rows: int = 4096,
                       seed: int = 0) -> InversionResult:
    """Images in [0, 1] closest to ``references`` that map to ``targets`` (or to a ball/sphere).

    Args:
        model: classifier with ``forward_features``; put in eval mode (restored afterwards),
            its parameters get no gradient. Runs on the model's device and dtype.
        targets: (B, f) target features ``t``.
        references: (B, C, H, W) reference images ``x_r`` in [0, 1] (or (C, H, W), broadcast).
        radius: scalar or (B,) radius, required for ``mode="ball"|"sphere"``, must be > 0.
        mode: "point" (``N(x) = t``), "ball" (``||N(x) - t|| <= r``), "sphere" (``= r``).
        tol: relative tolerance of the reported ``feature_residual`` (see InversionResult).
        method: "lm" (default: continuation Levenberg-Marquardt along the feature segment,
            fsl.inversion.lm), "al+sqp" (the previous default), "sqp" or "al".
        options: the solver's options (fsl.inversion.options): :class:`LMOptions` for "lm",
            :class:`ALSQPOptions` for "al+sqp", :class:`SQPOptions` for "sqp", :class:`ALOptions`
            for "al", or a dict of its fields (the others keep their defaults); None: the defaults
            (e.g. 80 trial points for "lm", 60 SQP iterations, 30 AL iterations). Iteration budgets,
            the Jacobian updates, the pool restarts and the fallback of "lm" are set here.
        init: optional (B, C, H, W) starting images (default: the references).
        abs_floor: floor of ``||t||`` in the relative point residual (targets near 0).
        max_rows: memory bound of the Jacobian (``sample x output`` rows per backward chunk).
        seed: of the random unit directions used where ``N(x) = t`` on a sphere.

    Returns:
        :class:`InversionResult`; an empty batch (``B = 0``) gives empty tensors of the same shapes.

    Raises:
        ValueError: non-finite targets, references or init; references or init outside [0, 1]
            or of the wrong shape; targets whose width is not the model's feature dimension; a
            radius that is not finite and > 0 or not one value per target.
        TypeError: integer (or bool) references or init.
        fsl.errors.ConfigError: options of another method, or an unknown option (naming the
            closest valid one).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    opts = options_for(method, options)
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
        problem = FeatureConstraint(model, t, r, "point" if mode == "point" else "sphere", max_rows, gen)

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
            sub = problem.subset(solve_idx)
            xs, xr_s, tol_s = x[solve_idx], refs[solve_idx], abs_tol[solve_idx]
            if method == "lm":
                xs, it_s, st_s, extra = solve_lm(sub, model, xs, xr_s, tol_s, mode, opts, gen)
                extra["solve_idx"] = solve_idx
            elif method == "al+sqp":
                xs, it_s, st_s = solve_al_sqp(sub, xs, xr_s, tol_s, opts)
            elif method == "sqp":
                xs, it_s, st_s = solve_sqp(sub, xs, xr_s, tol_s, opts.max_iter, opts.mu_rel, opts.step_tol)
            else:
                xs, it_s, st_s = solve_al(sub, xs, xr_s, tol_s, opts.max_iter, opts.inner_steps, opts.lr, opts.mu0,
                                          opts.polish, opts.mu_rel)
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


def relative_point_residual(features: torch.Tensor, targets: torch.Tensor,
                            abs_floor: float = 1e-6) -> torch.Tensor:
    """(B,) float64 ``||features - targets|| / max(||targets||, abs_floor)`` of two finite (B, f)
    tensors (ValueError for NaN/inf or different shapes; ``B = 0`` gives an empty result)."""
    f = check_values("relative_point_residual features", features, 2, what="(B, f)").double()
    t = check_values("relative_point_residual targets", targets, 2, what="(B, f)").double()
    if f.shape != t.shape:
        raise ValueError(f"relative_point_residual: features {tuple(f.shape)} and targets {tuple(t.shape)} differ")
    return (f - t).norm(dim=1) / t.norm(dim=1).clamp_min(abs_floor)


__all__ = ["InversionResult", "invert_to_features", "relative_point_residual", "MODES", "METHODS"]
