"""Image manipulations of FeatMap (Krey, Neukirch, Strodthoff, arXiv 2605.11203) as batched torch
transforms: ``(B, C, H, W)`` in [0, 1] (C = 1 grey or 3 colour) to the same shape in [0, 1].

Every manipulation is seeded (the random ones draw from ``torch.Generator().manual_seed(seed)``,
once for the whole batch, so the same seed and images give the same output) and has its
parameters in :data:`MANIPULATIONS` (a :class:`fsl.registry.Registry` of :class:`Manipulation`
specs; ``MANIPULATIONS.defaults(name)``), overridable per call. Besides the images it returns the
pixels it replaced (``region``, masks and occlusion only), and geometric ones that move the image
on a grid name the same move of a feature map (``grid``: rot90 / flips), which the permutation
baseline and the per-position maps apply to the original feature grid first.

Defaults follow the paper's set-up where it has one: Gaussian noise sigma 40/255, hue shift 60 in
PIL's 0..255 hue units (0.234 of the colour wheel), the four square masks at the paper's positions
(fractions of the 288-pixel images; red, green, blue, yellow, their luminance on grey images).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from fsl.checks import check_images
from fsl.registry import Registry

Tensor = torch.Tensor
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luminance, as PIL's convert("L")


@dataclass(frozen=True)
class Manipulation:
    """One registered manipulation (the object :data:`MANIPULATIONS` holds under its name).

    Attributes:
        fn: ``fn(images, gen, **params) -> (images, region | None)``; ``region`` (B, 1, H, W) bool.
        defaults: its parameters (``MANIPULATIONS.defaults(name)`` hands out a copy).
        kind: ``geometric``, ``photometric`` or ``mask``.
        colour_only: needs 3-channel images (hue, grayscale).
        grid: the same move on a feature map ``(B, C, h, w)`` when it is an exact grid permutation.
    """

    name: str
    fn: Callable
    defaults: dict = field(default_factory=dict)
    kind: str = "photometric"
    colour_only: bool = False
    grid: Callable[[Tensor], Tensor] | None = None


#: every manipulation by name, in registration order; an unknown name or parameter is a ConfigError
#: naming the closest valid one
MANIPULATIONS = Registry("manipulation", where="fsl.featmap.MANIPULATIONS")


def _register(name, kind, defaults=None, colour_only=False, grid=None):
    def deco(fn):
        spec = Manipulation(name, fn, dict(defaults or {}), kind, colour_only, grid)
        MANIPULATIONS.register(name, spec, defaults=spec.defaults, kind=kind)
        return fn

    return deco


def manipulation(name: str) -> Manipulation:
    """The registered manipulation ``name``; ConfigError (a ValueError) naming the closest valid one."""
    return MANIPULATIONS.get(name)


def check_manipulation_images(images: Tensor, what: str = "images") -> None:
    """``images`` must be a finite floating-point ``(B, C, H, W)`` tensor in [0, 1]
    (:func:`fsl.checks.check_images`: TypeError / ValueError naming the fix) with C in (1, 3)."""
    check_images(what, images, ndim=4)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{what} must be a (B, C, H, W) tensor with C = 1 or 3, got {tuple(images.shape)}")


def apply_manipulation(name: str, images: Tensor, seed: int = 0, params: dict | None = None
                       ) -> tuple[Tensor, Tensor | None]:
    """Apply manipulation ``name`` to ``images`` (B, C, H, W) in [0, 1].

    Args:
        params: overrides of its ``defaults`` (an unknown key is a ConfigError naming the closest valid one).
        seed: seeds the random ones (noise, perspective, occlusion); same seed, same output.

    Returns:
        ``(manipulated (B, C, H, W) in [0, 1], region (B, 1, H, W) bool or None)``: the replaced
        pixels for masks and occlusion.
    """
    m = manipulation(name)
    check_manipulation_images(images, f"apply_manipulation({name!r}): images")
    MANIPULATIONS.check_params(name, params or {})
    if m.colour_only and images.shape[1] != 3:
        raise ValueError(f"manipulation {name!r} needs colour images (B, 3, H, W), got {images.shape[1]} channel(s); "
                         f"leave it out for grey data")
    gen = torch.Generator().manual_seed(int(seed))
    out, region = m.fn(images, gen, **{**MANIPULATIONS.defaults(name), **(params or {})})
    return out.clamp(0, 1).to(images.dtype), region


def grid_move(name: str) -> Callable[[Tensor], Tensor] | None:
    """The exact feature-grid move of a geometric manipulation (rot90s, flips), else None. It acts
    on ``(B, C, h, w)``; a vector ``(B, C)`` or 1x1 map is returned unchanged."""
    g = manipulation(name).grid
    if g is None:
        return None

    def move(f: Tensor) -> Tensor:
        return f if f.dim() < 4 or f.shape[-2:] == (1, 1) else g(f)

    return move


# -- geometric ------------------------------------------------------------------------------------

def _rot(k):
    def fn(x, gen):
        if x.shape[-1] != x.shape[-2] and k % 2:
            raise ValueError(f"rot{90 * k} needs square images, got {tuple(x.shape[-2:])}")
        return torch.rot90(x, k, dims=(2, 3)), None

    return fn


for _k in (1, 2, 3):
    _register(f"rot{90 * _k}", "geometric", grid=lambda f, k=_k: torch.rot90(f, k, dims=(2, 3)))(_rot(_k))


@_register("hflip", "geometric", grid=lambda f: f.flip(3))
def _hflip(x, gen):
    """Mirror left-right."""
    return x.flip(3), None


@_register("vflip", "geometric", grid=lambda f: f.flip(2))
def _vflip(x, gen):
    """Mirror top-bottom."""
    return x.flip(2), None


@_register("shift", "geometric", {"dx": 3, "dy": 3, "fill": 0.0})
def _shift(x, gen, dx, dy, fill):
    """Translate by (dx, dy) pixels (right, down; negative: left, up); uncovered pixels ``fill``."""
    dx, dy = int(dx), int(dy)
    H, W = x.shape[-2:]
    out = torch.full_like(x, float(fill))
    if abs(dx) < W and abs(dy) < H:
        out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            x[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out, None


def _sample(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear resampling of ``x`` at ``grid`` (B, H, W, 2) in normalised [-1, 1] coordinates, zeros outside."""
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


