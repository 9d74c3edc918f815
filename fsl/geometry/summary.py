"""Every statistic of docs/geometry.md in one call: :func:`geometry_study` and :class:`FeatureGeometry`.

:func:`geometry_study` is the one implementation: the callbacks and ``analyze.py`` call it through
``fsl.analysis.studies.geometry.feature_geometry_study`` (which shards the samples over DDP ranks with its
``map_rows`` hook), users call it through :class:`FeatureGeometry`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .balls import ball_counts, lipschitz, region_labels, union_coverage
from .flip import flip_margins
from .hull import hull_distances

Tensor = torch.Tensor

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

RowMap = Callable[[Callable[[Tensor], dict], int], dict]


def describe(prefix: str, v: Tensor, quantiles=QUANTILES) -> dict[str, float]:
    """``<prefix>/{frac_inf,mean,median,min,max,q05..q95}`` of the finite values of ``v``."""
    v = v.detach().to(torch.float64)
    fin = v[torch.isfinite(v)]
    out = {f"{prefix}/frac_inf": float(torch.isinf(v).double().mean()) if v.numel() else 0.0}
    if fin.numel() == 0:
        return out
    out[f"{prefix}/mean"] = float(fin.mean())
    out[f"{prefix}/median"] = float(fin.median())
    out[f"{prefix}/min"] = float(fin.min())
    out[f"{prefix}/max"] = float(fin.max())
    qs = torch.quantile(fin, torch.tensor(quantiles, dtype=torch.float64, device=fin.device))
    for q, val in zip(quantiles, qs):
        out[f"{prefix}/q{int(round(q * 100)):02d}"] = float(val)
    return out


@dataclass
class GeometryStudy:
    """``metrics``: summary numbers (plain floats, keys without the ``analysis/`` prefix).
    ``per_sample``: tensors of length N (evaluation samples): ``index``, ``label``, ``pred``,
    ``correct``, ``margin``, ``closest``, ``hull``, ``ambiguity``, ``ball_count``,
    ``in_train_union``, ``support_agreement``, ``margin_certified``, ``hull_certified``
    (+ ``projection_pred``). ``distances``: (N, n) distance to every class's boundary.
    ``train_margin``: (N_tr,) margins of the training features."""

    metrics: dict[str, float]
    per_sample: dict[str, Tensor]
    distances: Tensor
    train_margin: Tensor
    extras: dict = field(default_factory=dict)


def _all_rows(fn: Callable[[Tensor], dict], n: int) -> dict:
    return fn(torch.arange(n))


def geometry_study(train_features: Tensor, train_labels: Tensor, eval_features: Tensor, eval_labels: Tensor,
                   weight: Tensor, bias: Tensor, lower=None, upper=None, *, hull_kwargs: dict | None = None,
                   hull_projections: bool = True, device: str | torch.device = "cpu",
                   map_rows: RowMap | None = None, eval_index: Tensor | None = None,
                   all_distances: bool | None = None) -> GeometryStudy:
    """Everything of docs/geometry.md for the evaluation features against the training features.

    Args:
        train_features: ``(N_tr, f)`` with ``train_labels`` ``(N_tr,)``: the hull and the train balls.
        eval_features: ``(N, f)`` with ``eval_labels`` ``(N,)`` (validation or test samples).
        weight, bias: the head, ``(n, f)`` and ``(n,)``. lower/upper: the model's feature domain.
        hull_kwargs: passed to :func:`hull_distances`.
        hull_projections: also classify the hull projections (accuracy on projections).
        map_rows: ``map_rows(fn, n)`` runs ``fn(rows)`` (a dict of tensors whose first dim is
            ``rows``) over ``range(n)`` and returns the outputs for all rows in order; the default runs
            all rows at once, ``fsl.analysis.distributed.sharded`` splits them over DDP ranks.
        eval_index: ``per_sample["index"]`` (default ``arange(N)``).
        all_distances: the distance of every evaluation sample to every class boundary (``distances``,
            ``O(N n^2 f)``); else only the margins (``flip_margins(margin_only=True)``, ``distances`` NaN
            except the closest pair). Default: all up to 100 classes. The training samples only need
            their margins (ball radii) and always take the pruned path; margins are identical.

    Balls ``B(x)`` of radius ``d_min(x)`` are centred on every training and every evaluation
    sample and count the other samples of both sets; the union is that of the training balls.
    """
    map_rows = map_rows or _all_rows
    dev = torch.device(device)
    W, b = weight.detach().to(dev, torch.float64), bias.detach().to(dev, torch.float64)
    Ftr = train_features.detach().to(dev, torch.float64)
    Fev = eval_features.detach().to(dev, torch.float64)
    ytr, yev = torch.as_tensor(train_labels).cpu(), torch.as_tensor(eval_labels).cpu()
    hull_kwargs = dict(hull_kwargs or {})

    if all_distances is None:
        all_distances = W.shape[0] <= 100

    def margins_of(F: Tensor, every_pair: bool):
        def fn(rows: Tensor) -> dict[str, Tensor]:
            r = flip_margins(F[rows.to(dev)], W, b, lower, upper, margin_only=not every_pair)
            return {"distances": r.distances, "margin": r.margin, "closest": r.closest, "pred": r.pred,
                    "certified": r.certified.all(1)}
        return fn

    tr = map_rows(margins_of(Ftr, False), len(Ftr))
    ev = map_rows(margins_of(Fev, bool(all_distances)), len(Fev))

    def hull_fn(rows: Tensor) -> dict[str, Tensor]:
        r = hull_distances(Fev[rows.to(dev)], Ftr, **hull_kwargs)
        sidx, sw = r.support_index.cpu(), r.support_weight.cpu()
        valid = sidx >= 0
        same = torch.zeros_like(sw, dtype=torch.bool)
        same[valid] = ytr[sidx[valid]] == yev[rows.cpu()][:, None].expand_as(sidx)[valid]
        out = {"hull": r.distance, "hull_certified": r.certified, "gap": r.gap,
               "relative_gap": r.relative_gap, "outside": r.distance > r.stats["inside_tol"],
               "support_size": valid.sum(1), "support_same": (same & valid).sum(1),
               "support_weight_same": (sw * same).sum(1)}
        if hull_projections:
            out["projection_pred"] = (r.projection.to(dev, torch.float64) @ W.T + b).argmax(1)
        return out

    hull = map_rows(hull_fn, len(Fev))

    # balls of radius d_min around every evaluation and every training sample; points = both sets.
    # A ball lies in its centre's decision region, so pairs of two regions are skipped.
    all_points = torch.cat([Ftr, Fev])
    regions = region_labels(all_points, W, b, lower, upper)
    reg_tr, reg_ev = regions[:len(Ftr)], regions[len(Ftr):]

    def balls_fn(F: Tensor, radii: Tensor, offset: int):
        def fn(rows: Tensor) -> dict[str, Tensor]:
            # the centre itself is one of the points (row offset + i): it is not an "other" sample
            rows_d = rows.to(dev)
            counts = ball_counts(F[rows_d], radii[rows].to(dev), all_points, exclude_self=rows_d + offset,
                                 center_regions=regions[rows_d + offset], point_regions=regions)
            return {"count": counts.cpu()}
        return fn

    tr_balls = map_rows(balls_fn(Ftr, tr["margin"], 0), len(Ftr))
    ev_balls = map_rows(balls_fn(Fev, ev["margin"], len(Ftr)), len(Fev))
    union = map_rows(lambda rows: {"inside": union_coverage(Fev[rows.to(dev)], Ftr, tr["margin"].to(dev),
                                                            reg_ev[rows.to(dev)], reg_tr)}, len(Fev))

    margin, hulld = ev["margin"].double().cpu(), hull["hull"].double().cpu()
    amb = margin - hulld
    pred_ev = ev["pred"].cpu()
    correct = pred_ev == yev
    counts_all = torch.cat([tr_balls["count"], ev_balls["count"]])
    metrics: dict[str, float] = {
        "n_eval": float(len(Fev)), "n_train": float(len(Ftr)),
        "acc": float(correct.double().mean()),
        "lipschitz": float(lipschitz(W)),
        "margin/certified_frac": float(ev["certified"].double().mean()),
        "hull/certified_frac": float(hull["hull_certified"].double().mean()),
        "hull/max_relative_gap": float(hull["relative_gap"].max()) if len(Fev) else float("nan"),
        "hull/frac_outside": float(hull["outside"].double().mean()),
        "frac_hull_lt_margin": float((hulld < margin).double().mean()),
        "ambiguity/frac_negative": float((amb < 0).double().mean()),
        "ball/frac_with_other_eval": float((ev_balls["count"] > 0).double().mean()),
        "ball/frac_with_other_train": float((tr_balls["count"] > 0).double().mean()),
        "ball/mean_count": float(counts_all.double().mean()),
        "ball/max_count": float(counts_all.max()) if len(counts_all) else float("nan"),
        "ball/union_coverage": float(union["inside"].double().mean()),
        "hull/support_label_agreement": float(hull["support_same"].sum() / hull["support_size"].sum().clamp(min=1)),
        "hull/support_weight_agreement": float(hull["support_weight_same"].double().mean()),
        "hull/support_size_mean": float(hull["support_size"].double().mean()),
    }
    if hull_projections:
        ppred = hull["projection_pred"].cpu()
        metrics["hull/projection_acc"] = float((ppred == yev).double().mean())
        metrics["hull/projection_pred_unchanged"] = float((ppred == pred_ev).double().mean())
    metrics.update(describe("margin", margin))
    metrics.update(describe("hull", hulld))  # hull/median etc.
    metrics.update(describe("ambiguity", amb))
    metrics.update(describe("train_margin", tr["margin"].double()))
    closest = ev["closest"].cpu()
    hist = torch.bincount(closest[closest >= 0], minlength=W.shape[0]).double() / max(len(closest), 1)
    for j in range(W.shape[0]):
        metrics[f"closest_class/{j}"] = float(hist[j])

    per_sample = {
        "index": torch.arange(len(Fev)) if eval_index is None else torch.as_tensor(eval_index).cpu(),
        "label": yev, "pred": pred_ev, "correct": correct,
        "margin": margin, "closest": closest, "hull": hulld, "ambiguity": amb,
        "ball_count": ev_balls["count"], "in_train_union": union["inside"].cpu(),
        "support_agreement": hull["support_same"].double() / hull["support_size"].clamp(min=1).double(),
        "margin_certified": ev["certified"].cpu(), "hull_certified": hull["hull_certified"].cpu(),
    }
    if hull_projections:
        per_sample["projection_pred"] = hull["projection_pred"].cpu()
    return GeometryStudy(metrics=metrics, per_sample=per_sample, distances=ev["distances"].double().cpu(),
                         train_margin=tr["margin"].double().cpu())


class FeatureGeometry:
    """Feature-space geometry of a trained head relative to a training set (docs/geometry.md).

    Example::

        geo = FeatureGeometry(train_feats, train_labels, model.head.weight, model.head.bias,
                              lower=model.feature_domain.lower, upper=model.feature_domain.upper)
        study = geo.analyze(test_feats, test_labels, max_queries=2000)
        study.metrics["margin/median"], study.per_sample["ambiguity"]

    Args:
        train_features: ``(N, f)``; train_labels: ``(N,)`` int.
        weight, bias: the head (``(n, f)``, ``(n,)``); lower, upper: feature domain.
        device: where to compute (default: the features' device).
    """

    def __init__(self, train_features: Tensor, train_labels: Tensor, weight: Tensor, bias: Tensor,
                 lower=None, upper=None, device=None):
        self.device = torch.device(device) if device is not None else train_features.device
        self.train = train_features.detach().to(self.device)
        self.train_labels = torch.as_tensor(train_labels).to(self.device).long()
        self.weight = weight.detach().to(self.device, torch.float64)
        self.bias = bias.detach().to(self.device, torch.float64)
        self.lower, self.upper = lower, upper

    def margins(self, features: Tensor, **kw):
        """:func:`flip_margins` with this head and domain."""
        return flip_margins(features.to(self.device), self.weight, self.bias, self.lower, self.upper, **kw)

    def analyze(self, test_features: Tensor, test_labels: Tensor, max_queries: int | None = 2000,
                max_train: int | None = None, seed: int = 0, hull_kwargs: dict | None = None,
                map_rows: RowMap | None = None) -> GeometryStudy:
        """:func:`geometry_study` of (a seeded, class-stratified subset of) the test set.

        Args:
            max_queries: test samples analysed; None = all (``per_sample["index"]`` = their rows).
            max_train: training samples used (hull and balls); None = all.
        """
        from fsl.data.subsets import stratified_subset

        labels = torch.as_tensor(test_labels)

        def subset(y: Tensor, k: int | None, s: int) -> Tensor:
            if k is None or k >= len(y):
                return torch.arange(len(y))
            return stratified_subset(y, k, s).sort().values  # used whole: the stored order is kept

        qi = subset(labels, max_queries, seed)
        ti = subset(self.train_labels, max_train, seed + 1).to(self.device)
        return geometry_study(self.train[ti], self.train_labels[ti], test_features[qi.to(test_features.device)],
                              labels[qi.to(labels.device)], self.weight, self.bias, self.lower, self.upper, hull_kwargs=hull_kwargs,
                              device=self.device, map_rows=map_rows, eval_index=qi)
