"""The adaptive attack of every detector (adaptive_<detector>) and the robust accuracy of classifier +
detector at 5% FPR."""
from __future__ import annotations

import pytest
import torch

from fsl.adversarial import DETECTORS, register_detector, run_attack
from fsl.adversarial.detectors import Detector, FitData, build_detector
from fsl.adversarial.detectors.registry import has_torch_score, require_torch_score
from fsl.adversarial.evaluate import Detectors, evaluate_attack, summarize_attack
from fsl.adversarial.robust import robust_accuracy
from fsl.adversarial.suites import adaptive_suite, load_suite
from fsl.errors import ConfigError
from tests.adversarial.toys import noise_setting


@pytest.fixture(scope="module")
def toy():
    """An untrained fcnn1 on uniform noise (tests/adversarial/toys.py), the detectors fitted on 300 noise images."""
    model, x, y, f_tr, y_tr, geom = noise_setting("fcnn1", 60, 300)
    det = Detectors.fit(model, f_tr, y_tr, geometry=geom, knn_k=5, names=["mahalanobis", "knn", "msp"])
    return model, x, y, f_tr, y_tr, det


@pytest.mark.parametrize("name,variants", [("mahalanobis", ["sum"]), ("knn", ["sum", "orthogonal", "selective"])])
def test_adaptive_attack_evades_a_detector_that_plain_pgd_does_not(toy, name, variants):
    """Plain PGD pushes the features away from the training features (Mahalanobis, KNN flag it); the
    attack that knows the detector stays misclassified and lowers its AUROC below plain PGD's."""
    model, x, y, f_tr, y_tr, det = toy
    budget = dict(eps=0.1, steps=10)
    plain = evaluate_attack(model, x, y, f_tr, y_tr, attack="pgd", detectors=det, n_boot=0, **budget).metrics
    adapt = evaluate_attack(model, x, y, f_tr, y_tr, attack="adaptive", detectors=det, target=name, n_boot=0,
                            variants=variants, **budget).metrics
    assert plain[f"auroc/{name}"] > 0.6
    assert adapt["success_rate"] >= 0.95
    assert adapt[f"auroc/{name}"] < plain[f"auroc/{name}"] - 0.3
    assert adapt[f"robust_acc_at_5fpr/{name}"] <= plain[f"robust_acc_at_5fpr/{name}"]
    assert adapt["linf/median"] <= 0.1 + 1e-6


@pytest.mark.parametrize("variant", ["orthogonal", "selective"])
def test_orthogonal_and_selective_variants_alone(toy, variant):
    model, x, y, f_tr, y_tr, det = toy
    res = run_attack(model, x[:20], y[:20], "adaptive", detector=det["mahalanobis"], variants=[variant], eps=0.1,
                     steps=10)
    assert float(res.linf.max()) <= 0.1 + 1e-6 and res.success_rate >= 0.9


class _Counting(torch.nn.Module):
    """Counts the images ``forward_features`` sees (the attack's cost)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward_features(self, x):
        self.images += len(x)
        return self.model.forward_features(x)

    def forward_head(self, f):
        return self.model.forward_head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_early_stop_off_or_with_no_floor_is_the_full_attack(toy):
    """With a floor no score reaches, early stopping is a no-op: bit-identical to ``early_stop=False``."""
    model, x, y, f_tr, y_tr, det = toy
    kw = dict(detector=det["mahalanobis"], eps=0.1, steps=8, lambdas=[1.0, 10.0], seed=5)
    full = run_attack(model, x[:30], y[:30], "adaptive", early_stop=False, **kw)
    none = run_attack(model, x[:30], y[:30], "adaptive", early_stop=True, floor_score=-float("inf"), **kw)
    assert torch.equal(full.adv_images, none.adv_images)


def test_early_stop_leaves_out_only_samples_below_every_clean_score(toy):
    """The samples left out are misclassified and score below the clean floor, so the AUROC of the
    target detector is the full attack's or lower; it costs a fraction of the forward passes."""
    from fsl.adversarial.methods.adaptive_detector import clean_floor

    model, x, y, f_tr, y_tr, det = toy
    d = det["mahalanobis"]
    floor = clean_floor(model, d, x)
    with torch.no_grad():
        clean = d.torch_score(model.forward_features(x), model.forward_head(model.forward_features(x)))
    assert floor == pytest.approx(float(clean.min()), rel=1e-6)
    runs = {}
    for early in (False, True):
        counting = _Counting(model)
        res = run_attack(counting, x, y, "adaptive", detector=d, eps=0.1, steps=10, early_stop=early,
                         floor_score=floor, seed=1)
        with torch.no_grad():
            f = model.forward_features(res.adv_images)
            s = d.torch_score(f, model.forward_head(f))
        runs[early] = (counting.images, s, res.success)
    (n_full, s_full, ok_full), (n_early, s_early, ok_early) = runs[False], runs[True]
    below = ok_early & (s_early < floor)
    assert int(below.sum()) >= len(x) // 2  # the toy detector is evadable: most samples end below the floor
    assert n_early < 0.5 * n_full
    auroc = lambda s: float((s[:, None] > clean[None, :]).double().mean())  # noqa: E731 (successful ones)
    assert auroc(s_early[ok_early]) <= auroc(s_full[ok_full]) + 0.05
    assert ok_early.float().mean() >= ok_full.float().mean() - 1e-12


