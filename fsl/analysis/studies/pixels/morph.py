"""Morphing a -> b by shrinking a ball around ``N(b)`` (Yousefzadeh, arXiv 2202.04052, Figure 8),
and the feature-space paths of the morph and of the straight pixel line, drawn with the two-point
equidistant projection (Figures 9, 12)."""
from __future__ import annotations

from fsl.analysis.base import register_analysis
from fsl.analysis.metric_docs import FEATURE_L2, FRACTION, PIXEL_L2, RATIO, MetricDoc
from fsl.analysis.studies.pixels.base import PixelStudy, model_device
from fsl.analysis.studies.pixels.inversion import invert_kw


def _pick_pair(run):
    """a = the first test image; b = the first later test image of another label (or the second)."""
    y = run.test_labels.cpu()
    others = (y != y[0]).nonzero().squeeze(1)
    j = int(others[0]) if others.numel() else min(1, len(y) - 1)
    return 0, j


@register_analysis("morph")
class MorphStudy(PixelStudy):
    """Morphing a -> b by shrinking a ball around N(b) (Fig. 8); feature-space paths of the morph and
    of the straight pixel line (Figs. 9, 12)."""
    metric_docs = (
        MetricDoc("morph/n_steps", "radii of the morph, from `‖N(a) - N(b)‖` down to 0 (`morph_steps`); a = the first "
                  "selected test image, b = the first later one of another label", "count"),
        MetricDoc("morph/success_rate", "fraction of the radii whose inversion (the image closest to a with "
                  "`‖N(x) - N(b)‖ <= r`) meets the tolerance", FRACTION),
        MetricDoc("morph/feature_distance_ab", "`‖N(a) - N(b)‖`", FEATURE_L2),
        MetricDoc("morph/pixel_distance_ab", "`‖a - b‖`", PIXEL_L2),
        MetricDoc("morph/final_pixel_distance_to_a", "`‖x - a‖` of the last image of the morph (radius 0: "
                  "`N(x) = N(b)`)", PIXEL_L2),
        MetricDoc("morph/final_feature_distance", "`‖N(x) - N(b)‖` that last image reaches",
                  FEATURE_L2),
        MetricDoc("morph/pixel_line_length", "length in feature space of the image of the straight pixel line from a "
                  "to b (polygon through `path_points` points)", FEATURE_L2),
        MetricDoc("morph/pixel_line_length_ratio", "`pixel_line_length / feature_distance_ab` (at least 1)",
                  RATIO),
    )

    def compute(self, ctx):
        run = self.begin(ctx)
        from fsl.inversion import morph, pixel_line_feature_path
        from fsl.plots import pixel_figures as pf

        o, model, dev = run.o, run.model, model_device(run.model)
        if run.test_images.shape[0] < 2:
            run.lines.append("- morphing: needs two test images; skipped.")
            return self.finish(run)
        i, j = _pick_pair(run)
        a, b = run.test_images[i].to(dev), run.test_images[j].to(dev)
        ia, ib = int(run.order[i]), int(run.order[j])  # positions in the test set given to us
        m = morph(model, a, b, n_steps=int(o["morph_steps"]), **invert_kw(o))
        run.out.save_figure("pixels_morph", pf.morph_strip(m))
        run.figures.append("pixels_morph")
        line = pixel_line_feature_path(model, a, b, n=int(o["path_points"]))
        fa, fb = line.features[0].cpu(), line.features[-1].cpu()
        fig = pf.path_plot({"straight pixel line (Fig. 9)": line.features.cpu(),
                            "morph, shrinking ball around N(b) (Fig. 12)": m.features.cpu()},
                           fa, fb, labels=(f"a (#{ia})", f"b (#{ib})"),
                           title="feature-space paths, two-point equidistant projection")
        run.out.save_figure("pixels_paths", fig)
        run.figures.append("pixels_paths")
        pix_ab = float((a.double() - b.double()).norm())
        mm = {"morph/success_rate": float(m.success.double().mean()),
              "morph/n_steps": float(m.radii.numel()),
              "morph/feature_distance_ab": float(line.chord_feature),
              "morph/pixel_distance_ab": pix_ab,
              "morph/final_pixel_distance_to_a": float(m.pixel_distance_to_a[-1]),
              "morph/final_feature_distance": float(m.feature_distance[-1]),
              "morph/pixel_line_length": float(line.length_feature),
              "morph/pixel_line_length_ratio": float(line.length_feature / max(line.chord_feature, 1e-300))}
        run.metrics.update(mm)
        run.lines.append(f"- morphing test #{ia} -> #{ib} ({int(m.radii.numel())} radii): {int(m.success.sum())}/"
                         f"{int(m.radii.numel())} inversions within tolerance; the image closest to a with N(x) = N(b) is "
                         f"{mm['morph/final_pixel_distance_to_a']:.2f} from a (‖a − b‖ = {pix_ab:.2f}). The straight pixel "
                         f"line a -> b is {mm['morph/pixel_line_length_ratio']:.2f}x the feature distance "
                         f"{mm['morph/feature_distance_ab']:.3g} long in feature space.")
        return self.finish(run)
