"""Preimages of a feature vector (Jacobian preimages of latent vectors): a level-set walk on
``N(x) = N(x0)`` and the step response along null-space vs random directions (first order vs
actual, on a float64 copy of the model)."""
from __future__ import annotations

import copy

import torch

from fsl.analysis.base import register_analysis
from fsl.analysis.metric_docs import FEATURE_L2, FRACTION, PIXEL_L2, RATIO, MetricDoc
from fsl.analysis.studies.pixels.base import PixelStudy, model_device


@register_analysis("preimage")
class PreimageStudy(PixelStudy):
    """Level-set walk on N(x) = N(x0) and the step response along null-space vs random directions
    (Jacobian preimages of latent vectors)."""
    metric_docs = (
        MetricDoc("preimage/walk_on_set_frac", "fraction of the steps of the level-set walks on `N(x) = N(x0)` (the "
                  "first `n_figure` selected test images, `walk_steps` steps each) that end within the tolerance",
                  FRACTION),
        MetricDoc("preimage/walk_residual_max", "largest relative residual `‖N(x_t) - N(x0)‖ / ‖N(x0)‖` after the "
                  "projection back onto the level set", RATIO),
        MetricDoc("preimage/walk_first_order_residual_mean", "mean relative residual after the null-space step, "
                  "before the projection", RATIO),
        MetricDoc("preimage/walk_final_distance_mean", "mean over the walks of the final distance `‖x_T - x0‖`",
                  PIXEL_L2),
        MetricDoc("preimage/step_max", "the largest step size `h` of the step response (`step_sizes`; unit "
                  "directions)", PIXEL_L2),
        MetricDoc("preimage/null_slope", "median over the images of the log-log slope of `‖N(x0 + h d) - N(x0)‖` vs "
                  "`h` along null-space directions `d` (median over directions; about 2: second order)",
                  "slope (dimensionless)"),
        MetricDoc("preimage/random_slope", "the same along random unit directions (about 1)", "slope (dimensionless)"),
        MetricDoc("preimage/null_first_order_at_hmax", "mean over images and null-space directions of the first-order "
                  "change `‖J (h d)‖` at `h = step_max` (about 0)", FEATURE_L2),
        MetricDoc("preimage/null_actual_at_hmax", "mean over images and null-space directions of "
                  "`‖N(x0 + h d) - N(x0)‖` at `h = step_max` (float64 copy of the model)", FEATURE_L2),
        MetricDoc("preimage/random_actual_at_hmax", "the same along random unit directions",
                  FEATURE_L2),
    )

    def compute(self, ctx):
        run = self.begin(ctx)
        from fsl.inversion import level_set_walk, null_step_response
        from fsl.plots import pixel_figures as pf

        o, model, dev = run.o, run.model, model_device(run.model)
        nf = min(int(o["n_figure"]), run.test_images.shape[0])
        x0 = run.test_images[:nf].to(dev)
        g = torch.Generator().manual_seed(int(o["seed"]))
        walk = level_set_walk(model, x0, n_steps=int(o["walk_steps"]), step=float(o["walk_step"]), generator=g,
                              max_newton=int(o["walk_newton"]))
        run.out.save_figure("pixels_preimage_grid", pf.preimage_grid(walk))
        run.figures.append("pixels_preimage_grid")
        with torch.no_grad():
            z0n = model.forward_features(x0).double().norm(dim=1).cpu().clamp_min(1e-12)
        rel = walk.residual[1:].cpu() / z0n
        pre = walk.first_order_residual.cpu() / z0n
        mm = {"preimage/walk_on_set_frac": float(walk.on_set[1:].double().mean()),
              "preimage/walk_residual_max": float(rel.max()) if rel.numel() else float("nan"),
              "preimage/walk_first_order_residual_mean": float(pre.mean()) if pre.numel() else float("nan"),
              "preimage/walk_final_distance_mean": float(walk.distance[-1].mean())}
        # step response on a float64 copy (float32 rounding hides the O(h^2) regime at small steps)
        m64 = copy.deepcopy(model).double()
        sr = null_step_response(m64, x0.double(), steps=tuple(float(h) for h in o["step_sizes"]),
                                k=int(o["step_directions"]), generator=g)
        del m64
        run.out.save_figure("pixels_step_response", pf.step_response_figure(sr))
        run.figures.append("pixels_step_response")
        h_max = float(sr.steps[-1])
        mm.update({"preimage/null_slope": float(sr.slope.median()),
                   "preimage/random_slope": float(sr.random_slope.median()),
                   "preimage/null_first_order_at_hmax": float(sr.first_order[..., -1].mean()),
                   "preimage/null_actual_at_hmax": float(sr.actual[..., -1].mean()),
                   "preimage/random_actual_at_hmax": float(sr.random_actual[..., -1].mean()),
                   "preimage/step_max": h_max})
        run.metrics.update(mm)
        run.lines.append(
            f"- preimages (Jacobian preimages of latent vectors): a level-set walk of {int(o['walk_steps'])} steps of {float(o['walk_step']):g} stays on "
            f"N(x) = N(x0) in {mm['preimage/walk_on_set_frac']:.0%} of the steps (max relative residual "
            f"{mm['preimage/walk_residual_max']:.1e}; {mm['preimage/walk_first_order_residual_mean']:.1e} before projection), "
            f"ending {mm['preimage/walk_final_distance_mean']:.2f} from x0. Step response at h = {h_max:g}: null directions "
            f"first order {mm['preimage/null_first_order_at_hmax']:.1e} vs actual {mm['preimage/null_actual_at_hmax']:.1e} "
            f"(log-log slope {mm['preimage/null_slope']:.2f}), random directions {mm['preimage/random_actual_at_hmax']:.1e} "
            f"(slope {mm['preimage/random_slope']:.2f}).")
        return self.finish(run)
