"""Feature-space geometry of the evaluation samples against the training features: exact margins
(flip points), convex-hull distances, balls, union coverage, support agreement and ambiguity
(Yousefzadeh, arXiv 2202.04052; docs/geometry.md)."""
from __future__ import annotations

import math

import torch

from fsl.analysis.base import Analysis, Figure, Result, Table, register_analysis
from fsl.analysis.distributed import sharded
from fsl.analysis.features import FeatureSet
from fsl.analysis.metric_docs import FEATURE_L2, FRACTION, RATIO, MetricDoc
from fsl.analysis.report import fmt
from fsl.geometry import GeometryStudy, geometry_study

Tensor = torch.Tensor


def feature_geometry_study(train: FeatureSet, evals: FeatureSet, weight: Tensor, bias: Tensor,
                           lower=None, upper=None, *, hull_kwargs: dict | None = None,
                           hull_projections: bool = True, device: str | torch.device = "cpu",
                           all_distances: bool | None = None) -> GeometryStudy:
    """:func:`fsl.geometry.geometry_study` of two :class:`FeatureSet` s, sharded over DDP ranks (each
    rank solves its share of the evaluation samples; every rank gets all results).

    Args:
        train: training-set features (N_tr, f) with labels; the hull and the train balls.
        evals: evaluation features (N, f) with labels (validation or test samples).
        weight, bias: the head, (n, f) and (n,). lower/upper: the model's feature domain.
        hull_kwargs: passed to :func:`fsl.geometry.hull_distances`.
        hull_projections: also classify the hull projections (accuracy on projections).
        all_distances: every sample-to-class distance, not only the margins (default: up to 100 classes).
    """
    evals.check_finite("evaluation features")
    train.check_finite("training features")
    return geometry_study(train.features, train.labels, evals.features, evals.labels, weight, bias, lower, upper,
                          hull_kwargs=hull_kwargs, hull_projections=hull_projections, device=device,
                          map_rows=sharded, eval_index=evals.index, all_distances=all_distances)


def described(key: str, samples: str, value: str, inf: str, unit: str = FEATURE_L2) -> tuple[MetricDoc, ...]:
    """The keys of :func:`fsl.geometry.summary.describe`: statistics of one ``value`` per sample over
    the ``samples``, its finite values; ``inf``: when the value is infinite."""
    over = f"over the {samples} where it is finite"
    return (MetricDoc(f"{key}/mean", f"mean of the {value}, {over}", unit),
            MetricDoc(f"{key}/median", f"median of the {value}, {over} (`torch.median`: the lower middle value "
                      "for an even count)", unit),
            MetricDoc(f"{key}/min", f"smallest finite {value} of the {samples}", unit),
            MetricDoc(f"{key}/max", f"largest finite {value} of the {samples}", unit),
            MetricDoc(f"{key}/q<pct>", f"the `<pct>`-th percentile of the {value}, {over} (`torch.quantile`, "
                      "linear interpolation)", unit),
            MetricDoc(f"{key}/frac_inf", f"fraction of the {samples} whose {value} is infinite ({inf})",
                      FRACTION))


NO_BOUNDARY = "no decision boundary inside the feature domain"


