"""Deep nearest neighbours (Sun, Ming, Zhu and Li, arXiv 2204.06507)."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, FitData, register_detector
from fsl.adversarial.vectors import unit_rows
from fsl.checks import check_matrix


class KNNDetector:
    """Deep nearest-neighbour detector, fitted on (held in memory as) the training features.

    Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022
    (arXiv 2204.06507): the score of a feature ``y`` is ``||y/||y|| - t_(k)||``, the Euclidean
    distance to its ``k``-th nearest L2-normalised training feature ``t_(k)``.

    Args:
        train_features: ``(N, f)`` training features (any float dtype; kept as float64).
        k: the neighbour rank, ``1 <= k <= N`` (the paper uses 50 on CIFAR-10).
        normalize: L2-normalise training and query features (norms clamped at 1e-12, so zero vectors
            stay zero). ``False`` uses the raw features.
        chunk: queries per block; one block holds a ``(chunk, N)`` float64 distance matrix
            (``8 * chunk * N`` bytes).

    Attributes:
        train: ``(N, f)`` float64 (normalised) training features.
    """

    def __init__(self, train_features: torch.Tensor, k: int = 50, normalize: bool = True, chunk: int = 4096):
        tr = check_matrix("KNNDetector(train_features)", train_features)
        n = tr.shape[0]
        if n == 0:
            raise ValueError("KNNDetector: no training features; the k-th nearest neighbour needs at least k of them")
        if not 1 <= int(k) <= n:
            raise ValueError(f"KNNDetector: k={k} must be between 1 and the number of training features ({n}); "
                             f"pass k <= {n} or more training features")
        if int(chunk) < 1:
            raise ValueError(f"KNNDetector: chunk must be >= 1, got {chunk}")
        self.k, self.normalize, self.chunk = int(k), bool(normalize), int(chunk)
        self.train = unit_rows(tr) if self.normalize else tr

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 distance of ``features`` ``(B, f)`` to their ``k``-th nearest training feature."""
        x = check_matrix("KNNDetector.score(features)", features).to(self.train.device)
        if x.shape[1] != self.train.shape[1]:
            raise ValueError(f"KNNDetector.score: features have {x.shape[1]} dims, the training features "
                             f"{self.train.shape[1]}")
        if self.normalize:
            x = unit_rows(x)
        out = [torch.cdist(x[i:i + self.chunk], self.train, compute_mode="donot_use_mm_for_euclid_dist")
               .kthvalue(self.k, dim=1).values for i in range(0, x.shape[0], self.chunk)]
        return torch.cat(out) if out else x.new_zeros(0)


def knn_score(features: torch.Tensor, train_features: torch.Tensor, k: int = 50, normalize: bool = True,
              chunk: int = 4096) -> torch.Tensor:
    """``(B,)`` float64 k-th nearest-neighbour distance of ``features`` ``(B, f)`` among ``train_features``
    ``(N, f)`` (Sun et al., ICML 2022, arXiv 2204.06507); see :class:`KNNDetector`.

    Exact: distances are taken coordinate-wise in float64 (no ``|x|^2 - 2 x.y + |y|^2`` cancellation).
    Cost ``O(B N f)`` time, ``8 * chunk * N`` bytes per block of queries.
    """
    return KNNDetector(train_features, k=k, normalize=normalize, chunk=chunk).score(features)


@register_detector("knn", defaults={"k": 50, "normalize": True})
class KNN(Detector):
    """score: distance to the ``k``-th nearest normalised training feature."""

    def __init__(self, k: int = 50, normalize: bool = True):
        self.k, self.normalize = int(k), bool(normalize)
        self.index: KNNDetector | None = None

    def fit(self, data: FitData) -> "KNN":
        self.index = KNNDetector(data.train_features, k=self.k, normalize=self.normalize)
        return self

    def value(self, features, logits, margin, hull):
        return self.index.score(features.to("cpu", torch.float64)).to(torch.float64)

    def torch_score(self, features, logits):
        """The score itself: the ``k``-th smallest distance is differentiable almost everywhere (its
        gradient moves the feature towards that neighbour)."""
        train = self.index.train.to(features.device, features.dtype)
        x = unit_rows(features) if self.normalize else features
        return torch.cdist(x, train).kthvalue(self.k, dim=1).values
