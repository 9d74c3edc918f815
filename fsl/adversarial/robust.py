"""Robust accuracy of a classifier guarded by a detector at a fixed false-positive rate.

A detector deployed with a classifier rejects inputs whose score exceeds a threshold set on clean
data; an attacked input is *handled* when it is rejected or still classified correctly. Reporting
this next to the clean accuracy the rejections cost is the evaluation asked of detection defences
by Carlini & Wagner (arXiv 1705.07263) and Tramer et al. (arXiv 2002.08347).
"""
from __future__ import annotations

import torch

from fsl.adversarial.metrics import clean_threshold


def robust_accuracy(calib_clean, test_clean, test_adv, test_success, fpr: float = 0.05) -> dict[str, float]:
    """Robust accuracy of classifier + detector at ``fpr`` false positives.

    Args:
        calib_clean: ``(K,)`` detector scores (higher = adversarial) of clean, correctly classified
            calibration samples; the threshold ``tau`` flags at most ``fpr`` of them
            (:func:`fsl.adversarial.metrics.clean_threshold`). NaN scores are left out.
        test_clean: ``(A,)`` scores of the clean originals of the attacked test samples (all
            correctly classified).
        test_adv: ``(A,)`` scores of their adversarial images (a NaN score is never flagged).
        test_success: ``(A,)`` bool, the attack fooled the classifier.

    Returns ``threshold`` (``tau``), ``robust_acc`` (fraction of the ``A`` attacked samples that are
    flagged, ``score > tau``, or not fooled) and ``clean_acc_lost`` (fraction of the ``A`` clean
    originals flagged: the share of correct predictions the rejections cost; about ``fpr`` when the
    calibration samples are the test samples themselves). NaN for ``A = 0`` or no calibration score.
    """
    cal = torch.as_tensor(calib_clean).detach().cpu().double().flatten()
    cal = cal[~torch.isnan(cal)]
    clean = torch.as_tensor(test_clean).detach().cpu().double().flatten()
    adv = torch.as_tensor(test_adv).detach().cpu().double().flatten()
    success = torch.as_tensor(test_success).detach().cpu().bool().flatten()
    if not clean.shape == adv.shape == success.shape:
        raise ValueError(f"robust_accuracy: test_clean {tuple(clean.shape)}, test_adv {tuple(adv.shape)} and "
                         f"test_success {tuple(success.shape)} must pair one value per attacked sample")
    tau = clean_threshold(cal, fpr) if cal.numel() else float("nan")
    nan = float("nan")
    if clean.numel() == 0 or tau != tau:
        return {"threshold": tau, "robust_acc": nan, "clean_acc_lost": nan}
    handled = ~success | (adv > tau)  # NaN > tau is False: a NaN score never flags
    return {"threshold": tau, "robust_acc": float(handled.double().mean()),
            "clean_acc_lost": float((clean > tau).double().mean())}
