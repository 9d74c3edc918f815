"""FeatInv (Neukirch, Vielhaben, Strodthoff, arXiv 2505.21032) on the context's model: trained
decoders from one layer back to images (deterministic conv decoder and probabilistic flow
decoder, ``python train.py experiment=featinv_fashion ...``) scored on the evaluation images and,
on the same ``n_compare`` images (stratified by class) and the same layer, compared with fsl's
optimisation inversion to the same feature point (Yousefzadeh, arXiv 2202.04052; docs/inversion.md)."""
from __future__ import annotations

from collections import defaultdict

import torch

from fsl.analysis.base import Analysis, Figure, Result, Table, register_analysis
from fsl.analysis.metric_docs import FRACTION, RATIO, MetricDoc
from fsl.analysis.report import fmt
from fsl.errors import FslError

KIND_NAMES = {"conv": "deterministic", "flow": "probabilistic", "inversion": "optimisation inversion"}
COLUMNS = ("ssim", "psnr", "cosine", "top1_pred", "top1_label", "residual_median", "diversity", "success_rate",
           "seconds_per_image")


#: the scores of one way back to the image (``MethodResult.summary``): name, meaning, unit
SCORES = (
    ("ssim", "mean SSIM of the reconstructions against the images (torchmetrics, data range 1)", "SSIM in [-1, 1]"),
    ("psnr", "mean PSNR of the reconstructions against the images (data range 1)", "dB"),
    ("cosine", "median over the images of the re-encoded cosine (the reconstruction's `<layer>` features vs the "
               "image's: median over positions of the cosine over channels)", "cosine in [-1, 1]"),
    ("top1_pred", "fraction of the reconstructions the classifier assigns the class it assigns the image",
     FRACTION),
    ("top1_label", "fraction of the reconstructions the classifier assigns the image's true label",
     FRACTION),
    ("residual_median", "median over the images of the relative feature residual at the layer, "
                        "`‖N_l(x_hat) - N_l(x)‖ / ‖N_l(x)‖`", RATIO),
    ("seconds_per_image", "wall time of producing the reconstructions (decoders: encoding and decoding; inversion: "
                          "the solver), divided by their number", "seconds"),
)
DIVERSITY = ("mean over the first `n_compare` images of the per-pixel standard deviation over `samples` "
             "flow samples (mean over pixels)", "pixel value (images in [0, 1])")


def load_decoders(paths, model, device="cpu") -> list:
    """The FeatInv modules of ``paths``, each checked to decode exactly ``model`` (same weights)."""
    from fsl.featinv.module import load_featinv

    ref = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = []
    for p in paths:
        m = load_featinv(p, map_location=device)
        sd = {k: v.cpu() for k, v in m.net.state_dict().items()}
        if sd.keys() != ref.keys() or any(not torch.equal(sd[k], ref[k]) for k in ref):
            raise FslError(f"FeatInv checkpoint {p} decodes another classifier ({m.hparams.model['name']!r} "
                           f"with different weights) than the one analysed; train its decoder with "
                           f"featinv.classifier=<this checkpoint>")
        out.append(m)
    return out


