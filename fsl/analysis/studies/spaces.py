"""Singular values, numerical rank and condition number of every Linear/Conv2d layer (kernels as
out x in*k*k), the signal-space view of Pattichis & Pattichis, SSIAI 2024 (fsl.spaces.layer_spectra)."""
from __future__ import annotations

import math

from fsl.analysis.base import Analysis, Result, register_analysis
from fsl.analysis.metric_docs import RATIO, MetricDoc
from fsl.analysis.report import fmt


@register_analysis("spaces")
class SpacesAnalysis(Analysis):
    """``spaces/<layer>/{sigma_max,sigma_min,rank,condition}``, ``spaces/n_layers``,
    ``spaces/max_condition``; W&B histograms of the spectra (the figure of all spectra: ``signal``)."""

    prefix = "spaces"
    metric_docs = (
        MetricDoc("<module>/sigma_max", "largest singular value of the module's weight (a Conv2d kernel as the "
                  "out x in*k*k matrix; 0 for an empty one)", "singular value of the weight"),
        MetricDoc("<module>/sigma_min", "smallest of its min(out, in*k*k) singular values (0 for an empty weight)",
                  "singular value of the weight"),
        MetricDoc("<module>/rank", "numerical rank of the weight: singular values above `sigma_1 max(m, n) eps` "
                  "(NumPy's `matrix_rank` rule, `eps` of the stored dtype)", "count"),
        MetricDoc("<module>/condition", "`sigma_1 / sigma_r`, `r` the numerical rank (NaN for rank 0)",
                  RATIO),
        MetricDoc("n_layers", "Linear and Conv2d modules of the model", "count"),
        MetricDoc("max_condition", "largest finite `condition` over those modules (NaN if none)",
                  RATIO),
    )

    def compute(self, ctx) -> Result:
        from fsl.spaces import layer_spectra

        spectra = layer_spectra(ctx.model)
        res = Result()
        for sp in spectra:
            s = sp.singular_values
            res.metrics[f"{sp.name}/sigma_max"] = float(s[0]) if s.numel() else 0.0
            res.metrics[f"{sp.name}/sigma_min"] = float(s[-1]) if s.numel() else 0.0
            res.metrics[f"{sp.name}/rank"] = float(sp.rank)
            res.metrics[f"{sp.name}/condition"] = sp.condition if math.isfinite(sp.condition) else float("nan")
            if s.numel():
                res.histograms[f"{sp.name}/singular_values"] = s.double().cpu()
        conds = [sp.condition for sp in spectra if math.isfinite(sp.condition)]
        res.metrics["n_layers"] = float(len(spectra))
        res.metrics["max_condition"] = float(max(conds)) if conds else float("nan")
        res.report = ["## Layer spectra", "", "| layer | kind | shape | sigma_max | sigma_min | rank | condition |",
                      "|---|---|---|---|---|---|---|"]
        for sp in spectra:
            m = res.metrics
            res.report.append(f"| {sp.name} | {sp.kind} | {tuple(sp.shape)} | {fmt(m[f'{sp.name}/sigma_max'])} | "
                              f"{fmt(m[f'{sp.name}/sigma_min'])} | {int(sp.rank)} | {fmt(m[f'{sp.name}/condition'])} |")
        return res