@_register("rotate", "geometric", {"degrees": 15.0})
def _rotate(x, gen, degrees):
    """Rotate by a small angle about the centre (counter-clockwise as displayed, like rot90), black corners."""
    a = math.radians(float(degrees))
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=torch.float64)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return _sample(x, grid), None


@_register("perspective", "geometric", {"distortion": 0.2})
def _perspective(x, gen, distortion):
    """A random homography per image: the four corners move independently by up to ``distortion``
    of the half-size (seeded), the image is resampled there (black outside)."""
    B, _, H, W = x.shape
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    src = corners + float(distortion) * (2 * torch.rand(B, 4, 2, generator=gen, dtype=torch.float64) - 1)
    # output corner (x, y) -> input location (u, v) = H (x, y, 1): 8 unknowns from 4 correspondences
    A = torch.zeros(B, 8, 8, dtype=torch.float64)
    rhs = torch.zeros(B, 8, dtype=torch.float64)
    for i, (cx, cy) in enumerate(corners.tolist()):
        u, v = src[:, i, 0], src[:, i, 1]
        A[:, 2 * i, :3] = torch.tensor([cx, cy, 1.0], dtype=torch.float64)
        A[:, 2 * i, 6], A[:, 2 * i, 7] = -u * cx, -u * cy
        A[:, 2 * i + 1, 3:6] = torch.tensor([cx, cy, 1.0], dtype=torch.float64)
        A[:, 2 * i + 1, 6], A[:, 2 * i + 1, 7] = -v * cx, -v * cy
        rhs[:, 2 * i], rhs[:, 2 * i + 1] = u, v
    h = torch.cat([torch.linalg.solve(A, rhs), torch.ones(B, 1, dtype=torch.float64)], 1).view(B, 3, 3)
    base = F.affine_grid(torch.eye(2, 3, dtype=torch.float64).expand(B, 2, 3), [B, 1, H, W], align_corners=False)
    pts = torch.cat([base, torch.ones(B, H, W, 1, dtype=torch.float64)], -1) @ h.transpose(1, 2)[:, None]
    return _sample(x, pts[..., :2] / pts[..., 2:]), None


# -- photometric ----------------------------------------------------------------------------------

@_register("noise", "photometric", {"sigma": 40 / 255})
def _noise(x, gen, sigma):
    """Additive Gaussian noise of std ``sigma`` (clipped to [0, 1])."""
    return x + float(sigma) * torch.randn(x.shape, generator=gen).to(x), None


@_register("brightness", "photometric", {"factor": 1.4})
def _brightness(x, gen, factor):
    """``factor * x`` (PIL's ImageEnhance.Brightness; clipped)."""
    return float(factor) * x, None