@register_analysis("featinv")
class FeatInvAnalysis(Analysis):
    """Options: ``checkpoints`` (FeatInv .ckpt files, any layers and both decoders; none: nothing
    to do), ``n_eval`` (evaluation images scored), ``n_compare`` (the first of them, also inverted
    by optimisation and sampled ``samples`` times for the diversity; the context's subsets are
    ordered so that every prefix is stratified by class), ``inversion`` (``enabled``,
    ``reference``: mean | black | white, ``tol``, ``max_iter``, ``chunk``), ``n_figure`` (rows per
    figure), ``batch_size``, ``seed``.

    Metrics ``featinv/<layer>/<conv|flow>/<ssim|psnr|cosine|top1_pred|top1_label|residual_median|
    seconds_per_image|diversity>`` on ``n_eval`` images and
    ``featinv/compare/<layer>/<conv|flow|inversion>/...`` on the ``n_compare`` common ones; one
    figure per layer (``featinv/<layer>/grid``: original | deterministic | samples | std |
    inversion) and the table ``featinv/table``."""

    prefix = "featinv"
    sizes = Analysis.sizes + ("n_figure",)
    metric_docs = (
        MetricDoc("n_eval", "evaluation images the decoders reconstruct", "count"),
        MetricDoc("n_compare", "the first of them, also inverted by optimisation (stratified by class)", "count"),
        *(MetricDoc(f"<layer>/<decoder>/{k}", f"{what}, on the `n_eval` images", unit) for k, what, unit in SCORES),
        MetricDoc("<layer>/flow/diversity", *DIVERSITY),
        *(MetricDoc(f"compare/<layer>/<method>/{k}", f"{what}, on the `n_compare` images", unit)
          for k, what, unit in SCORES),
        MetricDoc("compare/<layer>/flow/diversity", *DIVERSITY),
        MetricDoc("compare/<layer>/inversion/success_rate", "fraction of the optimisation inversions whose relative "
                  "feature residual is within the tolerance `inversion.tol` (measured on the returned images)",
                  FRACTION),
    )
    minimums = {**Analysis.minimums, "batch_size": 1}

    def compute(self, ctx) -> Result:
        res = Result()
        paths = list(self.checkpoints or [])
        res.report = ["## FeatInv: feature maps back to images", ""]
        if not paths:
            res.report.append("No FeatInv decoders given (`analysis.featinv.checkpoints=[<featinv .ckpt>, ...]`; "
                              "train them with `python train.py experiment=featinv_fashion featinv.classifier=...`).")
            return res
        from tqdm.auto import tqdm

        from fsl.featinv.evaluate import evaluate_decoder, evaluate_inversion

        decoders = load_decoders(paths, ctx.model, ctx.device)
        images, labels = ctx.eval_images(self.n_eval), ctx.labels(ctx.eval_split, self.n_eval)
        n_cmp = min(int(self.n_compare), len(images))
        by_layer = defaultdict(dict)
        for m in decoders:
            if m.kind in by_layer[m.layer]:
                raise FslError(f"two {m.kind} decoders for layer {m.layer!r} in analysis.featinv.checkpoints")
            by_layer[m.layer][m.kind] = m
        inv = dict(self.inversion or {})
        total = sum(len(images) for _ in decoders) + (n_cmp * len(by_layer) if inv.get("enabled", True) else 0)
        bar = tqdm(total=total, desc="featinv", disable=not ctx.progress, leave=False)
        rows, out = [], {}
        for layer, kinds in by_layer.items():
            out[layer] = {}
            for kind in ("conv", "flow"):
                if kind in kinds:
                    out[layer][kind] = evaluate_decoder(kinds[kind], images, labels, batch_size=int(self.batch_size),
                                                        n_diverse=n_cmp, samples=int(self.samples),
                                                        seed=int(self.seed), progress=bar)
            if inv.get("enabled", True) and n_cmp:
                reference = self._reference(ctx, images, str(inv.get("reference", "mean")))
                out[layer]["inversion"] = evaluate_inversion(
                    ctx.model, layer, images[:n_cmp], labels[:n_cmp], reference, tol=float(inv.get("tol", 1e-3)),
                    max_iter=int(inv.get("max_iter", 15)), chunk=int(inv.get("chunk", 50)), seed=int(self.seed),
                    progress=bar)
            for kind, r in out[layer].items():
                if kind != "inversion":
                    for k, v in r.summary().items():
                        res.metrics[f"{layer}/{kind}/{k}"] = v
                for k, v in r.summary(n_cmp).items():
                    res.metrics[f"compare/{layer}/{kind}/{k}"] = v
                rows.append([layer, kind] + [res.metrics.get(f"compare/{layer}/{kind}/{c}", float("nan"))
                                             for c in COLUMNS])
            if ctx.want_figures:
                res.figures[f"{layer}/grid"] = Figure(f"featinv_{layer}", self._figure(ctx, layer, out[layer],
                                                                                       images, labels))
        bar.close()
        res.metrics["n_eval"], res.metrics["n_compare"] = float(len(images)), float(n_cmp)
        res.tables["table"] = Table(["layer", "decoder", *COLUMNS], rows)
        res.data = out
        res.report += self._report(rows, len(images), n_cmp, inv)
        return res

    @staticmethod
    def _reference(ctx, images, kind: str) -> torch.Tensor:
        if kind == "mean":
            return ctx.images("train").mean(0).clamp(0, 1)
        if kind == "black":
            return torch.zeros_like(images[0])
        if kind == "white":
            return torch.ones_like(images[0])
        raise FslError(f"analysis.featinv.inversion.reference={kind!r}: use mean, black or white")

    def _figure(self, ctx, layer, methods, images, labels):
        from fsl.plots.featinv_figures import featinv_grid

        n = int(self.n_figure)
        cols = {"original": images[:n]}
        std = None
        if "conv" in methods:
            cols["deterministic"] = methods["conv"].images[:n]
        flow = methods.get("flow")
        if flow is not None and flow.samples is not None:
            for k in range(flow.samples.shape[1]):
                cols[f"sample {k + 1}"] = flow.samples[:n, k]
            std = flow.std[:n]
        if "inversion" in methods:
            cols["inversion"] = methods["inversion"].images[:n]
        names = ctx.class_names
        return featinv_grid(cols, std=std, std_after=f"sample {flow.samples.shape[1]}" if std is not None else None,
                            row_labels=[names[int(y)] for y in labels[:n]], title=f"FeatInv, layer {layer}")

    @staticmethod
    def _report(rows, n_eval, n_cmp, inv) -> list[str]:
        lines = [f"On the same {n_cmp} evaluation images per layer (a seeded draw, stratified by class; decoders "
                 f"also on all {n_eval}: "
                 f"`featinv/<layer>/<decoder>/*`). residual = median of ||N_l(x_hat) - N_l(x)|| / ||N_l(x)|| at "
                 f"the layer; cosine = median re-encoded cosine (median over positions); diversity = mean "
                 f"per-pixel std over the samples; inversion: point mode from the "
                 f"{inv.get('reference', 'mean')} image, tol {inv.get('tol', 1e-3)}, {inv.get('max_iter', 15)} "
                 f"outer iterations.", "",
                 "| layer | decoder | SSIM | PSNR | cosine | top-1 (pred) | top-1 (label) | residual | diversity | "
                 "success | s/image |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]} | {KIND_NAMES[r[1]]} | " + " | ".join(fmt(v) for v in r[2:]) + " |")
        return lines
