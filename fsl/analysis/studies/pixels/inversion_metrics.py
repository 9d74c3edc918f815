"""The metric keys of the ``inversion`` pixel study (``pixels/inversion/...``): the inversion of the
closest flip points and of the hull projections back to images (Yousefzadeh, arXiv 2202.04052,
Figures 3, 5, 7), what each means and its unit."""
from __future__ import annotations

from fsl.analysis.metric_docs import FRACTION, PIXEL_L2, RATIO, MetricDoc

#: one kind of target, ``inversion/<target>/...`` (``_summarise`` and ``_explain_misses``)
_TARGET = (
    ("n", "test samples measured (`n_measure`, at most the selected ones), each with the sample itself as the "
          "reference", "count"),
    ("batch_size", "samples per call of the solver (`batch_size`)", "count"),
    ("n_attempted", "samples with a finite target, inverted", "count"),
    ("n_no_target", "samples without a target (no flip point inside the feature domain), counted as misses", "count"),
    ("success_rate", "fraction of the `n` samples whose inversion meets the relative tolerance `tol`, measured again "
                     "on the returned image (a sample without a target is a miss)", FRACTION),
    ("residual_mean", "mean over the attempted samples (finite values) of the relative feature residual "
                      "`‖N(x) - t‖ / max(‖t‖, abs_floor)`", RATIO),
    ("residual_median", "the same, median (`torch.median`: the lower middle value for an even count)",
     RATIO),
    ("residual_max", "the same, largest", RATIO),
    ("residual_nonfinite", "attempted samples whose residual is not finite", "count"),
    ("distance_mean", "mean over the attempted samples of the distance `‖x - x_r‖` of the inversion from its "
                      "reference, the sample", PIXEL_L2),
    ("distance_median", "the same, median (`torch.median`)", PIXEL_L2),
    ("target_in_domain_frac", "fraction of the attempted targets inside the model's feature domain (a target outside "
                              "cannot be reached)", FRACTION),
    ("seconds_per_batch", "mean wall time of one solver call", "seconds"),
    ("seconds_total", "wall time of all solver calls", "seconds"),
    ("unreachable", "misses whose target is proven unreachable: a certified interval-bound lower bound on the residual "
                    "over the whole image box is above `tol` (`fsl.inversion.diagnose`)", "count"),
    ("stationary", "misses at a local obstruction: the box-constrained Gauss-Newton model at the returned image cannot "
                   "remove 10% of the residual", "count"),
    ("not_converged", "misses where that model still predicts progress", "count"),
    ("probe_reachable", "with `probe_steps > 0`: misses whose target a multi-start projected-Adam probe (from the "
                        "sample and `probe_random` random images) reaches within `tol`", "count"),
    ("probe_near", "with `probe_steps > 0`: misses the probe brings within 10 `tol` but not within `tol`", "count"),
    ("probe_floor", "with `probe_steps > 0`: misses where the probe stays above 10 `tol` too", "count"),
)

INVERSION_METRIC_DOCS = (
    *(MetricDoc(f"inversion/<target>/{k}", what, unit) for k, what, unit in _TARGET),
    MetricDoc("inversion/hull/frac_inside_hull", "fraction of the `n` samples whose feature vector lies inside the "
              "training hull (`d_h <= 1e-9 (1 + ‖feature‖)`: the projection is the sample's own feature vector)",
              FRACTION),
    MetricDoc("inversion/hull/acc_on_inversions", "fraction of the attempted hull-projection inversions the head "
              "classifies (on their re-measured features) as the sample's true label", FRACTION),
    MetricDoc("inversion/perimeter/n", "sphere inversions onto the perimeter of the ball `B(x)` of radius `d_min(x)`: "
              "the figure samples with a finite positive margin, times the reference kinds (`references`)", "count"),
    MetricDoc("inversion/perimeter/success_rate", "fraction of them with `|‖N(x) - N(x_0)‖ - d_min| / d_min` within "
              "`tol`", FRACTION),
    MetricDoc("inversion/perimeter/residual_mean", "mean of that relative residual over its finite values",
              RATIO),
    MetricDoc("inversion/perimeter/distance_mean", "mean distance `‖x - x_r‖` of the perimeter images from their "
              "references", PIXEL_L2),
)
