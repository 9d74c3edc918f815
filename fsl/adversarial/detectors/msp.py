"""Maximum softmax probability (Hendrycks and Gimpel, arXiv 1610.02136): low confidence is suspicious."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, register_detector
from fsl.checks import check_matrix


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """``-max_c softmax(logits)_c`` (``(B,)``) from logits ``(B, n)``, computed in float64.

    ValueError for logits that are not 2-D or hold NaN/inf (as :func:`energy_score`)."""
    z = check_matrix("msp_score(logits)", logits)
    return -torch.softmax(z, dim=1).amax(dim=1)


@register_detector("msp")
class MSPDetector(Detector):
    """value ``max softmax``, score its negation."""

    negate = True

    def value(self, features, logits, margin, hull):
        return -msp_score(logits).to("cpu", torch.float64)

    def torch_score(self, features, logits):
        return -torch.softmax(logits, dim=1).amax(dim=1)
