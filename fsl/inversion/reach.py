r"""Why an inversion missed: certified unreachability or a solver miss (docs/inversion.md, "Diagnosis").

* :func:`feature_bounds` -- interval bounds ``L <= N(x) <= U`` over the whole box ``x in [0, 1]^p``
  by interval bound propagation (Gowal et al., arXiv 1810.12715): exact through the first affine
  layer, monotone activations map intervals to intervals, affine maps ``W`` send a box with centre
  ``c`` and radius ``r`` to centre ``W c + b`` and radius ``|W| r``. Implemented for the SELU MLPs
  (``selu_stack``) and the CIFAR ResNets of fsl.models; other models raise TypeError.
* :func:`residual_lower_bound` -- ``min_{x in [0,1]^p} ||N(x) - t|| >= ||max(L - t, 0) + max(t - U, 0)||``
  (each coordinate of ``N(x)`` stays in its interval), so a target whose bound exceeds the absolute
  tolerance is *proven* unreachable: no image in the box can be a hit.
* :func:`diagnose` -- per sample: ``hit``; ``unreachable`` (bound > tolerance); or a solver miss,
  ``stationary`` when the box-constrained Gauss-Newton model at the returned image cannot reduce
  the residual by more than 10% (a local minimum of ``||N(x) - t||`` on the box: a local, not a
  global, obstruction), else ``not_converged`` (the linear model still predicts progress: budget).

* :func:`probe_reachability` -- the *empirical* side: projected Adam (Kingma & Ba, arXiv 1412.6980)
  on ``||N(x) - t||^2`` over the box from several starts (the reference, random and given images),
  the best iterate per target kept and re-measured. A probe image within the tolerance *proves*
  the target reachable (the miss was the solver's); a probe that stays above it is evidence, not
  proof, of a residual floor (first-order steps need no smooth model, so they also move where
  Gauss-Newton steps on a ReLU network are rejected).

The bounds are sound but loose for deep nets (the box is the whole input space); they prove targets
outside the feature domain or beyond what any image can produce unreachable, and say nothing about
targets inside the interval hull, which is where flip points and hull projections of trained
models lie (measured in docs/inversion.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsl.checks import check_images, check_values
from fsl.inversion.jacobian import features_of, frozen_eval

CATEGORIES = ("hit", "unreachable", "stationary", "not_converged")


def _affine_conv(c, r, conv: nn.Conv2d):
    w = conv.weight.double()
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    b = None if conv.bias is None else conv.bias.double()
    return F.conv2d(c, w, b, **kw), F.conv2d(r, w.abs(), None, **kw)


def _affine_bn(c, r, bn: nn.BatchNorm2d):
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return c * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), r * scale.abs().view(1, -1, 1, 1)


def _relu(c, r):
    lo, hi = F.relu(c - r), F.relu(c + r)
    return (lo + hi) / 2, (hi - lo) / 2


def _normalize(c, r, norm):
    std = norm.std.double()
    return (c - norm.mean.double()) / std, r / std.abs()


def _resnet_bounds(model, c, r):
    from fsl.models.resnet import _ShortcutA

    c, r = _normalize(c, r, model.normalize)
    c, r = _affine_conv(c, r, model.conv1)
    c, r = _relu(*_affine_bn(c, r, model.bn1))
    for blk in model.blocks:
        c1, r1 = _relu(*_affine_bn(*_affine_conv(c, r, blk.conv1), blk.bn1))
        c1, r1 = _affine_bn(*_affine_conv(c1, r1, blk.conv2), blk.bn2)
        if isinstance(blk.shortcut, _ShortcutA):
            sc, sr = blk.shortcut(c), blk.shortcut(r)  # subsampling and zero padding: exact on both
        else:
            sc, sr = c, r
        c, r = _relu(c1 + sc, r1 + sr)
    return F.adaptive_avg_pool2d(c, 1).flatten(1), F.adaptive_avg_pool2d(r, 1).flatten(1)


def _selu_bounds(model, c, r):
    c, r = _normalize(c, r, model.normalize)
    c, r = c.flatten(1), r.flatten(1)
    for _, lin, act in model.selu_stack("features"):
        w = lin.weight.double()
        c = c @ w.T + (0 if lin.bias is None else lin.bias.double())
        r = r @ w.abs().T
        if act:
            lo, hi = F.selu(c - r), F.selu(c + r)
            c, r = (lo + hi) / 2, (hi - lo) / 2
    return c, r


def feature_bounds(model: nn.Module, lower: float = 0.0, upper: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, U), each (f,) float64 on the model's device: ``L <= N(x) <= U`` for every image ``x`` in
    ``[lower, upper]^p`` (interval bound propagation in float64, module docstring). TypeError for a
    model whose layers it does not know (SELU MLPs with ``selu_stack`` and CifarResNet are known)."""
    from fsl.models.resnet import CifarResNet

    if not (isinstance(model, CifarResNet) or getattr(model, "invertible_selu", False)):
        raise TypeError(f"feature_bounds: no interval propagation for {type(model).__name__} (known: SELU MLPs "
                        f"with selu_stack, CifarResNet)")
    p0 = next(iter(model.parameters()))
    shape = (1, *model.input_shape)
    c = torch.full(shape, (lower + upper) / 2, dtype=torch.float64, device=p0.device)
    r = torch.full(shape, (upper - lower) / 2, dtype=torch.float64, device=p0.device)
    with torch.no_grad():
        c, r = _resnet_bounds(model, c, r) if isinstance(model, CifarResNet) else _selu_bounds(model, c, r)
    lo, hi = (c - r)[0], (c + r)[0]
    dom = getattr(model, "feature_domain", None)
    if dom is not None and dom.lower is not None:
        lo = lo.clamp_min(float(dom.lower))
    if dom is not None and dom.upper is not None:
        hi = hi.clamp_max(float(dom.upper))
    return lo, hi


