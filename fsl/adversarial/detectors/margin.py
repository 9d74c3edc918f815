"""The paper's detector: a small feature-space margin ``d_min`` is suspicious (Yousefzadeh,
arXiv 2202.04052, section 7.2; the margin is ``fsl.geometry.flip_margins``)."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, register_detector


def margin_score(margin: torch.Tensor) -> torch.Tensor:
    """``-margin`` (``(B,)``): a small distance to the closest decision boundary is suspicious."""
    return -torch.as_tensor(margin)


@register_detector("margin")
class MarginDetector(Detector):
    """score ``-d_min``: adversarial examples sit next to a decision boundary."""

    negate = True

    def value(self, features, logits, margin, hull):
        return margin
