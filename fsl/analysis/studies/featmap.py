"""FeatMap (Krey, Neukirch, Strodthoff, arXiv 2605.11203) on the context's model: maps from the
feature maps of original images to those of manipulated ones, for every layer x manipulation x
map, fitted on training images and evaluated on held-out ones (``fsl.featmap``; docs/featmap.md).
Opt-in: ``analysis.featmap.enabled=true``. In training (``every_n_epochs > 0``) only the cheap
closed-form shared linear map of a few manipulations is fitted, to follow how linear the feature
space becomes."""
from __future__ import annotations

import math
from collections import defaultdict

import torch

from fsl.analysis.base import Analysis, Figure, Result, Table, analysis_defaults, register_analysis
from fsl.analysis.metric_docs import FRACTION, RATIO, MetricDoc
from fsl.analysis.report import fmt
from fsl.errors import ConfigError

#: the metrics of one layer x manipulation x map (``fsl.featmap.pipeline.METRICS``): meaning, unit
CLOSED = "closed-form maps (`linear`, `procrustes`, `global_linear`)"
METRIC_DOCS = {
    "cosine": ("median over the held-out images of the median over positions of the cosine (over channels) between "
               "the mapped and the true manipulated features", "cosine in [-1, 1]"),
    "cosine_masked": ("the same over the feature cells the manipulation touched (masks, occlusion), median over the "
                      "images that have such cells", "cosine in [-1, 1]"),
    "rel_error": ("median over the held-out images of `‖mapped - true‖ / ‖true‖` (whole feature map)",
                  RATIO),
    "top1_manip": ("fraction of the held-out images whose mapped features, through the rest of the network "
                   "(`model.forward_from`), are classified as the manipulated image is", FRACTION),
    "top1_orig": ("the same, classified as the original image is", FRACTION),
    "js": ("mean over the held-out images of the Jensen-Shannon divergence between the class probabilities of the "
           "mapped features and of the manipulated image", "nats, in [0, ln 2]"),
    "entropy": ("mean entropy of the class probabilities of the mapped features", "nats"),
    "entropy_true": ("mean entropy of the class probabilities of the manipulated images", "nats"),
    "mse_decoded": ("with a FeatInv decoder for the layer: mean over `n_decode` held-out images of the per-pixel "
                    "squared difference between the decoded mapped and the decoded true manipulated features",
                    "squared pixel value (images in [0, 1])"),
    "ssim_decoded": ("with a FeatInv decoder for the layer: mean SSIM (data range 1) of the decoded mapped against the "
                     "decoded true manipulated features", "SSIM in [-1, 1]"),
    "erank": (f"{CLOSED}: effective rank `exp(-sum p_i log p_i)`, `p_i = s_i^2 / sum s^2`, of the singular values "
              "`s` of `W` (identity: C, rank one: 1)", "effective number of directions"),
    "rank": (f"{CLOSED}: singular values of `W` above `rank_rtol * s_max`", "count"),
    "spectral_norm": (f"{CLOSED}: the largest singular value of `W`", "gain (feature norm out / in)"),
    "frobenius_norm": (f"{CLOSED}: `sqrt(sum s^2)` of `W`", "gain (feature norm out / in)"),
    "energy_top<k>": (f"{CLOSED}: share of `sum s^2` in the `<k>` largest singular values of `W`",
                      FRACTION),
    "near_isometry": (f"{CLOSED}: fraction of the singular values `s_i` of `W` with `s_i / mean(s)` within 0.1 of 1 "
                      "(1 for a scaled orthogonal map)", FRACTION),
    "wx_share": (f"{CLOSED}: median over the held-out images of `med_p ‖W x_p‖ / med_p ‖W x_p + b‖` (medians "
                 "over positions)", RATIO),
    "bias_share": (f"{CLOSED}: median over the held-out images of `‖b‖ / med_p ‖W x_p + b‖`",
                   RATIO),
    "cos_wx_full": (f"{CLOSED}: median over the held-out images of `med_p cos(W x_p, W x_p + b)`",
                    "cosine in [-1, 1]"),
    "relative_bias_shift": (f"{CLOSED}: median over the held-out images of "
                            "`(med_p ‖W x_p + b‖ - med_p ‖W x_p‖) / med_p ‖W x_p‖`",
                            RATIO),
    "epochs": ("trained maps (`mlp`, `cnn`, `transformer`, `transformer_nopos`): epochs trained", "count"),
    "stopped_early": ("trained maps: 1 when early stopping (or `max_seconds`) ended the training before `max_epochs`, "
                      "else 0", "flag, 0 or 1"),
    "seconds": ("wall time of fitting and evaluating this map (the row)", "seconds"),
}


