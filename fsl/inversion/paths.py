"""Reference images, morphing through feature space, pixel-line paths and the two-point projection.

Yousefzadeh (arXiv 2202.04052), section 7.1 (Figures 7-9) and appendix A.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fsl.checks import check_images, check_values
from fsl.inversion.invert import InversionResult, invert_to_features
from fsl.inversion.jacobian import features_of, frozen_eval

REFERENCE_KINDS = ("black", "white", "sample", "other")


def black_reference(like: torch.Tensor) -> torch.Tensor:
    """All-zero images shaped like ``like`` ((B, C, H, W) or (C, H, W))."""
    return torch.zeros_like(like)


def white_reference(like: torch.Tensor) -> torch.Tensor:
    """All-one images shaped like ``like``."""
    return torch.ones_like(like)


def make_references(kind: str, samples: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """References for a batch of inversions.

    Args:
        kind: "black" | "white" | "sample" (the sample itself) | "other" (``others``, e.g. another
            training image per sample, or one image broadcast to the batch).
        samples: (B, C, H, W) the samples whose targets are being inverted.
        others: (B, C, H, W) or (C, H, W), required for "other".

    Returns:
        (B, C, H, W) references in [0, 1]; images used as references ("sample", "other") must be
        finite floating-point images in [0, 1] (ValueError / TypeError otherwise).
    """
    if kind == "black":
        return black_reference(samples)
    if kind == "white":
        return white_reference(samples)
    if kind == "sample":
        return check_images("make_references samples", samples, ndim=(3, 4)).detach().clone()
    if kind == "other":
        if others is None:
            raise ValueError("kind='other' needs `others`")
        check_images("make_references others", others, ndim=(3, 4))
        if others.dim() == samples.dim() - 1:
            others = others.unsqueeze(0).expand_as(samples)
        if others.shape != samples.shape:
            raise ValueError(f"others {tuple(others.shape)} does not match samples {tuple(samples.shape)}")
        return others.detach().clone()
    raise ValueError(f"unknown reference kind {kind!r}; valid: {REFERENCE_KINDS}")


@dataclass
class MorphResult:
    """Morphing from image a to image b through feature space (paper Figure 8).

    Attributes:
        radii: (S,) requested radii around ``N(b)``, decreasing to 0.
        images: (S, C, H, W) the inversions (reference a, ``||N(x) - N(b)|| <= radius``).
        feature_distance: (S,) float64 ``||N(x_s) - N(b)||`` reached.
        pixel_distance_to_a: (S,) float64 ``||x_s - a||``.
        pixel_distance_to_b: (S,) float64 ``||x_s - b||``.
        success: (S,) bool, each inversion within its tolerance.
        features: (S, f) ``N(x_s)``.
        inversion: the underlying :class:`InversionResult` of the ball problems (radius > 0);
            the radius-0 point problem is ``point_inversion`` (or None).
    """

    radii: torch.Tensor
    images: torch.Tensor
    feature_distance: torch.Tensor
    pixel_distance_to_a: torch.Tensor
    pixel_distance_to_b: torch.Tensor
    success: torch.Tensor
    features: torch.Tensor
    inversion: InversionResult | None
    point_inversion: InversionResult | None


def morph(model: nn.Module, image_a: torch.Tensor, image_b: torch.Tensor,
          radii: torch.Tensor | None = None, n_steps: int = 12, mode: str = "ball",
          **invert_kw) -> MorphResult:
    """Morph image a into image b by shrinking a ball around ``N(b)`` (reference a).

    For each radius ``r_s`` (default: ``n_steps`` values from ``||N(a) - N(b)||`` down to 0)
    the image closest to ``a`` with ``||N(x) - N(b)|| <= r_s`` (``mode="ball"``, or ``= r_s`` with
    "sphere") is found; ``r = 0`` is the point problem ``N(x) = N(b)``. All radii are solved as
    one batch.

    Args:
        image_a, image_b: (C, H, W) images in [0, 1].
        radii: optional (S,) finite radii (>= 0).
        invert_kw: passed to :func:`invert_to_features` (tol, method, options, ...).

    ``n_steps = 0`` (or empty ``radii``) gives an empty result. Images that are not single finite
    (C, H, W) images in [0, 1] and negative or non-finite radii raise ValueError.
    """
    check_images("morph image_a", image_a, ndim=3)
    check_images("morph image_b", image_b, ndim=3)
    if image_a.shape != image_b.shape:
        raise ValueError(f"morph: image_a {tuple(image_a.shape)} and image_b {tuple(image_b.shape)} differ")
    if radii is not None:
        radii = check_values("morph radii", torch.as_tensor(radii).reshape(-1), 1, what="(S,)", unit="value")
        if bool((radii < 0).any()):
            raise ValueError(f"morph radii: {int((radii < 0).sum())} negative radii; a radius is a distance "
                             f"(>= 0; 0 is the point problem N(x) = N(b))")
    with frozen_eval(model):
        fa = features_of(model, image_a.unsqueeze(0))[0]
        fb = features_of(model, image_b.unsqueeze(0))[0]
    d_ab = float((fa.double() - fb.double()).norm())
    if radii is None:
        radii = torch.linspace(d_ab, 0.0, n_steps, dtype=torch.float64)
    radii = torch.as_tensor(radii, dtype=torch.float64).reshape(-1).cpu()
    S = radii.numel()
    C, H, W = image_a.shape
    images = torch.empty(S, C, H, W, dtype=image_a.dtype, device=image_a.device)
    success = torch.zeros(S, dtype=torch.bool, device=image_a.device)
    pos = (radii > 0).nonzero().squeeze(1)
    zero = (radii <= 0).nonzero().squeeze(1)
    inv = pinv = None
    if pos.numel():
        inv = invert_to_features(model, fb.unsqueeze(0).expand(pos.numel(), -1),
                                 image_a.unsqueeze(0).expand(pos.numel(), C, H, W),
                                 radius=radii[pos].to(image_a.device), mode=mode, **invert_kw)
        images[pos.to(image_a.device)] = inv.images.to(image_a.dtype)
        success[pos.to(image_a.device)] = inv.success
    if zero.numel():
        pinv = invert_to_features(model, fb.unsqueeze(0).expand(zero.numel(), -1),
                                  image_a.unsqueeze(0).expand(zero.numel(), C, H, W),
                                  mode="point", **invert_kw)
        images[zero.to(image_a.device)] = pinv.images.to(image_a.dtype)
        success[zero.to(image_a.device)] = pinv.success
    with frozen_eval(model):
        feats = features_of(model, images)
    return MorphResult(
        radii=radii.to(image_a.device), images=images,
        feature_distance=(feats.double() - fb.double()).norm(dim=1),
        pixel_distance_to_a=(images.double() - image_a.double()).flatten(1).norm(dim=1),
        pixel_distance_to_b=(images.double() - image_b.double()).flatten(1).norm(dim=1),
        success=success, features=feats, inversion=inv, point_inversion=pinv)


@dataclass
class PixelLinePath:
    """The straight pixel-space line from a to b and its image in feature space (Figure 9).

    Attributes:
        alphas: (n,) positions in [0, 1] (``x = (1 - alpha) a + alpha b``).
        images: (n, C, H, W) the points of the line.
        features: (n, f) ``N(x)`` along the line.
        length_feature: float, polygonal length of the feature path (>= ``||N(a) - N(b)||``).
        chord_feature: float, ``||N(a) - N(b)||``.
    """

    alphas: torch.Tensor
    images: torch.Tensor
    features: torch.Tensor
    length_feature: float
    chord_feature: float


def pixel_line_feature_path(model: nn.Module, image_a: torch.Tensor, image_b: torch.Tensor,
                            n: int = 50, batch_size: int = 256) -> PixelLinePath:
    """Map the straight pixel line from a to b ((C, H, W) each, finite, in [0, 1]) into feature
    space, ``n >= 2`` points (both ends included; ValueError otherwise)."""
    check_images("pixel_line_feature_path image_a", image_a, ndim=3)
    check_images("pixel_line_feature_path image_b", image_b, ndim=3)
    if image_a.shape != image_b.shape:
        raise ValueError(f"pixel_line_feature_path: image_a {tuple(image_a.shape)} and image_b "
                         f"{tuple(image_b.shape)} differ")
    if int(n) < 2:
        raise ValueError(f"pixel_line_feature_path: n={n}; the line needs n >= 2 points (both ends)")
    if int(batch_size) < 1:
        raise ValueError(f"pixel_line_feature_path: batch_size must be >= 1, got {batch_size}")
    alphas = torch.linspace(0.0, 1.0, n, dtype=image_a.dtype, device=image_a.device)
    images = (1 - alphas.view(-1, 1, 1, 1)) * image_a.unsqueeze(0) + alphas.view(-1, 1, 1, 1) * image_b.unsqueeze(0)
    with frozen_eval(model):
        feats = torch.cat([features_of(model, images[s:s + batch_size]) for s in range(0, n, batch_size)])
    f64 = feats.double()
    length = float((f64[1:] - f64[:-1]).norm(dim=1).sum())
    chord = float((f64[-1] - f64[0]).norm())
    return PixelLinePath(alphas, images, feats, length, chord)


def two_point_equidistant(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-point equidistant projection (Yousefzadeh, arXiv 2202.04052, appendix A) of ``points`` into the plane.

    Anchor ``a`` goes to (0, 0) and ``b`` to (d_ab, 0); a point ``c`` goes to
    ``(c1, c2)`` with ``c1 = (d_ac^2 + d_ab^2 - d_bc^2) / (2 d_ab)`` and
    ``c2 = sqrt(max(d_ac^2 - c1^2, 0)) >= 0``, so that its distances to both anchors are preserved
    exactly (up to rounding; the clamp only removes rounding noise, because the triangle
    inequality guarantees ``d_ac^2 >= c1^2``). Computed in float64. If ``a == b`` every point goes
    to ``(d_ac, 0)``.

    Args:
        points: (N, f) (or (N, ...), flattened per point); a, b: (f,) (or any shape with f entries).

    Returns:
        (N, 2) float64 coordinates (``(0, 2)`` for ``N = 0``). NaN/inf or sizes that do not match
        raise ValueError.
    """
    points, a, b = torch.as_tensor(points), torch.as_tensor(a), torch.as_tensor(b)
    if points.dim() < 2:
        raise ValueError(f"two_point_equidistant points: expected (N, f), got shape {tuple(points.shape)} (a single "
                         f"point is points[None])")
    P = check_values("two_point_equidistant points", points.double().flatten(1), 2, what="(N, f)")
    A = check_values("two_point_equidistant a", a.double().reshape(-1), 1, what="(f,)", unit="value").to(P.device)
    Bp = check_values("two_point_equidistant b", b.double().reshape(-1), 1, what="(f,)", unit="value").to(P.device)
    if not A.numel() == Bp.numel() == P.shape[1]:
        raise ValueError(f"two_point_equidistant: points have {P.shape[1]} coordinates, a {A.numel()}, b {Bp.numel()}")
    d_ab = float((Bp - A).norm())
    d_ac = (P - A).norm(dim=1)
    d_bc = (P - Bp).norm(dim=1)
    if d_ab == 0.0:
        return torch.stack([d_ac, torch.zeros_like(d_ac)], dim=1)
    c1 = (d_ac ** 2 + d_ab ** 2 - d_bc ** 2) / (2.0 * d_ab)
    c2 = (d_ac ** 2 - c1 ** 2).clamp_min(0.0).sqrt()
    return torch.stack([c1, c2], dim=1)


