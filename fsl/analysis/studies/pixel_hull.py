"""Convex hull of the training images in pixel space: how far test images are from it, whether the
support images share the query's label, and how the model classifies the projections
(Yousefzadeh, arXiv 2202.04052, section 7.2: 27% support agreement, accuracy 90% -> 33%)."""
from __future__ import annotations

import torch

from fsl.analysis.base import Analysis, Result, register_analysis
from fsl.analysis.features import extract_features
from fsl.analysis.metric_docs import FRACTION, PIXEL_L2, MetricDoc
from fsl.analysis.report import fmt
from fsl.data.subsets import stratified_subset


def pixel_hull_study(train_images: torch.Tensor, train_labels: torch.Tensor, images: torch.Tensor,
                     labels: torch.Tensor, model, hull_kwargs: dict | None = None, batch_size: int = 1000,
                     device="cpu") -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Project ``images`` (N, C, H, W) onto the convex hull of ``train_images`` (M, C, H, W) in pixel
    space (float64). Returns ``(metrics, per_sample)``: metrics keyed without prefix
    (``hull/distance_median``, ``hull/support_label_agreement``, ``hull/projection_acc``, ...),
    per-sample ``distance`` (N,), ``projection_pred`` (N,), ``projection`` (N, C, H, W)."""
    from fsl.geometry import hull_distances

    q = images.flatten(1).double()
    pts = train_images.flatten(1).double()
    r = hull_distances(q, pts, **(hull_kwargs or {}))
    sidx = r.support_index.cpu()
    valid = sidx >= 0
    same = torch.zeros_like(valid)
    same[valid] = train_labels[sidx[valid]] == labels[:, None].expand_as(sidx)[valid]
    proj = r.projection.float().clamp(0, 1).view_as(images)
    preds = extract_features(model, proj, labels, batch_size=batch_size, device=device).preds
    orig = extract_features(model, images, labels, batch_size=batch_size, device=device).preds
    metrics = {
        "n_queries": float(len(q)), "n_train": float(len(pts)),
        "hull/distance_median": float(r.distance.double().median()),
        "hull/frac_outside": float((r.distance > 0).double().mean()),
        "hull/certified_frac": float(r.certified.double().mean()),
        "hull/support_label_agreement": float((same & valid).sum() / valid.sum().clamp(min=1)),
        "hull/projection_acc": float((preds == labels).double().mean()),
        "acc_on_queries": float((orig == labels).double().mean()),
    }
    return metrics, {"distance": r.distance.double().cpu(), "projection_pred": preds, "projection": proj}


@register_analysis("pixel_hull")
class PixelHullAnalysis(Analysis):
    """Options: ``n_queries`` (evaluation samples projected: a seeded draw from the evaluation subset,
    stratified by class; 0 or None: all), ``n_train`` (training images spanning the hull, None = the
    context's training subset size), ``n_eval``, ``hull``.
    Per-sample column ``pixel_hull`` (NaN for samples not queried)."""

    prefix = "pixel"
    sizes = Analysis.sizes + ("n_queries",)
    metric_docs = (
        MetricDoc("n_queries", "evaluation images projected onto the hull (`n_queries` of them, a seeded draw "
                  "stratified by class; 0 or null: all)", "count"),
        MetricDoc("n_train", "training images whose convex hull (in pixel space) they are projected onto", "count"),
        MetricDoc("hull/distance_median", "median over the queries of their distance to the convex hull of the "
                  "training images (`torch.median`: the lower middle value for an even count)", PIXEL_L2),
        MetricDoc("hull/frac_outside", "fraction of the queries with a positive distance to the hull",
                  FRACTION),
        MetricDoc("hull/certified_frac", "fraction of the queries whose hull distance is certified (Frank-Wolfe gap "
                  "within the relative tolerance)", FRACTION),
        MetricDoc("hull/support_label_agreement", "fraction of the support images (positive weight in a projection), "
                  "pooled over all queries, whose label is the query's label", FRACTION),
        MetricDoc("hull/projection_acc", "fraction of the projections (clamped to [0, 1]) the model classifies as the "
                  "query's true label", FRACTION),
        MetricDoc("acc_on_queries", "fraction of the queried images themselves the model classifies correctly",
                  FRACTION),
    )

    def compute(self, ctx) -> Result:
        images, labels = ctx.eval_images(self.n_eval), ctx.labels(ctx.eval_split, self.n_eval)
        q = stratified_subset(labels, int(self.n_queries or 0), ctx.split_seed(ctx.eval_split))
        x_tr, y_tr = ctx.images("train", self.n_train), ctx.labels("train", self.n_train)
        m, ps = pixel_hull_study(x_tr, y_tr, images[q], labels[q], ctx.model, dict(self.hull or {}),
                                 ctx.batch_size, ctx.device)
        col = torch.full((len(labels),), float("nan"), dtype=torch.float64)
        col[q] = ps["distance"]
        report = ["## Pixel space", "",
                  f"- {int(m['n_queries'])} evaluation images against the hull of {int(m['n_train'])} training "
                  f"images: {fmt(m['hull/frac_outside'], '.1%')} outside, median distance "
                  f"{fmt(m['hull/distance_median'])}; support images with the query's label "
                  f"{fmt(m['hull/support_label_agreement'], '.1%')}; accuracy on the projections "
                  f"{fmt(m['hull/projection_acc'], '.3f')} (on the images {fmt(m['acc_on_queries'], '.3f')})."]
        return Result(metrics=m, per_sample={"pixel_hull": col}, report=report, data=ps)