@register_analysis("featmap")
class FeatMapAnalysis(Analysis):
    """Options (``configs/analysis/featmap.yaml``): ``layers`` (keys of ``model.feature_maps``; null:
    all), ``manipulations`` and their ``params``, ``mappings``, ``permute_grid``, ``n_train`` /
    ``n_eval`` (fixed seeded subsets, stratified by class: fit on training, evaluate on held-out
    images), ``ridge``, ``global_ridge``, ``rank_rtol``, ``sgd`` (trainer of the MLP / CNN /
    transformers), ``nets`` (their sizes), ``checkpoints`` (FeatInv decoders, any layers: decoded
    mapped vs decoded true features on ``n_decode`` images, a seeded draw stratified by class),
    ``figure_mapping`` / ``n_figure`` (image rows), ``heatmaps`` (metrics drawn), ``batch_size``,
    ``seed``, and ``epoch`` (the per-epoch subset).

    Metrics ``featmap/<layer>/<manipulation>/<mapping>/<metric>`` (names: ``fsl.featmap.pipeline.METRICS``),
    the table ``featmap/table`` (one row per layer x manipulation x map), one heat map per metric of
    ``heatmaps`` (``featmap/heatmap/<metric>``: manipulation x layer, a panel per map) and, for
    layers with a decoder, ``featmap/images/<layer>``: original | manipulated | decoded true |
    decoded mapped."""

    prefix = "featmap"
    sizes = Analysis.sizes + ("n_figure",)
    metric_docs = (
        MetricDoc("n_train", "training images the maps are fitted on (not logged by the per-epoch run in training, "
                  "which fits `linear` only and logs its `epoch.metrics`)", "count"),
        MetricDoc("n_eval", "held-out evaluation images the maps are scored on", "count"),
        *(MetricDoc(f"<layer>/<manipulation>/<map>/{k}", what, unit) for k, (what, unit) in METRIC_DOCS.items()),
    )
    minimums = {**Analysis.minimums, "batch_size": 1}

    def __init__(self, **options):
        super().__init__(**options)
        # names and nested options are checked when the analysis is built, before any model or data is loaded
        from fsl.featmap.manipulations import manipulation
        from fsl.featmap.pipeline import METRICS, check_mapping

        for key in ("sgd", "nets", "epoch"):
            self._nested(key)
        for m in self.mappings or []:
            check_mapping(m)
        for m in [*(self.manipulations or []), *(self.params or {}), *self._nested("epoch")["manipulations"]]:
            manipulation(m)
        for key, names in (("heatmaps", self.heatmaps), ("epoch.metrics", self._nested("epoch")["metrics"])):
            for m in names or []:
                if m not in METRICS:
                    from fsl.registry import closest

                    raise ConfigError(f"analysis.featmap.{key}: unknown metric {m!r}" + closest(m, METRICS))

    def compute(self, ctx) -> Result:
        from fsl.featmap.pipeline import METRICS, featmap_study

        if ctx.epoch is not None:
            return self._per_epoch(ctx)
        opts = self._common()
        decoders = self._decoders(ctx)
        res = featmap_study(ctx.model, ctx.images("train", self.n_train), ctx.eval_images(self.n_eval),
                            layers=self.layers, manipulations=list(self.manipulations), mappings=list(self.mappings),
                            sgd=self._nested("sgd"), nets=self._nested("nets"), decoders=decoders,
                            n_decode=int(self.n_decode), figure_mapping=str(self.figure_mapping),
                            n_figure=int(self.n_figure), progress=ctx.progress, device=ctx.device,
                            train_labels=ctx.labels("train", self.n_train), eval_labels=ctx.labels(ctx.eval_split,
                                                                                                  self.n_eval), **opts)
        out = Result(metrics=self._metrics(res.rows))
        out.metrics["n_train"] = float(len(ctx.subset("train", self.n_train)))
        out.metrics["n_eval"] = float(len(ctx.subset(ctx.eval_split, self.n_eval)))
        present = [m for m in METRICS if any(m in r for r in res.rows)]
        out.tables["table"] = Table(["layer", "manipulation", "mapping", *present],
                                    [[r["layer"], r["manipulation"], r["mapping"],
                                      *[r.get(m, float("nan")) for m in present]] for r in res.rows])
        if ctx.want_figures:
            self._heatmaps(out, res)
            self._image_rows(out, res)
        out.report = self._report(res, decoders, out.metrics)
        out.data = res
        return out

    # -- options --------------------------------------------------------------------------------------
    def _nested(self, key: str) -> dict:
        """The nested option ``key`` over its yaml defaults (a partial override keeps the rest);
        ConfigError for a key the yaml does not have."""
        from fsl.featmap.pipeline import check_options

        return check_options(f"analysis.featmap.{key}", getattr(self, key), analysis_defaults(self.name).get(key) or {})

    def _common(self) -> dict:
        return {"params": dict(self.params or {}), "permute_grid": bool(self.permute_grid), "ridge": float(self.ridge),
                "global_ridge": float(self.global_ridge), "rank_rtol": float(self.rank_rtol), "seed": int(self.seed),
                "batch_size": int(self.batch_size)}

    def _decoders(self, ctx) -> dict:
        """``{layer: decode}`` from ``checkpoints`` (conv preferred over flow for a layer)."""
        if not self.checkpoints:
            return {}
        from fsl.analysis.studies.featinv import load_decoders

        by_layer: dict = {}
        for m in load_decoders(list(self.checkpoints), ctx.model, ctx.device):
            if m.layer not in by_layer or m.kind == "conv":
                by_layer[m.layer] = m
        seed = int(self.seed)
        return {layer: (m if m.kind == "conv" else (lambda z, m=m: m(z, seed=seed))) for layer, m in by_layer.items()}

    # -- training -------------------------------------------------------------------------------------
    def _per_epoch(self, ctx) -> Result:
        """Closed-form shared linear maps only, on the ``epoch`` subset: ``epoch.metrics`` per layer
        and manipulation (``featmap/<layer>/<manipulation>/linear/<metric>``)."""
        from fsl.featmap.pipeline import featmap_study

        ep = self._nested("epoch")
        res = featmap_study(ctx.model, ctx.images("train", ep["n_train"]), ctx.eval_images(ep["n_eval"]),
                            layers=ep["layers"], manipulations=list(ep["manipulations"]), mappings=["linear"],
                            device=ctx.device, progress=False, train_labels=ctx.labels("train", ep["n_train"]),
                            eval_labels=ctx.labels(ctx.eval_split, ep["n_eval"]), **self._common())
        keep = set(ep["metrics"])
        return Result(metrics={k: v for k, v in self._metrics(res.rows).items() if k.rsplit("/", 1)[1] in keep})

    # -- outputs --------------------------------------------------------------------------------------
    @staticmethod
    def _metrics(rows) -> dict[str, float]:
        skip = {"layer", "manipulation", "mapping"}
        return {f"{r['layer']}/{r['manipulation']}/{r['mapping']}/{k}": float(v) for r in rows for k, v in r.items()
                if k not in skip}

    def _heatmaps(self, out: Result, res) -> None:
        import numpy as np

        from fsl.plots.featmap_figures import featmap_heatmap

        grid = defaultdict(lambda: np.full((len(res.manipulations), len(res.layers)), np.nan))
        for r in res.rows:
            i, j = res.manipulations.index(r["manipulation"]), res.layers.index(r["layer"])
            for k, v in r.items():
                if isinstance(v, float):
                    grid[(k, r["mapping"])][i, j] = v
        mappings = list(dict.fromkeys(r["mapping"] for r in res.rows))
        for metric in self.heatmaps or []:
            panels = {m: grid[(metric, m)] for m in mappings
                      if (metric, m) in grid and np.isfinite(grid[(metric, m)]).any()}
            if panels:
                fig = featmap_heatmap(panels, res.manipulations, res.layers, metric)
                out.figures[f"heatmap/{metric}"] = Figure(f"featmap_{metric}", fig)

    def _image_rows(self, out: Result, res) -> None:
        from fsl.plots.featinv_figures import featinv_grid

        for layer in res.layers:
            ex = [(name, res.examples[(layer, name)]) for name in res.manipulations if (layer, name) in res.examples]
            if not ex:
                continue
            cols = {"original": torch.cat([e["original"] for _, e in ex]),
                    "manipulated": torch.cat([e["manipulated"] for _, e in ex]),
                    "decoded true": torch.cat([e["decoded_true"] for _, e in ex]),
                    f"decoded mapped ({self.figure_mapping})": torch.cat([e["decoded_mapped"] for _, e in ex])}
            labels = [name for name, e in ex for _ in range(len(e["original"]))]
            fig = featinv_grid(cols, row_labels=labels, title=f"FeatMap, layer {layer}")
            out.figures[f"images/{layer}"] = Figure(f"featmap_images_{layer.replace('.', '_')}", fig)

    def _report(self, res, decoders, metrics) -> list[str]:
        sgd = self._nested("sgd")
        lines = ["## FeatMap: maps between the feature maps of original and manipulated images", "",
                 f"Fitted on {fmt(metrics['n_train'])} training images, evaluated on {fmt(metrics['n_eval'])} held-out "
                 f"images; layers {', '.join(res.layers)}; {len(res.manipulations)} manipulations. cosine = median "
                 f"over images of the median-over-positions cosine of mapped vs true manipulated features; top-1 = "
                 f"the mapped features, through the rest of the network, classified as the manipulated image is; JS = "
                 f"Jensen-Shannon divergence of the class probabilities (nats). Trained maps: AdamW lr "
                 f"{sgd.get('lr')}, at most {sgd.get('max_epochs')} epochs on {sgd.get('n_train') or 'all'} maps "
                 f"(see docs/featmap.md for a study-sized budget)."]
        if res.skipped:
            lines += ["", "Skipped: " + "; ".join(res.skipped) + "."]
        if not decoders:
            lines += ["", "No FeatInv decoders (`analysis.featmap.checkpoints=[...]`): no decoded SSIM/MSE, no image rows."]
        lines += ["", "| layer | map | cosine (median over manipulations) | worst manipulation | top-1 vs manipulated "
                  "| top-1 vs original | JS | erank |", "|---|---|---|---|---|---|---|---|"]
        by = defaultdict(list)
        for r in res.rows:
            by[(r["layer"], r["mapping"])].append(r)
        for (layer, mapping), rows in by.items():
            cos = torch.tensor([r["cosine"] for r in rows], dtype=torch.float64)
            worst = rows[int(cos.argmin())]
            med = lambda k: float(torch.tensor([r.get(k, math.nan) for r in rows], dtype=torch.float64).nanmedian())  # noqa: E731
            lines.append(f"| {layer} | {mapping} | {fmt(float(cos.median()))} | {worst['manipulation']} "
                         f"({fmt(worst['cosine'])}) | {fmt(med('top1_manip'))} | {fmt(med('top1_orig'))} | "
                         f"{fmt(med('js'))} | {fmt(med('erank'))} |")
        return lines