@register_analysis("geometry")
class GeometryAnalysis(Analysis):
    """Options (``configs/analysis/geometry.yaml``): ``n_train``, ``n_eval`` (subset sizes, None =
    the context's), ``hull`` (kwargs of :func:`fsl.geometry.hull_distances`), ``hull_projections``,
    ``table_rows`` (W&B sample table, 0: none), ``grid_size`` (ambiguity grids), ``table1_samples``,
    ``figures`` (the figures to draw, None: all).

    ``Result.data`` is the :class:`fsl.geometry.GeometryStudy` (with ``train_index``).
    """

    prefix = "analysis"
    metric_docs = (
        MetricDoc("n_eval", "evaluation samples measured (validation split in training, test split in analyze.py)",
                  "count"),
        MetricDoc("n_train", "training features: the points of the hull and the centres of the training balls",
                  "count"),
        MetricDoc("acc", "fraction of the evaluation samples the head classifies correctly", FRACTION),
        MetricDoc("lipschitz", "sigma_max(W), the spectral norm of the head's weight: the Lipschitz constant of the "
                  "logits as a function of the features", "logit L2 per feature-space L2 unit"),
        *described("margin", "evaluation samples", "margin `d_min`", NO_BOUNDARY),
        MetricDoc("margin/certified_frac", "fraction of the evaluation samples whose distances to every boundary "
                  "carry a verified KKT or Farkas certificate", FRACTION),
        *described("train_margin", "training samples", "margin `d_min`", NO_BOUNDARY),
        *described("hull", "evaluation samples", "distance `d_h` to the convex hull of the training features",
                   "never: the hull is not empty, so this is 0"),
        MetricDoc("hull/certified_frac", "fraction of the evaluation samples whose hull distance is certified "
                  "(Frank-Wolfe gap within the relative tolerance)", FRACTION),
        MetricDoc("hull/frac_outside", "fraction of the evaluation samples outside the training hull (`d_h` above the "
                  "solver's inside tolerance, about 1e-6 times the points' RMS radius)", FRACTION),
        MetricDoc("hull/max_relative_gap", "largest relative Frank-Wolfe gap over the evaluation samples "
                  "(`gap / max(d_h^2, (1e-3 R)^2)`, `R` the points' RMS distance to their centroid)",
                  RATIO),
        MetricDoc("hull/support_size_mean", "mean over the evaluation samples of the number of training points with "
                  "positive weight in the hull projection", "count"),
        MetricDoc("hull/support_label_agreement", "fraction of the support points, pooled over all evaluation samples, "
                  "whose label is the sample's label", FRACTION),
        MetricDoc("hull/support_weight_agreement", "mean over the evaluation samples of the convex weight the "
                  "projection puts on support points of the sample's label", FRACTION),
        MetricDoc("hull/projection_acc", "fraction of the hull projections the head classifies as the sample's true "
                  "label (`hull_projections: true`)", FRACTION),
        MetricDoc("hull/projection_pred_unchanged", "fraction of the hull projections the head classifies as it "
                  "classifies the sample (`hull_projections: true`)", FRACTION),
        MetricDoc("frac_hull_lt_margin", "fraction of the evaluation samples closer to the training hull than to any "
                  "decision boundary (`d_h < d_min`)", FRACTION),
        *described("ambiguity", "evaluation samples", "ambiguity `d_min - d_h`", "`d_min` infinite",
                   "feature-space L2 distance, signed"),
        MetricDoc("ambiguity/frac_negative", "fraction of the evaluation samples with `d_min < d_h`",
                  FRACTION),
        MetricDoc("ball/frac_with_other_train", "fraction of the training samples whose ball `B(x)` (radius "
                  "`d_min(x)`, open) holds another training or evaluation sample", FRACTION),
        MetricDoc("ball/frac_with_other_eval", "fraction of the evaluation samples whose ball `B(x)` holds another "
                  "training or evaluation sample", FRACTION),
        MetricDoc("ball/mean_count", "mean over all training and evaluation balls of the number of other samples "
                  "inside", "count"),
        MetricDoc("ball/max_count", "largest number of other samples inside one training or evaluation ball", "count"),
        MetricDoc("ball/union_coverage", "fraction of the evaluation samples strictly inside the union of the training "
                  "balls", FRACTION),
        MetricDoc("closest_class/<class>", "fraction of the evaluation samples whose closest decision boundary is the "
                  "one to class `<class>` (samples without a boundary count in the denominator only)",
                  FRACTION),
    )

    def compute(self, ctx) -> Result:
        train = ctx.train_features(self.n_train)
        evals = ctx.eval_features(self.n_eval)
        head = ctx.head
        study = feature_geometry_study(train, evals, head.weight, head.bias, head.lower, head.upper,
                                       hull_kwargs=dict(self.hull or {}), hull_projections=bool(self.hull_projections),
                                       device=ctx.device, all_distances=getattr(self, "all_distances", None))
        study.extras["train_index"] = train.index
        names = ctx.class_names
        ps = study.per_sample
        cols = dict(ps)
        cols["label_name"] = [names[int(i)] for i in ps["label"]]
        cols["pred_name"] = [names[int(i)] for i in ps["pred"]]
        if study.distances.shape[1] <= 100:  # one column per class (NaN: not solved, margins only)
            for j in range(study.distances.shape[1]):
                cols[f"d_{j}"] = study.distances[:, j]
        res = Result(metrics=dict(study.metrics), per_sample=cols, data=study)
        res.histograms = {f"{k}_hist": ps[k][torch.isfinite(ps[k])] for k in ("margin", "hull", "ambiguity")}
        ids = [int(i) for i in (self.table1_samples or []) if int(i) < len(ps["index"])]
        res.report = self._report(res.metrics, study, names, ids, ctx)
        if ctx.want_figures:
            images = ctx.eval_images(self.n_eval)
            if int(self.table_rows) > 0:
                res.tables["samples"] = self._table(ps, images, names)
            res.figures.update(self._figures(study, images, names, ids))
        return res

    def _table(self, ps, images, names) -> Table:
        order = torch.argsort(ps["ambiguity"])
        n = int(self.table_rows)
        rows = torch.cat([order[: n // 2], order[-(n - n // 2):]]).unique() if n > 0 else order[:0]
        cols = ["index", "image", "label", "pred", "margin", "closest", "hull", "ambiguity", "ball_count", "in_train_union"]
        data = [[int(ps["index"][i]), images[i], names[int(ps["label"][i])], names[int(ps["pred"][i])],
                 float(ps["margin"][i]), int(ps["closest"][i]), float(ps["hull"][i]), float(ps["ambiguity"][i]),
                 int(ps["ball_count"][i]), bool(ps["in_train_union"][i])] for i in rows.tolist()]
        return Table(cols, data)

    def _figures(self, study, images, names, ids) -> dict[str, Figure]:
        from fsl.plots import geometry_figures as gf

        ps = study.per_sample
        draw = {
            "distance_histograms": lambda: gf.distance_histograms(ps["margin"], ps["hull"]),
            "margin_vs_hull": lambda: gf.margin_vs_hull(ps["margin"], ps["hull"], ps["correct"]),
            "closest_class": lambda: gf.closest_class_bars(ps["closest"], ps["pred"], names),
            "most_ambiguous": lambda: gf.ambiguity_grid(images, ps["ambiguity"], ps["label"], ps["pred"], names,
                                                        k=int(self.grid_size), most=True)[0],
            "least_ambiguous": lambda: gf.ambiguity_grid(images, ps["ambiguity"], ps["label"], ps["pred"], names,
                                                         k=int(self.grid_size), most=False)[0],
            "table1_margins": lambda: gf.margin_table_figure(study.distances[ids], names,
                                                             [int(ps["index"][i]) for i in ids], ps["pred"][ids]),
        }
        if not ids:
            draw.pop("table1_margins")
        wanted = list(draw) if self.figures is None else [str(f) for f in self.figures]
        unknown = sorted(set(wanted) - set(draw) - {"table1_margins"})
        if unknown:
            raise ValueError(f"analysis.geometry.figures: unknown figure(s) {unknown}; valid: {sorted(draw)}")
        return {key: Figure(key, draw[key]()) for key in draw if key in wanted}

    @staticmethod
    def _report(m, study, names, ids, ctx) -> list[str]:
        lines = ["## Feature space", "",
                 f"Evaluation samples: {int(m['n_eval'])} ({ctx.eval_split} split), training features: "
                 f"{int(m['n_train'])}; model accuracy on them: {m['acc']:.4f}.", "",
                 f"- margin d_min: median {fmt(m['margin/median'])}, mean {fmt(m['margin/mean'])}; "
                 f"hull distance d_h: median {fmt(m['hull/median'])}",
                 f"- certified: margins {fmt(m['margin/certified_frac'])}, hull {fmt(m['hull/certified_frac'])}",
                 f"- accuracy on hull projections (feature space): {fmt(m.get('hull/projection_acc'))} "
                 f"(model: {fmt(m['acc'])})",
                 f"- Lipschitz constant of the head (sigma_max(W)): {fmt(m['lipschitz'])}"]
        if ids:
            ps = study.per_sample
            lines += ["", "### Table 1: distance to each class's boundary", "",
                      "| sample | pred | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
            for i in ids:
                row = []
                for j in range(len(names)):
                    d = float(study.distances[i, j])
                    row.append("-" if j == int(ps["pred"][i]) else ("inf" if math.isinf(d) else
                               ("n/a" if math.isnan(d) else f"{d:.3f}")))
                lines.append(f"| #{int(ps['index'][i])} | {names[int(ps['pred'][i])]} | " + " | ".join(row) + " |")
        return lines
