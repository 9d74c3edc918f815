r"""The four fundamental subspaces of every linear and conv layer (Pattichis & Pattichis, SSIAI 2024, sections 2.1-2.3).

For a weight matrix ``W`` (m x n; conv kernels reshaped to ``out x (in * kh * kw)``) with SVD
``W = U S V^T`` and numerical rank ``r``:

* row space / signal space        ``V[:, :r]``  (n x r)
* null space / rejected signal    ``V[:, r:]``  (n x (n - r))
* column space / signal output    ``U[:, :r]``  (m x r)
* left null / rejected output     ``U[:, r:]``  (m x (m - r))

``r + (n - r) = n`` and ``r + (m - r) = m``; row and null space are orthogonal complements in
``R^n``, column and left null space in ``R^m``. Numerical rank: ``sigma_i > tol`` with
``tol = sigma_1 * max(m, n) * eps(dtype of the stored weight)`` (NumPy's ``matrix_rank`` rule,
with the precision the weights were trained in, not the float64 used for the SVD), or
``sigma_1 * rtol`` when ``rtol`` is given. Condition number: ``sigma_1 / sigma_r`` (as in seed
001) and ``sigma_1 / sigma_min(m, n)`` (``inf`` for a rank-deficient matrix).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerMatrix:
    """One layer as a matrix.

    Attributes:
        name: module name in ``model.named_modules()``.
        kind: "linear" or "conv".
        weight: (m, n) float64 matrix (conv: ``out x (in * kh * kw)``).
        bias: (m,) float64 or None.
        input_shape: shape of one row reshaped back (linear: (n,), conv: (in, kh, kw)).
        source_dtype: dtype of the stored weight (sets the default rank tolerance).
    """

    name: str
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    input_shape: tuple[int, ...]
    source_dtype: torch.dtype


def layer_matrices(model: nn.Module) -> list[LayerMatrix]:
    """Every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (module order) as a :class:`LayerMatrix`."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            W = mod.weight.detach()
            out.append(LayerMatrix(name, "linear", W.double().clone(),
                                   None if mod.bias is None else mod.bias.detach().double().clone(),
                                   (W.shape[1],), W.dtype))
        elif isinstance(mod, nn.Conv2d):
            W = mod.weight.detach()
            if mod.groups != 1:
                raise NotImplementedError(f"{name}: grouped convolutions are not supported")
            out.append(LayerMatrix(name, "conv", W.reshape(W.shape[0], -1).double().clone(),
                                   None if mod.bias is None else mod.bias.detach().double().clone(),
                                   tuple(W.shape[1:]), W.dtype))
    return out


def _finite_matrix(name: str, W) -> torch.Tensor:
    """``W`` as a real 2-D tensor without NaN/inf; ValueError / TypeError naming ``name`` otherwise
    (an SVD of a non-finite matrix has no meaning and LAPACK fails on it)."""
    W = torch.as_tensor(W)
    if W.dtype == torch.bool or W.is_complex():
        raise TypeError(f"{name}: expected a real matrix, got dtype {W.dtype}")
    if W.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D matrix (m, n), got shape {tuple(W.shape)} (reshape conv kernels "
                         f"to out x in*kh*kw, or use layer_matrices)")
    ok = torch.isfinite(W)
    if not bool(ok.all()):
        rows = torch.nonzero(~ok.all(1)).flatten()
        raise ValueError(f"{name}: {int((~ok).sum())} NaN/inf entries in {rows.numel()} of {W.shape[0]} rows "
                         f"(first: {rows[:5].tolist()}); the weights diverged or were corrupted, so no SVD, rank or "
                         f"subspace is defined (check the training run / checkpoint)")
    return W


def rank_tolerance(singular_values: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype,
                   rtol: float | None = None) -> float:
    """``sigma_1 * (rtol or max(m, n) * eps(dtype))`` (0 for an empty or zero matrix).

    ValueError for a ``rtol`` that is not finite and >= 0, or NaN/inf singular values."""
    if rtol is not None and not (math.isfinite(float(rtol)) and float(rtol) >= 0):
        raise ValueError(f"rank_tolerance: rtol must be finite and >= 0, got {rtol}")
    if singular_values.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(singular_values).all()):
        raise ValueError("rank_tolerance: singular_values contain NaN/inf; compute them from a finite matrix")
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    rel = rtol if rtol is not None else max(shape) * eps
    return float(singular_values[0]) * rel


