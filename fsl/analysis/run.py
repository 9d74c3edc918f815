"""Running a list of analyses in one context, and turning a result into logged values. Used by
both drivers, so that keys, figures and report sections are the same per epoch and on a checkpoint."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from fsl.analysis.base import Analysis, Result
from fsl.analysis.context import Context


def run_analyses(analyses: Iterable[Analysis], ctx: Context,
                 on_result: Callable[[Analysis, Result], None] | None = None) -> dict[str, Result]:
    """Run ``analyses`` in order in ``ctx`` (each sees the earlier results in ``ctx.results``);
    ``on_result(analysis, result)`` is called after each one (log it, save its figures)."""
    for a in analyses:
        res = a.run(ctx)
        ctx.results[a.name] = res
        if on_result is not None:
            on_result(a, res)
    return ctx.results


def flat_metrics(a: Analysis, res: Result) -> dict[str, float]:
    """``{<prefix>/<key>: value}`` and the analysis' wall time under ``a.seconds_key``."""
    out = {f"{a.prefix}/{k}": float(v) for k, v in res.metrics.items()}
    out[a.seconds_key] = float(res.seconds)
    return out


def wandb_media(a: Analysis, res: Result, figure_files: dict[str, Any] | None = None) -> dict[str, Any]:
    """W&B objects of a result: figures (``wandb.Image``; from the saved files when
    ``figure_files`` maps figure keys to paths), histograms and tables, keyed ``<prefix>/<key>``."""
    import torch
    import wandb

    media: dict[str, Any] = {}
    for key, fig in res.figures.items():
        src = (figure_files or {}).get(key)
        media[f"{a.prefix}/{key}"] = wandb.Image(str(src) if src is not None else fig.fig)
    for key, values in res.histograms.items():
        v = torch.as_tensor(values).double().cpu()
        if v.numel():
            media[f"{a.prefix}/{key}"] = wandb.Histogram(v.numpy())
    for key, table in res.tables.items():
        t = wandb.Table(columns=list(table.columns))
        for row in table.rows:
            t.add_data(*[wandb.Image(c.permute(1, 2, 0).squeeze(-1).numpy()) if isinstance(c, torch.Tensor)
                         and c.dim() == 3 else c for c in row])
        media[f"{a.prefix}/{key}"] = t
    return media


def close_figures(res: Result) -> None:
    import matplotlib.pyplot as plt

    for fig in res.figures.values():
        plt.close(fig.fig)