def _fit_data():
    g = torch.Generator().manual_seed(3)
    W, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    F_tr = torch.randn(80, 6, generator=g, dtype=torch.float64).abs()
    return FitData(F_tr, (F_tr @ W.T + b).argmax(1), W, b, 4), torch.randn(10, 6, generator=g, dtype=torch.float64).abs()


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_has_a_differentiable_score(name):
    """The registry gives every registered detector an adaptive attack: its torch_score is finite, has
    a gradient and, where it is not a surrogate, equals the detector's own score."""
    require_torch_score(name)
    data, F = _fit_data()
    det = build_detector(name, **({"k": 5} if name == "knn" else {})).fit(data)
    F = F.clone().requires_grad_(True)
    logits = F @ data.weight.T + data.bias
    s = det.torch_score(F, logits)
    (g,) = torch.autograd.grad(s.sum(), F)
    assert s.shape == (10,) and bool(torch.isfinite(s).all()) and bool(torch.isfinite(g).all())
    if not det.needs and name != "margin":  # margin, ambiguity: surrogates of the geometry's distances
        v = det.value(F.detach(), logits.detach(), torch.zeros(10), torch.zeros(10))
        assert torch.allclose(s.detach(), -v if det.negate else v, rtol=1e-9, atol=1e-12)


def test_adaptive_suite_takes_the_pgd_budget_of_the_suite():
    suite = adaptive_suite(load_suite("mnist"), DETECTORS.names())
    for d in DETECTORS.names():
        spec = suite[f"adaptive_{d}"]
        assert spec["attack"] == "adaptive" and spec["target"] == d
        assert (spec["eps"], spec["alpha"], spec["steps"], spec["norm"]) == (0.3, 0.0375, 20, "Linf")
    cifar = adaptive_suite(load_suite("cifar"), ["knn"], {"variants": ["selective"]})
    assert (cifar["adaptive_knn"]["eps"], cifar["adaptive_knn"]["steps"]) == (8 / 255, 10)
    assert cifar["adaptive_knn"]["variants"] == ["selective"]
    assert "adaptive_knn" not in adaptive_suite(load_suite("cifar"), ["knn"], {"enabled": False})
    l2 = adaptive_suite({"p": {"attack": "pgd_l2", "eps": 2.0, "steps": 5}}, ["msp"])["adaptive_msp"]
    assert (l2["norm"], l2["eps"], l2["steps"]) == ("L2", 2.0, 5)
    with pytest.raises(ConfigError, match="no 'pgd' or 'pgd_l2' entry"):
        adaptive_suite({"d": {"attack": "deepfool"}}, ["msp"])
    with pytest.raises(ConfigError, match="unknown option 'lambda'; did you mean 'lambdas'"):
        adaptive_suite(load_suite("mnist"), ["msp"], {"lambda": [1.0]})


def test_a_detector_without_a_differentiable_score_is_refused(toy):
    @register_detector("plain_norm")
    class PlainNorm(Detector):
        def value(self, features, logits, margin, hull):
            return features.norm(dim=1)

    try:
        assert not has_torch_score(PlainNorm) and has_torch_score(DETECTORS.get("knn"))
        with pytest.raises(ConfigError, match=r"detector 'plain_norm' has no differentiable score.*define "
                                              r"`torch_score\(self, features, logits\)` on"):
            adaptive_suite(load_suite("mnist"), ["msp", "plain_norm"])
        model, x, y, *_ = toy
        with pytest.raises(ConfigError, match="adaptive_plain_norm"):
            run_attack(model, x[:2], y[:2], "adaptive", detector=PlainNorm(), steps=1)
    finally:
        DETECTORS.unregister("plain_norm")
    model, x, y, *_ = toy
    with pytest.raises(ConfigError, match="no fitted detector"):
        run_attack(model, x[:2], y[:2], "adaptive", target="knn", steps=1)


