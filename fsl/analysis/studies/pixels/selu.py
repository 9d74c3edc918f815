"""Layer-wise SELU inversion from the features (Pattichis & Pattichis, SSIAI 2024, section 2.4),
for models with ``invertible_selu = True``."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from fsl.analysis.base import register_analysis
from fsl.analysis.metric_docs import FRACTION, RATIO, MetricDoc
from fsl.analysis.studies.pixels.base import PixelStudy, model_device, selu_skip


@register_analysis("selu")
class SeluStudy(PixelStudy):
    """Layer-wise SELU inversion from the features (Pattichis & Pattichis, SSIAI 2024 section 2.4);
    needs a model with ``invertible_selu = True``."""
    metric_docs = (
        MetricDoc("studies/selu/skipped", "1 when the model is not an invertible SELU net and the study did not run",
                  "flag, 1"),
        MetricDoc("selu/n", "selected test images inverted layer by layer from their features", "count"),
        MetricDoc("selu/image_error_mean", "mean over them of the relative error of the reconstructed first-layer "
                  "input against the row-space component of the true one, `‖h0_hat - P_row(W_1) h0‖ / "
                  "‖P_row(W_1) h0‖`", RATIO),
        MetricDoc("selu/image_error_median", "the same, median (`torch.median`)", RATIO),
        MetricDoc("selu/flagged_frac", "fraction of the images whose inversion needed a clamp (a value outside SELU's "
                  "range)", FRACTION),
        MetricDoc("selu/clamped_total", "values clamped, over all layers and images", "count"),
        MetricDoc("selu/local_error_max", "largest over the layers of that relative error when one layer alone is "
                  "inverted from the true activations (mean over the images; rounding level when exact)",
                  RATIO),
    )

    def compute(self, ctx):
        reason = selu_skip(ctx, "SELU inversion")
        if reason:
            return self.skipped(reason)
        run = self.begin(ctx)
        from fsl.plots import pixel_figures as pf
        from fsl.spaces import selu_invert

        o, model, dev = run.o, run.model, model_device(run.model)
        n = min(max(int(o["n_measure"]), int(o["n_figure"])), run.test_images.shape[0])
        x = run.test_images[:n].to(dev)
        with torch.no_grad():
            feats = model.forward_features(x)
        inv = selu_invert(model, feats, x_true=x)
        nf = min(int(o["n_figure"]), n)
        run.out.save_figure("pixels_selu_inversion", pf.selu_inversion_figure(x[:nf].cpu(), _cpu_inv(inv), max_items=nf))
        run.figures.append("pixels_selu_inversion")
        err = inv.image_error.cpu()
        mm = {"selu/n": float(n), "selu/image_error_mean": float(err.mean()), "selu/image_error_median": float(err.median()),
              "selu/flagged_frac": float(inv.flagged.double().mean()), "selu/clamped_total": float(inv.clamped.sum()),
              "selu/local_error_max": float(inv.local_error.max())}
        run.metrics.update(mm)
        run.lines.append(
            f"- SELU inversion (Pattichis & Pattichis, SSIAI 2024 §2.4) from the features of {n} test images: relative error of the reconstructed "
            f"input against its row-space component: median {mm['selu/image_error_median']:.3g} (mean "
            f"{mm['selu/image_error_mean']:.3g}); {mm['selu/flagged_frac']:.0%} of the samples needed clamps "
            f"({int(mm['selu/clamped_total'])} values outside SELU's range); single-layer inversion from the true "
            f"activations is exact to {mm['selu/local_error_max']:.1e}.")
        return self.finish(run)


def _cpu_inv(inv):
    return SimpleNamespace(images=None if inv.images is None else inv.images.cpu(),
                           row_component=None if inv.row_component is None else inv.row_component.cpu(),
                           image_error=None if inv.image_error is None else inv.image_error.cpu())
