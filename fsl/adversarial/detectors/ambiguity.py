"""The ambiguity ``d_min - d_h``: near a boundary *and* far from the training hull is suspicious
(Yousefzadeh, arXiv 2202.04052, eq. 26)."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, register_detector


def ambiguity_score(margin: torch.Tensor, hull_distance: torch.Tensor) -> torch.Tensor:
    """``-(margin - hull_distance)`` (``(B,)``), i.e. minus the paper's ambiguity ``d_fh`` (eq. 26).

    Both must have the same shape (ValueError otherwise: broadcasting would pair the wrong samples).
    NaN propagates, as in :func:`margin_score` (:func:`fsl.adversarial.summarize_attack` drops and
    counts samples with a NaN score)."""
    m, h = torch.as_tensor(margin), torch.as_tensor(hull_distance)
    if m.shape != h.shape:
        raise ValueError(f"ambiguity_score: margin {tuple(m.shape)} and hull_distance {tuple(h.shape)} must have "
                         f"the same shape (one value per sample)")
    return h - m


@register_detector("ambiguity")
class AmbiguityDetector(Detector):
    """value ``d_min - d_h``, score ``d_h - d_min``."""

    needs = ("margin", "hull")

    def value(self, features, logits, margin, hull):
        return margin - hull

    def score(self, columns):
        # from the two distances, so that a NaN in either reaches the score
        return ambiguity_score(columns["margin"], columns["hull"])
