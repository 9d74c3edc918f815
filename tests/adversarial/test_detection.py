"""Detection scores (fsl.adversarial.detectors) and ranking metrics (fsl.adversarial.metrics) on hand-made
numbers (no model)."""
import math

import numpy as np
import pytest
import torch

from fsl.adversarial.detectors import ambiguity_score, fit_mahalanobis, margin_score, msp_score, train_margin_rule
from fsl.adversarial.evaluate import feature_space_summary
from fsl.adversarial.metrics import clean_threshold, detection_metrics, detection_table, roc_curve


def manual_auroc(clean, adv):
    """P(adv > clean) + 0.5 P(tie), over all pairs (the Mann-Whitney U statistic)."""
    c = np.asarray(clean, dtype=float)[None, :]
    a = np.asarray(adv, dtype=float)[:, None]
    return float(((a > c) + 0.5 * (a == c)).mean())


def test_auroc_hand_computed_with_tie():
    clean = [0.1, 0.4, 0.35, 0.8]
    adv = [0.9, 0.4, 0.7]
    # 0.9 beats 4; 0.4 beats 2 and ties 1 (0.5); 0.7 beats 3  ->  9.5 / 12
    m = detection_metrics(clean, adv)
    assert m["auroc"] == pytest.approx(9.5 / 12, abs=1e-12)
    assert m["n_clean"] == 4 and m["n_adv"] == 3


def test_auroc_matches_pairwise_count_on_random_scores():
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(300, generator=g).round(decimals=1)  # rounding creates many ties
    adv = (torch.randn(170, generator=g) + 0.7).round(decimals=1)
    assert detection_metrics(clean, adv)["auroc"] == pytest.approx(manual_auroc(clean, adv), abs=1e-9)


def test_auroc_is_exact_for_scores_far_outside_unit_interval():
    # torchmetrics would apply a float32 sigmoid to these, which rounds them all to 1.0 (ties)
    clean = torch.arange(20.0, 120.0)
    adv = torch.arange(200.0, 220.0)
    from torchmetrics.functional.classification import binary_auroc
    raw = float(binary_auroc(torch.cat([clean, adv]).float(), torch.cat([torch.zeros(100), torch.ones(20)]).long()))
    assert raw < 0.99  # the quirk we guard against is real
    m = detection_metrics(clean, adv)
    assert m["auroc"] == 1.0
    assert m["tpr_at_5fpr"] == 1.0


def test_tpr_at_5fpr_threshold_on_clean_scores():
    clean = torch.arange(20.0)  # k = floor(0.05 * 20) = 1 -> tau = 2nd largest clean = 18
    adv = torch.tensor([18.0, 18.5, 19.0, 25.0, 3.0])
    m = detection_metrics(clean, adv)
    assert m["threshold"] == 18.0
    assert m["fpr_at_threshold"] == pytest.approx(1 / 20)
    assert m["tpr_at_5fpr"] == pytest.approx(3 / 5)  # 18 is not > 18
    # 19 clean samples: k = 0 -> tau = max clean
    assert clean_threshold(torch.arange(19.0)) == 18.0
    # 60 clean: 3/60 == 0.05 exactly in floating point -> k = 3
    assert clean_threshold(torch.arange(60.0)) == 56.0


def test_tpr_equals_best_point_of_roc_curve():
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(437, generator=g), torch.randn(91, generator=g) + 1.5
    m = detection_metrics(clean, adv)
    roc = roc_curve(clean, adv)
    assert roc["thresholds"][0] == math.inf
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and roc["fpr"][-1] == 1
    best = roc["tpr"][roc["fpr"] <= 0.05].max()
    assert m["tpr_at_5fpr"] == pytest.approx(best, abs=1e-12)
    # every threshold reproduces its ROC point under "score >= threshold"
    for i in range(1, len(roc["thresholds"]), 37):
        t = roc["thresholds"][i]
        assert roc["fpr"][i] == pytest.approx(float((clean >= t).double().mean()))
        assert roc["tpr"][i] == pytest.approx(float((adv >= t).double().mean()))
    # trapezoid area under the returned curve = AUROC
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(m["auroc"], abs=1e-12)


def test_empty_and_nan_inputs():
    m = detection_metrics(torch.randn(5), torch.empty(0))
    assert math.isnan(m["auroc"]) and m["n_adv"] == 0
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics(torch.tensor([0.0, float("nan")]), torch.tensor([1.0]))