def residual_lower_bound(targets: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                         margin: float = 1e-6) -> torch.Tensor:
    """(B,) float64 certified lower bound on ``min_x ||N(x) - t||`` from per-coordinate bounds
    ``lower <= N(x) <= upper`` (f,): the distance from ``t`` to the box ``[lower, upper]``, less a
    rounding margin ``margin * (1 + ||t||)`` (the model runs in float32), floored at 0."""
    t = check_values("residual_lower_bound targets", targets, 2, what="(B, f)").double()
    lo = check_values("residual_lower_bound lower", lower, 1, width=t.shape[1], what="(f,)", unit="value").to(t)
    hi = check_values("residual_lower_bound upper", upper, 1, width=t.shape[1], what="(f,)", unit="value").to(t)
    gap = (lo - t).clamp_min(0.0) + (t - hi).clamp_min(0.0)
    return (gap.norm(dim=1) - margin * (1.0 + t.norm(dim=1))).clamp_min(0.0)


@dataclass
class Diagnosis:
    """Per-sample explanation of an inversion's outcome (tensors on the CPU).

    Attributes:
        category: list of ``"hit" | "unreachable" | "stationary" | "not_converged"``.
        lower_bound: (B,) float64 certified ``min_x ||N(x) - t||`` lower bound (0 when no bound
            exists for the model, see ``bounded``).
        abs_tol: (B,) float64 absolute tolerance the hit test used.
        linear_ratio: (B,) float64 ``||c + J d|| / ||c||`` of the box-constrained Gauss-Newton step at
            the returned image (NaN for hits and proven-unreachable targets).
        bounded: whether :func:`feature_bounds` knows the model.
        probe_residual: (B,) float64 relative residual of the best probe image
            (:func:`probe_reachability`), NaN where no probe was given.
    """

    category: list
    lower_bound: torch.Tensor
    abs_tol: torch.Tensor
    linear_ratio: torch.Tensor
    bounded: bool
    probe_residual: torch.Tensor | None = None

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for c in self.category if c == k) for k in CATEGORIES}

    def miss_split(self, tol: float, factor: float = 10.0) -> dict[str, int]:
        """:func:`split_misses` of this diagnosis and its probe."""
        if self.probe_residual is None:
            raise ValueError("Diagnosis.miss_split: no probe; pass probe=probe_reachability(...) to diagnose")
        return split_misses(self.category, self.probe_residual, tol, factor)


