"""Signal spaces (Pattichis & Pattichis, SSIAI 2024, Figures 1-2): singular-value spectra of every
Linear/Conv2d layer; first-layer signal images and class residual images when the first layer is
linear. Per-layer condition numbers and ranks: the ``spaces`` analysis."""
from __future__ import annotations

import math

import torch

from fsl.analysis.base import register_analysis
from fsl.analysis.metric_docs import FRACTION, RATIO, MetricDoc
from fsl.analysis.studies.pixels.base import PixelStudy, train_rows


def spectra_figure(spectra, title: str = "singular values of every layer (sigma_i / sigma_1)"):
    """Normalised singular-value spectra of every layer (one line each), log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    cmap = plt.get_cmap("viridis")
    n = max(len(spectra), 1)
    for k, sp in enumerate(spectra):
        s = sp.singular_values.double().cpu()
        if s.numel() == 0 or float(s[0]) == 0.0:
            continue
        ax.semilogy(torch.arange(1, s.numel() + 1).numpy(), (s / s[0]).clamp_min(1e-18).numpy(), lw=1,
                    color=cmap(k / max(n - 1, 1)), label=f"{sp.name} ({sp.kind}, cond {sp.condition:.3g})")
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1")
    ax.set_title(title, fontsize=9)
    if len(spectra) <= 12:
        ax.legend(fontsize=6)
    else:
        ax.text(0.99, 0.98, f"{len(spectra)} layers; colour = depth (dark = first)", transform=ax.transAxes,
                ha="right", va="top", fontsize=7)
    fig.tight_layout()
    return fig



@register_analysis("signal")
class SignalStudy(PixelStudy):
    """Singular-value spectra of every layer (figure); first-layer signal images and class residual
    images when the first layer is linear (Pattichis & Pattichis, SSIAI 2024 Figs. 1-2). Per-layer
    numbers: ``spaces``."""

    sizes = PixelStudy.sizes + ("n_signal",)
    metric_docs = (
        MetricDoc("signal/n_layers", "Linear and Conv2d modules of the model", "count"),
        MetricDoc("signal/max_condition", "largest finite condition number `sigma_1 / sigma_r` over them (NaN if none; "
                  "per module: `spaces/<module>/condition`)", RATIO),
        MetricDoc("signal/first_layer_rank", "linear first layer: numerical rank of its weight", "count"),
        MetricDoc("signal/first_layer_condition", "linear first layer: `sigma_1 / sigma_r` of its weight",
                  RATIO),
        MetricDoc("signal/class_residual_energy_mean", "linear first layer: mean over the classes of the energy of the "
                  "class-average input outside the layer's row space, `‖u - P_row u‖^2 / ‖u‖^2` (inputs as the layer "
                  "sees them, normalised; `n_signal` training images)", FRACTION),
        MetricDoc("signal/sample_residual_energy_mean", "linear first layer: the same for the individual images, mean "
                  "per class, then over the classes", FRACTION),
    )

    def compute(self, ctx):
        run = self.begin(ctx)
        from fsl.plots import pixel_figures as pf
        from fsl.spaces import class_residuals, first_layer, first_layer_signal_images, layer_spectra

        o, model = run.o, run.model
        spectra = layer_spectra(model)
        run.out.save_figure("pixels_layer_spectra", spectra_figure(spectra))
        run.figures.append("pixels_layer_spectra")
        mm = {"signal/n_layers": float(len(spectra))}
        conds = [sp.condition for sp in spectra if math.isfinite(sp.condition)]
        mm["signal/max_condition"] = float(max(conds)) if conds else float("nan")
        # per-layer condition numbers and ranks: the spaces analysis (spaces/<layer>/condition|rank)
        lm = first_layer(model)
        if lm.kind == "linear":
            si = first_layer_signal_images(model, k=int(o["signal_k"]))
            rows = train_rows(run, int(o["n_signal"]))
            ns = len(rows)
            cr = class_residuals(model, run.train_images[rows], run.train_labels[rows])
            run.out.save_figure("pixels_signal_spaces", pf.signal_figure(si, cr, max_items=int(o["signal_k"])))
            run.figures.append("pixels_signal_spaces")
            mm.update({"signal/first_layer_rank": float(si.subspaces.rank),
                       "signal/first_layer_condition": float(si.condition),
                       "signal/class_residual_energy_mean": float(cr.residual_energy.mean()),
                       "signal/sample_residual_energy_mean": float(cr.sample_energy_mean.mean())})
            run.lines.append(
                f"- signal spaces (Pattichis & Pattichis, SSIAI 2024): first layer `{si.layer}` {tuple(lm.weight.shape)} has rank "
                f"{si.subspaces.rank}, condition {si.condition:.3g}; the class-average inputs keep "
                f"{1 - mm['signal/class_residual_energy_mean']:.1%} of their energy in the row space (residual energy "
                f"{mm['signal/class_residual_energy_mean']:.3g}, per sample {mm['signal/sample_residual_energy_mean']:.3g}, "
                f"{ns} training images). Largest condition number over {len(spectra)} layers: {mm['signal/max_condition']:.3g}.")
        else:
            run.lines.append(
                f"- signal spaces (Pattichis & Pattichis, SSIAI 2024): the first layer `{lm.name}` is a convolution, so there are no per-class "
                f"residual images (they need a linear first layer); the spectra of all {len(spectra)} Linear/Conv2d layers "
                f"(kernels as out x in*k*k) are shown instead. Largest condition number: {mm['signal/max_condition']:.3g}.")
        run.metrics.update(mm)
        return self.finish(run)
