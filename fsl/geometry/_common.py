"""Small helpers shared by the geometry solvers (pure torch, device-agnostic)."""
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