def split_misses(category, probe_residual: torch.Tensor, tol: float, factor: float = 10.0) -> dict[str, int]:
    """Solver misses (``category`` ``stationary`` / ``not_converged``) split by the relative residual
    of a probe of the same targets (:func:`probe_reachability`, (B,)): ``reachable`` (a probe image is
    within ``tol``: proven reachable, a solver miss), ``near`` (probe within ``factor * tol``),
    ``floor`` (the probe also stayed above ``factor * tol``: evidence of a residual floor)."""
    res = probe_residual.detach().double().cpu().reshape(-1)  # NaN allowed where nothing was missed
    if len(category) != res.numel():
        raise ValueError(f"split_misses: {len(category)} categories but {res.numel()} probe residuals; probe the "
                         f"same targets the diagnosis explains")
    res = res.tolist()
    unprobed = [i for i, (c, r) in enumerate(zip(category, res)) if c in ("stationary", "not_converged") and r != r]
    if unprobed:
        raise ValueError(f"split_misses: misses {unprobed[:5]} have no probe residual (NaN); probe every missed target")
    out = {"reachable": 0, "near": 0, "floor": 0}
    for c, r in zip(category, res):
        if c in ("stationary", "not_converged"):
            out["reachable" if r <= tol else "near" if r <= factor * tol else "floor"] += 1
    return out


@dataclass
class Probe:
    """Result of :func:`probe_reachability` (tensors on the model's device).

    Attributes:
        images: (B, C, H, W) best image per target, in [0, 1], model dtype.
        residual: (B,) float64 ``||N(x) - t|| / max(||t||, abs_floor)`` re-measured on ``images``.
        hit: (B,) bool, ``residual <= tol`` (the target is reachable: ``images`` is the proof).
        start: (B,) int64 index of the start the best image came from.
        steps: Adam steps per start.
    """

    images: torch.Tensor
    residual: torch.Tensor
    hit: torch.Tensor
    start: torch.Tensor
    steps: int


