"""Row-vector helpers shared by the detectors and the attacks: rows scaled to unit length (the
k-NN detector) and the distances between the linear head's weight rows, ``||w_p - w_c||`` (the
denominators of every closed-form distance to a decision boundary: fDBD, the adaptive attack)."""
from __future__ import annotations

import torch

__all__ = ["unit_rows", "weight_gaps", "region_distance"]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||`` row-wise; zero rows stay zero (norms clamped at 1e-12, as pytorch-ood's KNN)."""
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


def region_distance(logits: torch.Tensor, pair_norms: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``min_{k != j} (z_j - z_k) / ||w_j - w_k||`` for ``j = cls`` ``(B,)`` long: the distance of
    the features to the closest boundary of class ``j``'s linear region when the feature domain is
    ignored (negative when ``j`` is not the predicted class), from logits ``(B, n)`` and
    ``pair_norms = weight_gaps(W)`` ``(n, n)``. Differentiable in ``logits``; the closed-form lower
    bound of the margin ``d_min`` of ``fsl.geometry.flip_margins`` for the predicted class."""
    ar = torch.arange(logits.shape[0], device=logits.device)
    norms = pair_norms.to(logits.device, logits.dtype)[cls]
    diff = (logits[ar, cls][:, None] - logits) / norms.masked_fill(norms == 0, 1.0)
    diff = diff.masked_fill(torch.nn.functional.one_hot(cls, logits.shape[1]).bool(), float("inf"))
    return diff.amin(dim=1)
