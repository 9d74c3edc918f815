"""When an adversarial example counts as one: a logit gap above float noise.

A minimal attack ends next to a decision boundary; at a float32 tie the argmax, and with it
"success", is decided by rounding (and flips with the thread count or the world size). fsl counts
an image as adversarial for label ``y`` only when

    gap = max_{k != y} z_k - z_y  >  GAP_RTOL * max(1, max_k |z_k|)

i.e. the best wrong logit beats the true one by more than ``GAP_RTOL`` (1e-4) relative to the
logits' scale: about a thousand times float32 rounding of the logits, and far below what an attack
that crosses the boundary leaves (DeepFool's 2% overshoot leaves about 2% of the clean gap).
Every attack, the evaluation and the detectors use this one rule.
"""
from __future__ import annotations

import torch

from fsl.checks import check_logits_labels

GAP_RTOL = 1e-4


def logit_gap(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``max_{k != y} z_k - z_y`` of logits ``(B, n)``: > 0 misclassified, ~0 on the boundary.

    ``labels``: ``(B,)`` integer classes in ``[0, n)`` (ValueError / TypeError otherwise). NaN logits
    give a NaN gap (never counted as a success by :func:`is_adversarial`); with ``n = 1`` there is no
    other class and the gap is ``-inf``.
    """
    y = check_logits_labels("logit_gap", logits, labels)
    ar = torch.arange(logits.shape[0], device=logits.device)
    other = logits.clone()
    other[ar, y] = -float("inf")
    return other.amax(dim=1) - logits[ar, y]


def gap_tolerance(logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the smallest gap counted as a success: ``GAP_RTOL * max(1, max_k |z_k|)`` of logits
    ``(B, n)`` (ValueError for another shape)."""
    if logits.dim() != 2:
        raise ValueError(f"gap_tolerance: expected logits (B, n), got shape {tuple(logits.shape)}")
    return GAP_RTOL * logits.detach().abs().amax(dim=1).clamp_min(1.0)


#: attacks that stop at the first success aim at this multiple of the tolerance, so that the judgement
#: on the returned image is never within float noise of the threshold
STOP_FACTOR = 10.0


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """``(B,)`` bool: misclassified with a gap above ``factor`` times :func:`gap_tolerance` (NaN
    logits: ``False``)."""
    return logit_gap(logits, labels) > factor * gap_tolerance(logits)