def test_robust_accuracy_against_a_hand_count():
    calib = torch.arange(1.0, 21.0)  # 20 clean scores: 5% FPR flags one, so tau = 19 (flag score > 19)
    clean = torch.tensor([0.0, 19.0, 19.5, 25.0, 3.0, 1.0])  # 19.5 and 25 flagged: 2 of 6 rejected
    adv = torch.tensor([30.0, 5.0, 19.0, float("nan"), 20.0, 2.0])
    success = torch.tensor([True, True, True, True, False, False])
    # handled: 0 (flagged), 4 and 5 (not fooled); 1, 2 (19 is not > 19) and 3 (NaN) are not
    r = robust_accuracy(calib, clean, adv, success)
    assert r == {"threshold": 19.0, "robust_acc": pytest.approx(3 / 6), "clean_acc_lost": pytest.approx(2 / 6)}
    assert robust_accuracy(torch.zeros(0), clean, adv, success)["robust_acc"] != robust_accuracy(
        torch.zeros(0), clean, adv, success)["robust_acc"]  # NaN without calibration scores


def test_summarize_attack_sets_the_threshold_on_the_calibration_rows():
    """``calib`` rows set the 5%-FPR threshold; robust accuracy and clean loss are measured on the others."""
    n = 40
    g = torch.Generator().manual_seed(0)
    ps = {"success": torch.ones(n, dtype=torch.bool), "nonfinite": torch.zeros(n, dtype=torch.bool),
          "gap": torch.ones(n, dtype=torch.float64), "l2": torch.ones(n, dtype=torch.float64),
          "linf": torch.ones(n, dtype=torch.float64)}
    for kind in ("clean", "adv"):
        for col in ("margin", "hull"):
            ps[f"{kind}_{col}"] = torch.rand(n, generator=g, dtype=torch.float64)
    ps["clean_msp"] = torch.rand(n, generator=g, dtype=torch.float64)
    ps["adv_msp"] = torch.rand(n, generator=g, dtype=torch.float64)
    calib = torch.arange(n) % 2 == 0
    metrics, _ = summarize_attack({**ps, "calib": calib}, torch.ones(5), n_boot=0)
    want = robust_accuracy(-ps["clean_msp"][calib], -ps["clean_msp"][~calib], -ps["adv_msp"][~calib],
                           ps["success"][~calib])
    assert metrics["robust_acc_at_5fpr/msp"] == want["robust_acc"]
    assert metrics["clean_acc_lost_at_5fpr/msp"] == want["clean_acc_lost"]
    same, _ = summarize_attack(ps, torch.ones(5), n_boot=0)
    assert same["clean_acc_lost_at_5fpr/msp"] <= 0.05  # in-sample: at most the budget


def test_the_analysis_checks_and_resolves_the_adaptive_entries():
    from fsl.analysis.studies.adversarial import AdversarialAnalysis, resolve_suite

    problems = AdversarialAnalysis.config_problems(
        "analysis.adversarial", {"adaptive": {"lambda": [1.0]}, "supervised": {"fit_frac": 0.2},
                                 "only": ["adaptive_knn", "adaptive_lid", "adaptiv_knn"], "threshold_split": "x"},
        "mnist")
    assert problems == ["analysis.adversarial.adaptive.lambda: unknown option; did you mean 'lambdas'?",
                        "analysis.adversarial.supervised.fit_frac: unknown option; did you mean 'fit_fraction'?",
                        "analysis.adversarial.threshold_split: 'x' must be 'half' or 'same'",
                        "analysis.adversarial.only: unknown name 'adaptiv_knn'; did you mean 'adaptive_knn'?"]
    suite = resolve_suite(None, ["pgd_03", "adaptive_knn"], "mnist", None, ["msp", "knn"])
    assert list(suite) == ["pgd_03", "adaptive_knn"] and suite["adaptive_knn"]["target"] == "knn"
    assert "adaptive_msp" in resolve_suite(None, None, "mnist", None, ["msp", "knn"])
