"""The seed paper's CIFAR-10 / ResNet-20 numbers (Yousefzadeh, arXiv 2202.04052, section 7.2),
keyed like fsl's metrics, for side-by-side reports."""

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