@_register("contrast", "photometric", {"factor": 0.5, "centre": "mean"})
def _contrast(x, gen, factor, centre):
    """``centre + factor * (x - centre)``; ``centre`` "mean" (each image's mean grey level, as PIL's
    ImageEnhance.Contrast) or a fixed level in [0, 1]."""
    c = _grey(x).mean((1, 2, 3), keepdim=True) if centre == "mean" else float(centre)
    return c + float(factor) * (x - c), None


@_register("blur", "photometric", {"sigma": 1.0})
def _blur(x, gen, sigma):
    """Gaussian blur of std ``sigma`` pixels (separable, kernel 2 * ceil(2 sigma) + 1, reflected borders)."""
    r = max(1, math.ceil(2 * float(sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    k = (k / k.sum()).to(x)
    C = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C), None


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


@_register("grayscale", "photometric", colour_only=True)
def _grayscale(x, gen):
    """Luminance (0.299 R + 0.587 G + 0.114 B) in all three channels."""
    return _grey(x).expand_as(x).clone(), None


@_register("hue", "photometric", {"shift": 60 / 256}, colour_only=True)
def _hue(x, gen, shift):
    """Rotate the hue by ``shift`` turns of the colour wheel (HSV; saturation and value kept)."""
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + float(shift), 1.0), s, v), None


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = x.max(1).values, x.min(1).values
    d = mx - mn
    safe = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(mx == r, torch.remainder((g - b) / safe, 6.0),
                    torch.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) / 6.0
    h = torch.where(d > 0, h, torch.zeros_like(h))
    s = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return h, s, mx


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    k = torch.stack([(5 + 6 * h) % 6, (3 + 6 * h) % 6, (1 + 6 * h) % 6], 1)  # R, G, B
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


# -- masks ----------------------------------------------------------------------------------------

def _fill(x: Tensor, value) -> Tensor:
    """``value`` (a grey level or an [r, g, b] colour) as a (1, C, 1, 1) tensor for ``x``; a colour on
    grey images becomes its luminance."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device).flatten()
    if v.numel() not in (1, 3):
        raise ValueError(f"mask value must be a grey level or [r, g, b], got {value!r}")
    if x.shape[1] == 1 and v.numel() == 3:
        v = (v * torch.tensor(LUMA, dtype=x.dtype, device=x.device)).sum(0, keepdim=True)
    return v.expand(x.shape[1]).view(1, -1, 1, 1)


def _box(x, top, left, size):
    """Pixel box of fractional ``top``, ``left`` and side ``size`` (of H and W)."""
    H, W = x.shape[-2:]
    r0, c0 = int(round(float(top) * H)), int(round(float(left) * W))
    r1, c1 = min(H, r0 + max(1, int(round(float(size) * H)))), min(W, c0 + max(1, int(round(float(size) * W))))
    region = torch.zeros(len(x), 1, H, W, dtype=torch.bool, device=x.device)
    region[..., r0:r1, c0:c1] = True
    return region


def _masked(x, region, value):
    return torch.where(region, _fill(x, value), x), region


def _square_mask(top, left, size, value):
    defaults = {"top": top, "left": left, "size": size, "value": value}

    def fn(x, gen, top, left, size, value):
        """A square of colour ``value`` at fractional ``top``, ``left``, side ``size``."""
        return _masked(x, _box(x, top, left, size), value)

    return defaults, fn


for _name, _spec in {"mask_tl": (0.09, 0.09, 0.27, [1.0, 0.0, 0.0]),      # paper: [26, 103] of 288 px, red
                     "mask_br": (0.625, 0.625, 0.31, [0.0, 1.0, 0.0]),    # [180, 270], green
                     "mask_centre": (0.31, 0.31, 0.36, [0.0, 0.0, 1.0]),  # [90, 193], blue
                     "mask_centre_small": (0.40, 0.40, 0.13, [1.0, 1.0, 0.0])}.items():  # [116, 154], yellow
    _d, _f = _square_mask(*_spec)
    _register(_name, "mask", _d)(_f)


@_register("occlusion", "mask", {"size": 0.25, "value": 0.0})
def _occlusion(x, gen, size, value):
    """A square of side ``size`` (fraction of H) and colour ``value`` at a random place per image (seeded)."""
    B, _, H, W = x.shape
    s_h, s_w = max(1, int(round(float(size) * H))), max(1, int(round(float(size) * W)))
    r = torch.randint(0, H - s_h + 1, (B,), generator=gen)
    c = torch.randint(0, W - s_w + 1, (B,), generator=gen)
    rows, cols = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    region = ((rows >= r.view(B, 1, 1)) & (rows < (r + s_h).view(B, 1, 1))
              & (cols >= c.view(B, 1, 1)) & (cols < (c + s_w).view(B, 1, 1)))[:, None].to(x.device)
    return _masked(x, region, value)
