"""The feature-space geometry (docs/geometry.md) of a model's :class:`FeatureSet` s, in one process or under DDP (each rank solves its
shard of the samples, results are gathered so every rank holds the same numbers). The math is
:func:`fsl.geometry.geometry_study`; this module only adds the sharding."""
from __future__ import annotations

from typing import Callable

import torch

from fsl.analysis.distributed import gather_cat, shard, unshard
from fsl.analysis.features import FeatureSet
from fsl.geometry.analysis import GeometryStudy, geometry_study

Tensor = torch.Tensor


def sharded(fn: Callable[[Tensor], dict[str, Tensor]], n: int) -> dict[str, Tensor]:
    """Run ``fn(rows)`` on this rank's share of ``range(n)``, gather every output tensor (first dim =
    rows) from all ranks and return them in row order."""
    index = torch.arange(n)
    mine = shard(index)
    out = fn(mine)
    got = gather_cat(mine)
    return {k: unshard(gather_cat(v.cpu()), got, index) for k, v in out.items()}


def feature_geometry_study(train: FeatureSet, evals: FeatureSet, weight: Tensor, bias: Tensor,
                           lower=None, upper=None, *, hull_kwargs: dict | None = None,
                           hull_projections: bool = True, device: str | torch.device = "cpu") -> GeometryStudy:
    """:func:`fsl.geometry.geometry_study` of two :class:`FeatureSet` s, sharded over DDP ranks.

    Args:
        train: training-set features (N_tr, f) with labels; the hull and the train balls.
        evals: evaluation features (N, f) with labels (validation or test samples).
        weight, bias: the head, (n, f) and (n,). lower/upper: the model's feature domain.
        hull_kwargs: passed to :func:`fsl.geometry.hull_distances`.
        hull_projections: also classify the hull projections (accuracy on projections).
    """
    evals.check_finite("evaluation features")
    train.check_finite("training features")
    return geometry_study(train.features, train.labels, evals.features, evals.labels, weight, bias, lower, upper,
                          hull_kwargs=hull_kwargs, hull_projections=hull_projections, device=device,
                          map_rows=sharded, eval_index=evals.index)
