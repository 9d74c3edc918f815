"""The ambiguity ``d_min - d_h``: near a boundary *and* far from the training hull is suspicious
(Yousefzadeh, arXiv 2202.04052, eq. 26)."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, FitData, register_detector
from fsl.adversarial.vectors import region_distance, weight_gaps

#: training features the hull surrogate of :meth:`AmbiguityDetector.torch_score` keeps (evenly spaced)
SURROGATE_ROWS = 2048


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

    def fit(self, data: FitData) -> "AmbiguityDetector":
        self.pair_norms = weight_gaps(data.weight, "ambiguity detector")
        n = data.train_features.shape[0]
        rows = torch.linspace(0, n - 1, min(n, SURROGATE_ROWS)).round().long() if n else torch.zeros(0).long()
        self.anchors = data.train_features[rows]
        return self

    def value(self, features, logits, margin, hull):
        return margin - hull

    def torch_score(self, features, logits):
        """Surrogate ``d_nn - s``: ``d_h`` replaced by its upper bound, the distance to the nearest of
        (at most :data:`SURROGATE_ROWS`) training features, and ``d_min`` by the closed-form region
        distance ``s`` of the predicted class (the margin detector's surrogate)."""
        anchors = self.anchors.to(features.device, features.dtype)
        d_nn = torch.cdist(features, anchors).amin(dim=1) if len(anchors) else features.new_zeros(len(features))
        return d_nn - region_distance(logits, self.pair_norms, logits.detach().argmax(dim=1))

    def score(self, columns):
        # from the two distances, so that a NaN in either reaches the score
        return ambiguity_score(columns["margin"], columns["hull"])
