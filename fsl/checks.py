"""Input checks shared by every package: shape, dtype, finiteness and range, with one message style.

Each check names the argument, the problem and the fix, and raises before any work is done —
never a silent answer, a "certified" number on NaN input, or an error from deep inside torch.
TypeError for a wrong type or dtype, ValueError for a wrong shape, a non-finite value or a value
out of range. Every function returns its input (as a tensor where it converts), so a check reads
``x = check_images("x", x)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["check_finite", "check_images", "check_values", "check_matrix", "check_labels", "check_count",
           "check_model_images", "check_logits_labels", "check_fpr"]

_GEOMETRY_HINT = ("the geometry of non-finite features is undefined (check the model and the inputs, e.g. "
                  "FeatureSet.check_finite)")


def check_finite(name: str, x: torch.Tensor, hint: str | None = None, unit: str = "row") -> None:
    """ValueError naming how many rows of ``x`` (2-D or more: along dim 0; 1-D: entries) hold NaN/inf.

    ``hint`` (what to do about it) replaces the default (feature geometry); ``unit`` names a row in
    the message ("row", "image", ...)."""
    ok = torch.isfinite(x)
    if not bool(ok.all()):
        row_ok = ok.reshape(ok.shape[0], -1).all(1) if x.ndim >= 2 else ok.reshape(-1)
        bad = int((~row_ok).sum())
        first = torch.nonzero(~row_ok).flatten()[:5].tolist()
        raise ValueError(f"{name}: {bad} {unit}(s) contain NaN/inf (first: {first}); "
                         f"{_GEOMETRY_HINT if hint is None else hint}")


def check_images(name: str, x, ndim: int | tuple[int, ...] | None = 4, unit_box: bool = True) -> torch.Tensor:
    """``x`` unchanged after checking that it is a floating-point tensor of ``ndim`` dimensions
    (``(B, C, H, W)`` by default; ``None``: any), without NaN/inf and, with ``unit_box``, inside
    [0, 1]. TypeError for a wrong type or dtype, ValueError (naming ``name``, the offending images
    and the fix) otherwise. Empty tensors pass."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating-point images in [0, 1], got dtype {x.dtype}; convert integer "
                        f"pixels first, e.g. x.float() / 255")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and x.dim() not in dims:
        want = " or ".join({4: "(B, C, H, W)", 3: "(C, H, W)"}.get(d, f"{d}-D") for d in dims)
        raise ValueError(f"{name}: expected images of shape {want}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    one = x.dim() == 3 or x.dim() <= 1  # (C, H, W): a single image
    flat = x.reshape(1, -1) if one else x.reshape(x.shape[0], -1)
    check_finite(name, flat, hint="images must be finite (check the data pipeline)", unit="image")
    if unit_box:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            out = ((flat < 0) | (flat > 1)).any(1)
            first = torch.nonzero(out).flatten()[:5].tolist()
            raise ValueError(f"{name}: {int(out.sum())} image(s) have pixels outside [0, 1] (range [{lo:.4g}, "
                             f"{hi:.4g}], first: {first}); models take images in [0, 1] and normalise inside "
                             f"(rescale, e.g. x / 255, or clamp to [0, 1])")
    return x


def check_values(name: str, t, ndim: int | None = 2, width: int | None = None, what: str = "(B, f)",
                 unit: str = "row") -> torch.Tensor:
    """``t`` as a tensor after checking it is real-valued, ``ndim``-D with ``width`` columns (last
    dimension) when given, and finite. ``what`` describes the expected shape in the message."""
    x = torch.as_tensor(t)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected shape {what}, got shape {tuple(x.shape)}")
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"{name}: expected shape {what} with {width} columns, got shape {tuple(x.shape)}")
    if x.numel():
        check_finite(name, x.detach(), hint="the values must be finite (check how they were computed)", unit=unit)
    return x


def check_matrix(name: str, t, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``t`` as a detached 2-D ``(rows, dims)`` tensor of ``dtype``; ValueError when it is not 2-D or
    holds NaN / inf (counting the bad values and rows)."""
    x = torch.as_tensor(t).detach().to(dtype)
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (rows, dims), got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = int(bad.any(dim=1).sum())
        raise ValueError(f"{name}: {int(bad.sum())} non-finite values (NaN/inf) in {rows} of {x.shape[0]} rows; "
                         f"filter or fix them first")
    return x


def check_labels(name: str, labels, n: int, num_classes: int | None = None) -> torch.Tensor:
    """``labels`` as a 1-D integer tensor of length ``n`` (values in ``[0, num_classes)`` when given)."""
    y = torch.as_tensor(labels)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class labels, got dtype {y.dtype} (pass labels.long())")
    if y.shape != (n,):
        raise ValueError(f"{name}: expected one label per sample, shape ({n},), got {tuple(y.shape)}")
    if y.numel():
        out = (y < 0) if num_classes is None else ((y < 0) | (y >= num_classes))
        if bool(out.any()):
            first = torch.nonzero(out).flatten()[:5].tolist()
            top = num_classes if num_classes is not None else "n"
            raise ValueError(f"{name}: class labels must lie in [0, {top}), got values in [{int(y.min())}, "
                             f"{int(y.max())}] (first bad: {first})")
    return y


def check_count(name: str, n: int, what: str = "image") -> None:
    """ValueError when ``n == 0``: ``name`` needs at least one ``what``."""
    if int(n) == 0:
        raise ValueError(f"{name}: got 0 {what}s; at least one {what} is needed")


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def check_model_images(name: str, model: nn.Module, images) -> torch.Tensor:
    """``images`` after :func:`check_images` ((B, C, H, W), floating, finite, in [0, 1]) and a check
    that their dtype is the model's (TypeError naming both otherwise: torch would fail deep inside a
    layer, or an attack would silently mix precisions)."""
    check_images(name, images, ndim=4)
    dt = _model_dtype(model)
    if dt is not None and images.dtype != dt:
        raise TypeError(f"{name}: dtype {images.dtype} does not match the model's {dt}; pass images.to({dt})")
    return images


def check_logits_labels(name: str, logits: torch.Tensor, labels) -> torch.Tensor:
    """``labels`` as an int64 tensor on ``logits``' device after checking that ``logits`` is
    ``(B, n)`` and ``labels`` holds ``B`` integer classes in ``[0, n)`` (a negative label would index
    from the end, silently)."""
    if logits.dim() != 2:
        raise ValueError(f"{name}: expected logits (B, n), got shape {tuple(logits.shape)}")
    y = check_labels(f"{name} labels", labels, logits.shape[0], logits.shape[1])
    return y.to(logits.device).long()


def check_fpr(name: str, fpr: float) -> float:
    """``fpr`` as a float in [0, 1] (ValueError otherwise)."""
    v = float(fpr)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name}: fpr is a false-positive rate and must lie in [0, 1], got {fpr}")
    return v
