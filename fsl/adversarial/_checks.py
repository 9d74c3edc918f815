"""Input validation shared by fsl.adversarial: clear errors that name the argument, the problem and
the fix, instead of a silent answer or an error from deep inside torch.

Images, labels and generic tensors use the checks of :mod:`fsl.inversion._common` (the same
messages in every package); what is specific to attacks and detection metrics lives here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fsl.inversion._common import check_images, check_labels, check_values

__all__ = ["check_images", "check_labels", "check_values", "check_model_images", "check_logits_labels",
           "check_fpr"]


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
