"""Training losses on the exact feature-space geometry (plain torch functions on tensors)."""
from __future__ import annotations

import torch

from fsl.geometry import differentiable_flip_distances


def margin_hinge(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 target: float, lower=None, upper=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_s [pred_s = y_s] relu(target - d_min(s))``: a hinge on the exact feature-space margin
    ``d_min`` (distance to the closest decision boundary inside the feature domain ``[lower, upper]``,
    :func:`fsl.geometry.differentiable_flip_distances`) of the correctly classified samples;
    misclassified samples contribute 0 (their margin measures the distance to the wrong class's
    boundary, left to the cross-entropy).

    Args:
        features: ``(B, f)``; labels: ``(B,)``; weight ``(n, f)``, bias ``(n,)``: the linear head.
    Returns:
        ``(loss, margins)``: the scalar hinge (features' dtype, differentiable in features, weight and
        bias) and the ``(B_ok,)`` float64 margins of the correctly classified samples (detached).
    """
    # margin_only: pairs that cannot attain the margin skip the Newton stage (same margin, same gradient)
    res = differentiable_flip_distances(features, weight, bias, lower=lower, upper=upper, margin_only=True)
    ok = (res.pred == labels) & torch.isfinite(res.margin)
    hinge = torch.where(ok, (float(target) - res.margin).clamp_min(0), torch.zeros_like(res.margin))
    return hinge.mean().to(features.dtype), res.margin[ok].detach()
