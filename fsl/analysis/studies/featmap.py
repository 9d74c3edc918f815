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
from fsl.analysis.report import fmt
from fsl.errors import ConfigError


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
