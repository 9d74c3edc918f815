"""Local intrinsic dimensionality of the activations at every layer (Ma, Li, Wang, Erfani,
Wijewickrema, Schoenebeck, Song, Houle and Bailey, arXiv 1801.02613)."""
from __future__ import annotations

from typing import Mapping

import torch

from fsl.adversarial.detectors._layers import SupervisedLayerDetector
from fsl.adversarial.detectors.registry import register_detector

Tensor = torch.Tensor


def lid_mle(distances: Tensor, k: int) -> Tensor:
    """``(B,)`` maximum-likelihood LID estimate from ``distances`` ``(B, M)`` of each sample to a
    reference batch (``M >= k``; zero distances, a sample itself, must be left out by the caller):

        ``LID = -(1/k sum_{i=1}^{k} log(r_i / r_k))^{-1}``,

    ``r_1 <= ... <= r_k`` the ``k`` smallest distances (Ma et al., arXiv 1801.02613, eq. 2; Amsaleg
    et al. 2015). Differentiable in ``distances``; ``inf`` when the ``k`` distances are equal."""
    r = torch.topk(distances, int(k), dim=1, largest=False).values
    r = r.clamp_min(torch.finfo(r.dtype).tiny)
    mean_log = torch.log(r / r[:, -1:]).mean(dim=1)
    return -1.0 / mean_log.clamp(max=-torch.finfo(r.dtype).tiny)


@register_detector("lid", defaults={"k": 20, "batch": 100, "C": 1.0})
class LIDDetector(SupervisedLayerDetector):
    """LID of the spatially mean-pooled activations of every layer of ``model.feature_maps`` (ResNet
    stage1-3 + pooled, the SELU layers), each against the same reference minibatch of ``batch`` clean
    fit samples, ``k`` nearest neighbours (the paper: 20 of a minibatch of 100); a logistic
    regression over the layers' LIDs. Supervised: fitted on the clean, noisy and adversarial examples
    of a fit split (:meth:`fit_supervised`); a clean fit sample's own distance is left out. With fewer
    than ``k + 1`` clean fit samples, ``k`` is their number minus one (``k_used``)."""

    def __init__(self, k: int = 20, batch: int = 100, C: float = 1.0):
        super().__init__(C)
        if int(k) < 1 or int(batch) < int(k) + 1:
            raise ValueError(f"lid detector: need 1 <= k < batch, got k={k}, batch={batch}")
        self.k, self.batch = int(k), int(batch)

    def prepare(self, maps: Mapping[str, Tensor], labels: Tensor) -> None:
        n = len(next(iter(maps.values())))
        if n < 3:
            raise ValueError(f"lid detector: {n} clean fit samples; the reference batch needs at least 3")
        rows = torch.linspace(0, n - 1, min(n, self.batch)).round().long()
        self.k_used = min(self.k, len(rows) - 1)  # a smaller fit split than the paper's batch: fewer neighbours
        self.reference = {name: m[rows].to(torch.float64) for name, m in maps.items()}
        self.reference_rows = rows

    def layer_features(self, maps: Mapping[str, Tensor], exclude_self: bool = False) -> Tensor:
        """``(B, L)`` LID of every layer. ``exclude_self``: ``maps`` are the clean samples :meth:`prepare`
        saw; each reference member's own distance is left out."""
        out = []
        for name, ref in self.reference.items():
            x = maps[name]
            d = torch.cdist(x, ref.to(x.device, x.dtype))
            if exclude_self:
                d = d.clone()
                d[self.reference_rows, torch.arange(len(self.reference_rows))] = float("inf")
            out.append(lid_mle(d, self.k_used))
        return torch.stack(out, dim=1)
