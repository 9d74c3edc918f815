"""Input checks and helpers the detectors share."""
from __future__ import annotations

import torch


def finite_2d(name: str, t, dtype=torch.float64) -> torch.Tensor:
    """``t`` as a 2-D float64 tensor; ValueError when it is not 2-D or holds NaN / inf."""
    x = torch.as_tensor(t).detach().to(dtype)
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (rows, dims), got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = int(bad.any(dim=1).sum())
        raise ValueError(f"{name}: {int(bad.sum())} non-finite values (NaN/inf) in {rows} of {x.shape[0]} rows; "
                         f"filter or fix them first")
    return x


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    # zero vectors stay zero (the norm clamp of pytorch-ood's KNN)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def weight_gaps(w: torch.Tensor, caller: str = "fdbd_score") -> torch.Tensor:
    """``(n, n)`` exact ``||w_p - w_c||``; ValueError (from ``caller``) naming any two classes with
    identical weight rows."""
    gaps = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")
    off = ~torch.eye(w.shape[0], dtype=torch.bool, device=w.device)
    zero = ((gaps == 0) & off).triu().nonzero()
    if zero.numel():
        pairs = ", ".join(f"({int(p)}, {int(c)})" for p, c in zero[:5])
        raise ValueError(f"{caller}: classes {pairs} have identical weight vectors (||w_p - w_c|| = 0), so "
                         f"the decision boundary between them is undefined; merge or drop one class of each pair")
    return gaps
