"""``report.md``: number formatting shared by the analyses' report sections, the seed paper's
numbers for side-by-side tables, and the report of a run (every analysis' section with its figures)."""
from __future__ import annotations

import math
from pathlib import Path


def fmt(v, spec: str | None = None) -> str:
    """``n/a`` for None/NaN/inf, thousands for |v| >= 100, else 4 significant digits (or ``spec``)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v) and math.isnan(v)):
        return "n/a"
    if spec is not None:
        return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"
    if isinstance(v, float) and math.isfinite(v) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


#: the seed paper's CIFAR-10 / ResNet-20 numbers (Yousefzadeh, arXiv 2202.04052, section 7.2), keyed
#: like fsl's metrics
PAPER_CIFAR10 = {
    "analysis/hull/frac_outside": (1.0, "all testing samples lie outside the training hull"),
    "analysis/frac_hull_lt_margin": (0.783, "hull closer than the closest boundary (78.3%)"),
    "analysis/ball/frac_with_other_train": (0.499, "train balls holding another sample (49.9%)"),
    "analysis/ball/frac_with_other_eval": (0.47, "test balls holding another sample (47%)"),
    "analysis/ball/mean_count": (297.0, "mean samples inside a ball"),
    "analysis/ball/max_count": (4791.0, "largest count inside one ball"),
    "analysis/ball/union_coverage": (0.68, "test samples inside the union of train balls (>68%)"),
    "analysis/hull/support_label_agreement": (0.78, "support images with the query's label, feature space"),
    "pixel/hull/support_label_agreement": (0.27, "support images with the query's label, pixel space"),
    "pixel/hull/projection_acc": (0.33, "accuracy on hull projections in pixel space (from >90%)"),
    "adv/deepfool/frac_margin_lt_hull": (1.0, "adversarial closer to a boundary than to the hull (100%)"),
}


def render_report(title: str, source: str, ctx, metrics: dict, done) -> str:
    """``report.md``: ``# <title>``, the ``source`` line (which checkpoint or model), the paper
    comparison, then every analysis' section with its figures; ``done`` holds ``(analysis, result,
    {figure key: file})`` in the order they ran."""
    lines = [f"# {title}", "", f"{source}  ", f"Analyses: {', '.join(a.name for a, _, _ in done)}."]
    if any(key in metrics for key in PAPER_CIFAR10):  # only when an analysis measured one of them
        lines += ["", "## Paper (ResNet-20, CIFAR-10) vs measured", "",
                  "| quantity | paper | measured |", "|---|---|---|"]
        for key, (paper, what) in PAPER_CIFAR10.items():
            lines.append(f"| {what} (`{key}`) | {fmt(paper)} | {fmt(metrics.get(key))} |")
    sections = set()
    for a, res, files in done:
        section = a.section
        lines.append("")
        if section and section not in sections:
            sections.add(section)
            lines += a.section_intro(ctx)
        lines += res.report
        if files:
            lines += ["", *[f"![{res.figures[k].file}](figures/{Path(p).name})" for k, p in files.items()]]
    lines.append("")
    return "\n".join(lines)
