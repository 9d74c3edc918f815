"""Small helpers shared by the geometry solvers (pure torch, device-agnostic); :func:`check_finite` also
backs the input checks of fsl.inversion, fsl.spaces and fsl.adversarial."""
from __future__ import annotations

import torch


def as_box(lower, upper, f: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(lo, hi)`` as ``(f,)`` tensors; ``None`` becomes ``-inf`` / ``+inf``."""

    def conv(v, fill):
        if v is None:
            return torch.full((f,), fill, dtype=dtype, device=device)
        t = torch.as_tensor(v, dtype=dtype, device=device)
        if t.ndim == 0:
            t = t.expand(f)
        if t.shape != (f,):
            raise ValueError(f"bound must be a scalar or a ({f},) tensor, got shape {tuple(t.shape)}")
        return t.clone()

    lo = conv(lower, float("-inf"))
    hi = conv(upper, float("inf"))
    if bool((lo > hi).any()):
        raise ValueError("lower bound exceeds upper bound")
    return lo, hi


def float32_matmul_is_exact(device: torch.device) -> bool:
    """True when float32 matrix products on ``device`` are IEEE float32 (no TF32 / bf16), the
    assumption behind the rounding bounds of the float32 filters (balls) and pricing (hull)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


_GEOMETRY_HINT = ("the geometry of non-finite features is undefined (check the model and the inputs, e.g. "
                  "FeatureSet.check_finite)")


def check_finite(name: str, x: torch.Tensor, hint: str | None = None, unit: str = "row") -> None:
    """ValueError naming how many rows of ``x`` (2-D or more: along dim 0; 1-D: entries) hold NaN/inf.

    ``hint`` (what to do about it) replaces the geometry default; ``unit`` names a row in the
    message ("row", "image", ...)."""
    ok = torch.isfinite(x)
    if not bool(ok.all()):
        row_ok = ok.reshape(ok.shape[0], -1).all(1) if x.ndim >= 2 else ok.reshape(-1)
        bad = int((~row_ok).sum())
        first = torch.nonzero(~row_ok).flatten()[:5].tolist()
        raise ValueError(f"{name}: {bad} {unit}(s) contain NaN/inf (first: {first}); "
                         f"{_GEOMETRY_HINT if hint is None else hint}")


#: the largest ``f * max|x|^2`` for which float32 filters and pricing run: products and squared
#: norms then stay below ~1e30, far from float32's overflow at 3.4e38 (beyond it: float64)
FLOAT32_SAFE_SQ = 1e30


def float32_products_fit(f: int, *tensors: torch.Tensor) -> bool:
    """True when ``f * max|x|^2`` over ``tensors`` is at most :data:`FLOAT32_SAFE_SQ`: the squared
    norms and dot products of the float32 filters (balls) and pricing (hull) cannot overflow."""
    m = max((float(t.abs().max()) for t in tensors if t.numel()), default=0.0)
    return max(int(f), 1) * m * m <= FLOAT32_SAFE_SQ