@dataclass
class FeaturePath:
    """Images along the straight feature segment from ``N(image)`` to a target (a morph in pixel
    space whose features move linearly), from :func:`feature_path`.

    Attributes:
        s: (n,) float64 positions ``0 = s_0 < ... < s_{n-1} = 1``.
        images: (n, C, H, W) ``x(s_k)``; ``images[0]`` is the image itself. A position the solver did
            not reach holds the last image it did reach before it (see ``reached``).
        features: (n, f) ``N(x(s_k))``, re-measured.
        goals: (n, f) float64 ``tau(s_k) = (1 - s_k) N(image) + s_k t``.
        residual: (n,) float64 ``||N(x(s_k)) - tau(s_k)|| / max(||tau(s_k)||, abs_floor)``.
        reached: (n,) bool, ``residual <= tol``.
    """

    s: torch.Tensor
    images: torch.Tensor
    features: torch.Tensor
    goals: torch.Tensor
    residual: torch.Tensor
    reached: torch.Tensor


def feature_path(model: nn.Module, image: torch.Tensor, target: torch.Tensor, n_points: int = 9,
                 tol: float = 1e-3, abs_floor: float = 1e-6, max_iter: int = 200, **lm_kw) -> FeaturePath:
    """The continuation path of ``invert_to_features(method="lm")`` for one image (C, H, W) in [0, 1]
    and one target (f,): the images ``x(s_k)`` with ``N(x(s_k)) = (1 - s_k) N(image) + s_k target`` at
    ``n_points >= 2`` equally spaced ``s_k``, each tracked to ``tol`` by minimum-norm Levenberg-Marquardt
    steps from the previous one (fsl.inversion.continuation; ``lm_kw`` go to ``continuation_lm``).
    The first point is the image itself; the last is an inversion of the target."""
    from fsl.inversion.continuation import continuation_lm
    from fsl.inversion.problem import FeatureConstraint

    check_images("feature_path image", image, ndim=3)
    if int(n_points) < 2:
        raise ValueError(f"feature_path: n_points={n_points}; a path needs both ends (n_points >= 2)")
    with frozen_eval(model):
        p0 = next(iter(model.parameters()))
        x0 = image.detach().unsqueeze(0).to(p0.device, p0.dtype)
        f0 = features_of(model, x0).double()
        t = check_values("feature_path target", torch.as_tensor(target).reshape(1, -1), 2, width=f0.shape[1],
                         what="(f,)").detach().to(f0.device).double()
        s = torch.linspace(0.0, 1.0, int(n_points), dtype=torch.float64, device=f0.device)
        goals = f0 + s.unsqueeze(1) * (t - f0)
        abs_tol = tol * goals.norm(dim=1).clamp_min(abs_floor).min().reshape(1)
        dom = getattr(model, "feature_domain", None)
        problem = FeatureConstraint(model, t, None, "point", 4096, None)
        _, _, info = continuation_lm(problem, x0, abs_tol, max_iter=max_iter, record=s[1:],
                                     floor=None if dom is None else dom.lower, **lm_kw)
        flat = torch.cat([x0.reshape(1, -1).double(), info.path[0]], 0)
        for k in range(1, flat.shape[0]):  # unreached positions keep the last reached image
            if torch.isnan(flat[k]).any():
                flat[k] = flat[k - 1]
        images = flat.to(p0.dtype).reshape(-1, *image.shape)
        feats = features_of(model, images)
    res = (feats.double() - goals).norm(dim=1) / goals.norm(dim=1).clamp_min(abs_floor)
    return FeaturePath(s=s, images=images.to(image.device), features=feats.to(image.device), goals=goals,
                       residual=res, reached=res <= tol)