def probe_reachability(model: nn.Module, targets: torch.Tensor, starts: torch.Tensor, n_random: int = 0,
                       steps: int = 1500, lr: float = 0.02, tol: float = 1e-3, abs_floor: float = 1e-6,
                       generator: torch.Generator | None = None) -> Probe:
    """Best image found by projected Adam on ``sum_b ||N(x_b) - t_b||^2``, ``x`` clipped to [0, 1]
    after every step, from every start (module docstring). Evidence about reachability, not a bound:
    a hit proves a target reachable, a miss proves nothing.

    Args:
        model: network with ``forward_features``; used in eval mode, its weights untouched.
        targets: (B, f) finite feature targets.
        starts: (B, C, H, W) or (K, B, C, H, W) start images in [0, 1] (e.g. the references, or
            training images); ``n_random`` uniform random starts (``generator``) are added.
        steps: Adam steps per start; the learning rate follows a cosine from ``lr`` to ``lr / 100``.
        tol: relative tolerance of ``hit`` (as in :func:`fsl.inversion.invert_to_features`).

    Returns:
        :class:`Probe`. Cost: ``steps`` forward+backward passes of a batch of ``K * B`` images.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"probe_reachability: steps must be a positive int, got {steps!r}")
    if not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"probe_reachability: n_random must be an int >= 0, got {n_random!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"probe_reachability: lr must be a positive finite number, got {lr!r}")
    t = check_values("probe_reachability targets", targets, 2, what="(B, f)")
    x0 = check_images("probe_reachability starts", starts, ndim=(4, 5))
    if x0.dim() == 4:
        x0 = x0.unsqueeze(0)
    K, B = x0.shape[0], x0.shape[1]
    if B != t.shape[0]:
        raise ValueError(f"probe_reachability: {B} images per start for {t.shape[0]} targets; starts must be "
                         f"(B, C, H, W) or (K, B, C, H, W) with B = len(targets)")
    p0 = next(iter(model.parameters()))
    dev, dt = p0.device, p0.dtype
    x0 = x0.to(dev, dt)
    if n_random:
        g = torch.rand((n_random, *x0.shape[1:]), generator=generator, dtype=torch.float64).to(dev, dt)
        x0 = torch.cat([x0, g])
        K += n_random
    T = t.to(dev).double()
    tn = T.norm(dim=1).clamp_min(abs_floor)
    Tk, tnk = T.repeat(K, 1), tn.repeat(K)  # one row per (start, target)
    Tk_model = Tk.to(dt)
    with frozen_eval(model):
        x = x0.reshape(K * B, *x0.shape[2:]).clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        best = torch.full((K * B,), float("inf"), dtype=torch.float64, device=dev)
        best_x = x.detach().clone()
        for i in range(steps + 1):
            with torch.enable_grad():
                f = model.forward_features(x)
                loss = (f - Tk_model).pow(2).sum()
            with torch.no_grad():
                rel = (f.detach().double() - Tk).norm(dim=1) / tnk
                better = rel < best
                best = torch.where(better, rel, best)
                best_x[better] = x.detach()[better]
            if i == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = lr / 100 + 0.5 * (lr - lr / 100) * (1 + math.cos(math.pi * i / steps))
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        k = best.view(K, B).argmin(0)
        images = best_x.view(K, B, *x0.shape[2:])[k, torch.arange(B, device=dev)]
        res = (features_of(model, images).double() - T).norm(dim=1) / tn
    return Probe(images=images, residual=res, hit=res <= tol, start=k, steps=steps)


def diagnose(model: nn.Module, result, targets: torch.Tensor, abs_floor: float = 1e-6,
             stationary_ratio: float = 0.9, probe: Probe | None = None) -> Diagnosis:
    """Explain every sample of a point-mode :class:`fsl.inversion.InversionResult` (module docstring).

    ``stationary_ratio``: a miss whose box-constrained Gauss-Newton model (tiny damping) keeps more
    than this fraction of the residual is ``stationary``. ``probe``: a :func:`probe_reachability` of
    the same targets; its residuals go to ``Diagnosis.probe_residual`` (``miss_split``)."""
    from fsl.inversion.jacobian import feature_jacobian
    from fsl.inversion.continuation import box_gn_step

    if result.mode != "point":
        raise ValueError(f"diagnose: point-mode results only, got mode={result.mode!r}")
    t = targets.detach().double().cpu()
    B = t.shape[0]
    abs_tol = result.tol * t.norm(dim=1).clamp_min(abs_floor)
    try:
        lo, hi = feature_bounds(model)
        bound, bounded = residual_lower_bound(t, lo.cpu(), hi.cpu()), True
    except TypeError:
        bound, bounded = torch.zeros(B, dtype=torch.float64), False
    hit = result.success.cpu()
    unreachable = ~hit & (bound > abs_tol)
    ratio = torch.full((B,), float("nan"), dtype=torch.float64)
    miss = (~hit & ~unreachable).nonzero().flatten()
    if miss.numel():
        p0 = next(iter(model.parameters()))
        with frozen_eval(model):
            xm = result.images[miss].to(p0.device, p0.dtype)
            c = features_of(model, xm).double() - t[miss].to(p0.device)
            J = feature_jacobian(model, xm).double()
            xf = xm.reshape(miss.numel(), -1).double()
            d = box_gn_step(xf, c, J, torch.full((miss.numel(),), 1e-10, dtype=torch.float64, device=xf.device))
            lin = c + (J @ d.unsqueeze(2)).squeeze(2)
            ratio[miss] = (lin.norm(dim=1) / c.norm(dim=1).clamp_min(1e-300)).cpu()
    cat = []
    for i in range(B):
        if hit[i]:
            cat.append("hit")
        elif unreachable[i]:
            cat.append("unreachable")
        elif ratio[i] > stationary_ratio:
            cat.append("stationary")
        else:
            cat.append("not_converged")
    pres = None
    if probe is not None:
        pres = probe.residual.detach().double().cpu()
        if pres.shape != (B,):
            raise ValueError(f"diagnose: probe has {tuple(pres.shape)} residuals for {B} targets")
    return Diagnosis(cat, bound, abs_tol, ratio, bounded, pres)


__all__ = ["feature_bounds", "residual_lower_bound", "diagnose", "Diagnosis", "CATEGORIES",
           "probe_reachability", "Probe", "split_misses"]