def two_class_head(seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, 5, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    return W, b


def closed_form_margin_2class(y, W, b):
    """Exact margin for 2 classes and an unbounded feature domain: distance to one hyperplane."""
    w = W[0] - W[1]
    c = b[0] - b[1]
    return (y @ w + c).abs() / w.norm()


def test_boundary_sanity_case_margin_auroc_is_one():
    W, b = two_class_head()
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(200, 5, generator=g, dtype=torch.float64) * 3
    w, c = W[0] - W[1], b[0] - b[1]
    # adversarial features: the clean ones projected exactly onto the decision boundary
    on_boundary = clean - ((clean @ w + c) / (w @ w))[:, None] * w[None, :]
    m_clean = closed_form_margin_2class(clean, W, b)
    m_adv = closed_form_margin_2class(on_boundary, W, b)
    assert m_adv.max() < 1e-12 and m_clean.min() > 0
    met = detection_metrics(margin_score(m_clean), margin_score(m_adv))
    assert met["auroc"] == 1.0 and met["tpr_at_5fpr"] == 1.0
    # and the reversed sign would be a perfect *anti*-detector: the sign convention matters
    assert detection_metrics(m_clean, m_adv)["auroc"] == 0.0


def test_score_signs():
    margin = torch.tensor([0.1, 2.0])
    hull = torch.tensor([1.0, 0.5])
    assert margin_score(margin).tolist() == pytest.approx([-0.1, -2.0])
    assert ambiguity_score(margin, hull).tolist() == pytest.approx([0.9, -1.5])
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    s = msp_score(logits)
    assert s[1] == pytest.approx(-0.5) and s[0] < s[1]  # the uncertain sample scores higher


def test_mahalanobis_matches_numpy_reference():
    rng = np.random.default_rng(0)
    n, f, N = 3, 4, 300
    A = rng.normal(size=(f, f))
    labels = rng.integers(0, n, size=N)
    feats = rng.normal(size=(N, f)) @ A + 3 * labels[:, None]
    reg = 1e-3
    maha = fit_mahalanobis(torch.tensor(feats), torch.tensor(labels), num_classes=n, reg=reg)
    mu = np.stack([feats[labels == c].mean(0) for c in range(n)])
    cen = feats - mu[labels]
    cov = cen.T @ cen / N
    cov_r = cov + reg * np.trace(cov) / f * np.eye(f)
    P = np.linalg.inv(cov_r)
    q = rng.normal(size=(7, f)) * 2
    ref = np.array([[np.sqrt((x - m) @ P @ (x - m)) for m in mu] for x in q])
    np.testing.assert_allclose(maha.means.numpy(), mu, rtol=1e-12)
    np.testing.assert_allclose(maha.covariance.numpy(), cov_r, rtol=1e-12)
    np.testing.assert_allclose(maha.distances(torch.tensor(q)).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(maha.score(torch.tensor(q)).numpy(), ref.min(1), rtol=1e-10)


def test_mahalanobis_singular_features_and_absent_class():
    # a dead feature dimension (always 0) makes the raw covariance singular; class 2 has no samples
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    x[:, 2] = 0
    y = torch.randint(0, 2, (50,), generator=g)
    maha = fit_mahalanobis(x, y, num_classes=3)
    d = maha.distances(x[:4])
    assert torch.isfinite(d[:, :2]).all() and torch.isinf(d[:, 2]).all()
    assert maha.reg_added > 0


def test_train_margin_rule_constructed():
    train = torch.tensor([0.5, 0.3, 2.0, 1.0])  # smallest clean training margin 0.3
    adv = torch.tensor([0.0, 0.29, 0.3, 0.31, 1e-6])
    clean = torch.tensor([0.25, 0.5, 3.0, 0.4])
    r = train_margin_rule(adv, train, clean)
    assert r["threshold"] == pytest.approx(0.3)
    assert r["caught"] == pytest.approx(3 / 5)  # 0.3 itself is not below 0.3
    assert r["false_positive"] == pytest.approx(1 / 4)


def test_feature_space_summary_values():
    adv_m = torch.tensor([0.01, 0.02, 1.0, 0.0])
    adv_h = torch.tensor([0.5, 0.01, 2.0, 0.3])
    cl_m = torch.tensor([2.0, 1.0, 3.0, 1.5])
    cl_h = torch.tensor([0.6, 0.005, 2.5, 0.3])
    success = torch.tensor([True, True, False, True, True, False])
    l2 = torch.tensor([1.0, 2.0, 3.0, 10.0])
    s = feature_space_summary(adv_m, adv_h, cl_m, cl_h, success=success, l2=l2, linf=l2 / 10)
    assert s["frac_margin_lt_hull"] == pytest.approx(3 / 4)
    assert s["frac_hull_shrank"] == pytest.approx(2 / 4)  # 0.5<0.6, 2.0<2.5; 0.01>0.005, 0.3==0.3
    assert s["success_rate"] == pytest.approx(4 / 6)
    assert s["n_success"] == 4 and s["n_attacked"] == 6
    assert s["l2/mean"] == pytest.approx(4.0) and s["l2/median"] == pytest.approx(2.5)
    assert s["linf/mean"] == pytest.approx(0.4)
    assert s["ambiguity/mean"] == pytest.approx(float((adv_m - adv_h).mean()))
    assert s["margin/median"] == pytest.approx(0.015)
    assert all(isinstance(v, float) for v in s.values())
    empty = feature_space_summary(torch.empty(0), torch.empty(0), torch.empty(0), torch.empty(0),
                                  success=torch.zeros(3, dtype=torch.bool))
    assert math.isnan(empty["frac_margin_lt_hull"]) and empty["success_rate"] == 0.0


def test_detection_table_keys():
    g = torch.Generator().manual_seed(0)
    flat, curves = detection_table({"margin": (torch.randn(30, generator=g), torch.randn(10, generator=g) + 5),
                                    "msp": (torch.randn(30, generator=g), torch.randn(10, generator=g))})
    assert set(flat) == {f"{m}/{s}" for m in ("auroc", "tpr5", "threshold", "aupr_in", "aupr_out", "fpr95")
                         for s in ("margin", "msp")}
    assert flat["auroc/margin"] > 0.99
    assert {"fpr", "tpr", "thresholds", "auroc"} <= set(curves["margin"])
