"""Ideal-output inputs (Pattichis & Pattichis, SSIAI 2024, Figure 3), for models with
``invertible_selu = True``."""
from __future__ import annotations

from fsl.analysis.base import register_analysis
from fsl.analysis.metric_docs import MetricDoc
from fsl.analysis.studies.pixels.base import PixelStudy, model_device, selu_skip, train_rows


@register_analysis("ideal")
class IdealStudy(PixelStudy):
    """Ideal-output inputs (Pattichis & Pattichis, SSIAI 2024 Fig. 3); needs a model with
    ``invertible_selu = True``."""

    sizes = PixelStudy.sizes + ("n_ideal",)
    metric_docs = (
        MetricDoc("studies/ideal/skipped", "1 when the model is not an invertible SELU net and the study did not run",
                  "flag, 1"),
        MetricDoc("ideal/<init>/distance_before_mean", "mean over the classes of the distance `‖model(x) - ideal_c‖` "
                  "of the start image to the class's ideal output (over `n_ideal` training images: the maximum of "
                  "output c, the minimum of the others)", "logit L2"),
        MetricDoc("ideal/<init>/distance_after_mean", "the same after `ideal_steps` projected-Adam refinement steps "
                  "(the best iterate)", "logit L2"),
    )

    def compute(self, ctx):
        reason = selu_skip(ctx, "ideal-output inputs")
        if reason:
            return self.skipped(reason)
        run = self.begin(ctx)
        from fsl.plots import pixel_figures as pf
        from fsl.spaces import INITS, ideal_inputs

        o, model, dev = run.o, run.model, model_device(run.model)
        rows = train_rows(run, int(o["n_ideal"]))
        ii = ideal_inputs(model, run.train_images[rows].to(dev), run.train_labels[rows].to(dev),
                          steps=int(o["ideal_steps"]))
        run.out.save_figure("pixels_ideal_inputs", pf.ideal_inputs_figure(ii))
        run.figures.append("pixels_ideal_inputs")
        mm = {}
        for k in INITS:
            mm[f"ideal/{k}/distance_before_mean"] = float(ii.distance_before[k].mean())
            mm[f"ideal/{k}/distance_after_mean"] = float(ii.distance_after[k].mean())
        run.metrics.update(mm)
        run.lines.append("- ideal-output inputs (Pattichis & Pattichis, SSIAI 2024 Fig. 3), mean distance to the ideal output before -> after "
                         f"{int(o['ideal_steps'])} refinement steps: " + ", ".join(
                             f"{k} {mm[f'ideal/{k}/distance_before_mean']:.2f} -> {mm[f'ideal/{k}/distance_after_mean']:.2f}"
                             for k in INITS) + ".")
        return self.finish(run)