@dataclass
class FundamentalSubspaces:
    """SVD summary and the four fundamental subspaces of one matrix (all float64).

    Attributes:
        singular_values: (min(m, n),) descending.
        rank: numerical rank r; tol: the threshold used.
        condition: ``sigma_1 / sigma_r`` (inf if r = 0).
        condition_full: ``sigma_1 / sigma_min(m, n)`` (inf if that is 0).
        row: (n, r), null: (n, n - r), column: (m, r), left_null: (m, m - r) orthonormal bases.
    """

    singular_values: torch.Tensor
    rank: int
    tol: float
    condition: float
    condition_full: float
    row: torch.Tensor
    null: torch.Tensor
    column: torch.Tensor
    left_null: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.column.shape[0], self.row.shape[0]

    def project_row(self, x: torch.Tensor) -> torch.Tensor:
        """Row-space (signal) component of ``x`` (..., n): ``V_r V_r^T x``."""
        V = self.row.to(x.device)
        return (x.double() @ V) @ V.T

    def residual_energy(self, x: torch.Tensor) -> torch.Tensor:
        """``||x - P_row x||^2 / ||x||^2`` for ``x`` (..., n) (NaN for x = 0)."""
        x64 = x.double()
        res = x64 - self.project_row(x64)
        return res.pow(2).sum(-1) / x64.pow(2).sum(-1)


def fundamental_subspaces(W: torch.Tensor, rtol: float | None = None,
                          source_dtype: torch.dtype | None = None) -> FundamentalSubspaces:
    """Full SVD of ``W`` (m, n) in float64 and the four subspaces (see module docstring).

    ``W`` must be a finite real 2-D matrix (ValueError / TypeError otherwise); an empty one
    (``m = 0`` or ``n = 0``) has rank 0 and empty bases."""
    W64 = _finite_matrix("fundamental_subspaces W", W).detach().double()
    m, n = W64.shape
    U, S, Vh = torch.linalg.svd(W64, full_matrices=True)
    tol = rank_tolerance(S, (m, n), source_dtype or W.dtype, rtol)
    r = int((S > tol).sum()) if S.numel() else 0
    s1 = float(S[0]) if S.numel() else 0.0
    cond = s1 / float(S[r - 1]) if r > 0 else float("inf")
    smin = float(S[-1]) if S.numel() else 0.0
    cond_full = s1 / smin if smin > 0 else float("inf")
    V = Vh.transpose(0, 1)
    return FundamentalSubspaces(S, r, tol, cond, cond_full, V[:, :r].contiguous(), V[:, r:].contiguous(),
                                U[:, :r].contiguous(), U[:, r:].contiguous())


@dataclass
class LayerSpectrum:
    """Light per-layer summary (for logging every epoch)."""

    name: str
    kind: str
    shape: tuple[int, int]
    singular_values: torch.Tensor
    rank: int
    condition: float
    condition_full: float


def layer_spectra(model: nn.Module, rtol: float | None = None) -> list[LayerSpectrum]:
    """Singular values, rank and condition numbers of every Linear/Conv2d layer (no bases).

    ValueError naming the layer when a weight holds NaN/inf."""
    out = []
    for lm in layer_matrices(model):
        S = torch.linalg.svdvals(_finite_matrix(f"layer_spectra: layer {lm.name!r} weight", lm.weight))
        tol = rank_tolerance(S, tuple(lm.weight.shape), lm.source_dtype, rtol)
        r = int((S > tol).sum())
        s1 = float(S[0]) if S.numel() else 0.0
        cond = s1 / float(S[r - 1]) if r > 0 else float("inf")
        cond_full = s1 / float(S[-1]) if S.numel() and float(S[-1]) > 0 else float("inf")
        out.append(LayerSpectrum(lm.name, lm.kind, tuple(lm.weight.shape), S, r, cond, cond_full))
    return out


def all_layer_subspaces(model: nn.Module, rtol: float | None = None) -> dict[str, FundamentalSubspaces]:
    """``{layer name: FundamentalSubspaces}`` for every Linear/Conv2d layer (ValueError naming the
    layer when a weight holds NaN/inf)."""
    return {lm.name: fundamental_subspaces(_finite_matrix(f"all_layer_subspaces: layer {lm.name!r} weight",
                                                          lm.weight), rtol, lm.source_dtype)
            for lm in layer_matrices(model)}
