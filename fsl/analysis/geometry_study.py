"""DESIGN A1-A4 on a model's features: margins, hull distances, balls, ambiguity, as per-sample
tensors and summary numbers. Works in one process and under DDP (each rank solves its shard of the
samples, results are gathered so every rank holds the same numbers)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from fsl.analysis.distributed import gather_cat, shard, unshard
from fsl.analysis.features import FeatureSet

Tensor = torch.Tensor


def sharded(fn: Callable[[Tensor], dict[str, Tensor]], n: int) -> dict[str, Tensor]:
    """Run ``fn(rows)`` on this rank's share of ``range(n)``, gather every output tensor (first dim =
    rows) from all ranks and return them in row order."""
    index = torch.arange(n)
    mine = shard(index)
    out = fn(mine)
    got = gather_cat(mine)
    return {k: unshard(gather_cat(v.cpu()), got, index) for k, v in out.items()}


def quantile_stats(prefix: str, values: Tensor) -> dict[str, float]:
    """``<prefix>/{frac_inf,mean,median,min,max,q05..q95}`` of the finite values."""
    from fsl.geometry.analysis import _describe

    out: dict[str, float] = {}
    _describe(prefix, values, out)
    return out


@dataclass
class GeometryStudy:
    """``metrics``: summary numbers (keys without the ``analysis/`` prefix). ``per_sample``: tensors of
    length N (evaluation samples): ``index``, ``label``, ``pred``, ``margin``, ``closest``, ``hull``,
    ``ambiguity``, ``ball_count``, ``in_train_union``, ``support_agreement``, ``margin_certified``,
    ``hull_certified``. ``distances``: (N, n) distance to every class's boundary. ``train_margin``:
    margins of the training subset."""

    metrics: dict[str, float]
    per_sample: dict[str, Tensor]
    distances: Tensor
    train_margin: Tensor
    extras: dict = field(default_factory=dict)


def feature_geometry_study(train: FeatureSet, evals: FeatureSet, weight: Tensor, bias: Tensor,
                           lower=None, upper=None, *, hull_kwargs: dict | None = None,
                           hull_projections: bool = True, device: str | torch.device = "cpu") -> GeometryStudy:
    """Everything of DESIGN A2-A4 for ``evals`` against the training features ``train``.

    Args:
        train: training-set features (N_tr, f) with labels; the hull and the train balls.
        evals: evaluation features (N, f) with labels (validation or test samples).
        weight, bias: the head, (n, f) and (n,). lower/upper: the model's feature domain.
        hull_kwargs: passed to :func:`fsl.geometry.hull_distances`.
        hull_projections: also classify the hull projections (accuracy on projections).
    """
    from fsl.geometry import ball_counts, flip_margins, hull_distances, lipschitz, region_labels, union_coverage

    evals.check_finite("evaluation features")
    train.check_finite("training features")
    dev = torch.device(device)
    W, b = weight.detach().to(dev, torch.float64), bias.detach().to(dev, torch.float64)
    Ftr = train.features.to(dev, torch.float64)
    Fev = evals.features.to(dev, torch.float64)
    ytr, yev = train.labels.cpu(), evals.labels.cpu()
    hull_kwargs = dict(hull_kwargs or {})

    def margins_of(F: Tensor):
        def fn(rows: Tensor) -> dict[str, Tensor]:
            r = flip_margins(F[rows.to(dev)], W, b, lower, upper)
            return {"distances": r.distances, "margin": r.margin, "closest": r.closest, "pred": r.pred,
                    "certified": r.certified.all(1)}
        return fn

    tr = sharded(margins_of(Ftr), len(Ftr))
    ev = sharded(margins_of(Fev), len(Fev))

    def hull_fn(rows: Tensor) -> dict[str, Tensor]:
        r = hull_distances(Fev[rows.to(dev)], Ftr, **hull_kwargs)
        sidx, sw = r.support_index.cpu(), r.support_weight.cpu()
        valid = sidx >= 0
        same = torch.zeros_like(sw, dtype=torch.bool)
        same[valid] = ytr[sidx[valid]] == yev[rows][:, None].expand_as(sidx)[valid]
        out = {"hull": r.distance, "hull_certified": r.certified, "gap": r.gap,
               "outside": r.distance > r.stats["inside_tol"],
               "support_size": valid.sum(1), "support_same": (same & valid).sum(1),
               "support_weight_same": (sw * same).sum(1)}
        if hull_projections:
            out["projection_pred"] = (r.projection.to(dev, torch.float64) @ W.T + b).argmax(1)
        return out

    hull = sharded(hull_fn, len(Fev))

    # balls B(x) of radius d_min around every evaluation and every training sample; points = both sets
    all_points = torch.cat([Ftr, Fev])
    # a ball of radius d_min lies in its centre's decision region: pairs of two regions are skipped
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

    tr_balls = sharded(balls_fn(Ftr, tr["margin"], 0), len(Ftr))
    ev_balls = sharded(balls_fn(Fev, ev["margin"], len(Ftr)), len(Fev))
    union = sharded(lambda rows: {"inside": union_coverage(Fev[rows.to(dev)], Ftr, tr["margin"].to(dev),
                                                           reg_ev[rows.to(dev)], reg_tr)}, len(Fev))

    margin, hulld = ev["margin"].double(), hull["hull"].double()
    amb = margin - hulld
    correct = ev["pred"] == yev
    counts_all = torch.cat([tr_balls["count"], ev_balls["count"]])
    metrics: dict[str, float] = {
        "n_eval": float(len(Fev)), "n_train": float(len(Ftr)),
        "acc": float(correct.double().mean()),
        "lipschitz": float(lipschitz(W)),
        "margin/certified_frac": float(ev["certified"].double().mean()),
        "hull/certified_frac": float(hull["hull_certified"].double().mean()),
        "hull/frac_outside": float(hull["outside"].double().mean()),
        "frac_hull_lt_margin": float((hulld < margin).double().mean()),
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
        metrics["hull/projection_acc"] = float((hull["projection_pred"] == yev).double().mean())
        metrics["hull/projection_pred_unchanged"] = float((hull["projection_pred"] == ev["pred"]).double().mean())
    metrics.update(quantile_stats("margin", margin))
    metrics.update(quantile_stats("hull", hulld))  # hull/median etc.
    metrics.update(quantile_stats("ambiguity", amb))
    metrics.update(quantile_stats("train_margin", tr["margin"].double()))
    n_classes = W.shape[0]
    closest = ev["closest"]
    hist = torch.bincount(closest[closest >= 0], minlength=n_classes).double() / max(len(closest), 1)
    for j in range(n_classes):
        metrics[f"closest_class/{j}"] = float(hist[j])

    per_sample = {
        "index": evals.index.cpu(), "label": yev, "pred": ev["pred"], "correct": correct,
        "margin": margin, "closest": closest, "hull": hulld, "ambiguity": amb,
        "ball_count": ev_balls["count"], "in_train_union": union["inside"],
        "support_agreement": hull["support_same"].double() / hull["support_size"].clamp(min=1).double(),
        "margin_certified": ev["certified"], "hull_certified": hull["hull_certified"],
    }
    if hull_projections:
        per_sample["projection_pred"] = hull["projection_pred"]
    return GeometryStudy(metrics=metrics, per_sample=per_sample, distances=ev["distances"].double(),
                         train_margin=tr["margin"].double())
