"""Small helpers shared by the geometry solvers (pure torch, device-agnostic): the feature box, the
float32 exactness tests of the filters and pricing, and linear solves safe in DDP workers (the
input checks, e.g. :func:`fsl.checks.check_finite`, are in :mod:`fsl.checks`)."""
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


#: the largest ``f * max|x|^2`` for which float32 filters and pricing run: products and squared
#: norms then stay below ~1e30, far from float32's overflow at 3.4e38 (beyond it: float64)
FLOAT32_SAFE_SQ = 1e30


def float32_products_fit(f: int, *tensors: torch.Tensor) -> bool:
    """True when ``f * max|x|^2`` over ``tensors`` is at most :data:`FLOAT32_SAFE_SQ`: the squared
    norms and dot products of the float32 filters (balls) and pricing (hull) cannot overflow."""
    m = max((float(t.abs().max()) for t in tensors if t.numel()), default=0.0)
    return max(int(f), 1) * m * m <= FLOAT32_SAFE_SQ


# PyTorch's CPU build with MKL: once ``torch.set_num_threads`` has been called in the process
# (Lightning does so in DDP workers), its batched LU (``torch.linalg.solve``, ``lu_factor`` on a batch)
# of matrices larger than about 150 returns invalid pivots ("Pivots given to lu_solve must all be
# greater or equal to 1"), wrong factors, or hangs. Batched Cholesky and single-matrix LU are not
# affected, and neither are batched LUs of matrices up to this size (checked up to 129):
_BATCHED_LU_MAX = 128


def batched_solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve(A, rhs)`` for a batch ``A`` (B, n, n), ``rhs`` (B, n) or (B, n, k): one
    batched call for ``n <= 128`` and on CUDA, else one LU per matrix on the CPU (the same LAPACK
    factorisation per matrix, without the batched path that breaks after ``set_num_threads``)."""
    if A.shape[-1] <= _BATCHED_LU_MAX or A.device.type != "cpu" or A.dim() < 3 or A.shape[0] <= 1:
        return torch.linalg.solve(A, rhs)
    return torch.stack([torch.linalg.solve(A[i], rhs[i]) for i in range(A.shape[0])])


def spd_solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``A^{-1} rhs`` for a batch of symmetric positive definite ``A`` (B, m, m), ``rhs`` (B, m, k),
    by batched Cholesky (the ``J J^T + mu I`` systems of the Gauss-Newton and SQP steps; safe for
    any size, see :func:`batched_solve`). A matrix that Cholesky rejects (not positive definite in
    floating point) is solved on its own by LU."""
    L, info = torch.linalg.cholesky_ex(A)
    out = torch.cholesky_solve(rhs, L)
    for i in (info != 0).nonzero().flatten().tolist():
        out[i] = torch.linalg.solve(A[i], rhs[i])
    return out
