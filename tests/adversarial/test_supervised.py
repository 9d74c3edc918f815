"""The supervised multi-layer detectors: LID (Ma et al., arXiv 1801.02613) and the multi-layer Mahalanobis
detector (Lee et al., arXiv 1807.03888), their logistic regression, and the fit / score split."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fsl.adversarial.detectors import build_detector
from fsl.adversarial.detectors._layers import LogisticRegression, SupervisedLayerDetector
from fsl.adversarial.detectors.lid import lid_mle
from fsl.adversarial.evaluate import Detectors, evaluate_attack
from fsl.adversarial.supervised import fit_supervised_detectors, noisy_like, split_fit_rows
from tests.adversarial.toys import noise_setting


def _brute_lid(points: np.ndarray, ref: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    out = []
    for i, p in enumerate(points):
        d = sorted(math.dist(p, r) for j, r in enumerate(ref) if not (skip_self and i == j))[:k]
        out.append(-1.0 / (sum(math.log(r / d[-1]) for r in d) / k))
    return np.array(out)


def test_lid_matches_the_brute_force_estimator():
    g = torch.Generator().manual_seed(0)
    ref, x = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    got = lid_mle(torch.cdist(x, ref), k=6)
    np.testing.assert_allclose(got.numpy(), _brute_lid(x.numpy(), ref.numpy(), 6, False), rtol=1e-10)
    # the detector's layer features: every layer against the reference batch; clean fit samples skip themselves
    det = build_detector("lid", k=6, batch=30)
    maps = {"a": ref, "b": ref[:, :3] * 2}
    det.prepare(maps, torch.zeros(30, dtype=torch.long))
    z = det.layer_features(maps, exclude_self=True)
    np.testing.assert_allclose(z[:, 0].numpy(), _brute_lid(ref.numpy(), ref.numpy(), 6, True), rtol=1e-10)
    np.testing.assert_allclose(z[:, 1].numpy(), _brute_lid(maps["b"].numpy(), maps["b"].numpy(), 6, True),
                               rtol=1e-10)


def test_mahalanobis_ml_layer_scores_match_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 3
    maps = {"s1": torch.randn(60, 4, generator=g, dtype=torch.float64) + labels[:, None],
            "s2": torch.randn(60, 2, 3, 3, generator=g, dtype=torch.float64)}
    det = build_detector("mahalanobis_ml", reg=0.0)
    from fsl.adversarial.detectors._layers import pool

    pooled = pool(maps)
    det.prepare(pooled, labels)
    queries = {k: v[:9] + 0.3 for k, v in pooled.items()}
    z = det.layer_features(queries)
    for col, name in enumerate(("s1", "s2")):
        f, q = pooled[name].numpy(), queries[name].numpy()
        mus = np.stack([f[labels.numpy() == c].mean(axis=0) for c in range(3)])
        centred = f - mus[labels.numpy()]
        prec = np.linalg.inv(centred.T @ centred / len(f))
        want = np.min([[float((v - m) @ prec @ (v - m)) for m in mus] for v in q], axis=1)
        np.testing.assert_allclose(z[:, col].numpy(), want, rtol=1e-8)
    assert pooled["s2"].shape == (60, 2) and torch.allclose(pooled["s2"], maps["s2"].mean(dim=(2, 3)))


def test_logistic_regression_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(2)
    z = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = ((z @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3
          + torch.randn(200, generator=g, dtype=torch.float64)) > 0).long()
    ours = LogisticRegression(C=0.5).fit(z, y)
    ref = sklearn.LogisticRegression(C=0.5, tol=1e-12, max_iter=10000).fit(z.numpy(), y.numpy())
    np.testing.assert_allclose(ours.weight.numpy(), ref.coef_[0], rtol=1e-5, atol=1e-7)
    assert float(ours.bias) == pytest.approx(float(ref.intercept_[0]), rel=1e-5, abs=1e-7)


def test_fit_and_score_rows_are_disjoint():
    fit, score = split_fit_rows(50, 0.3, seed=4)
    assert len(fit) == 15 and len(score) == 35 and not set(fit.tolist()) & set(score.tolist())
    assert sorted(fit.tolist() + score.tolist()) == list(range(50))
    assert torch.equal(split_fit_rows(50, 0.3, seed=4)[0], fit)  # seeded
    assert len(split_fit_rows(50, 0.0, seed=4)[0]) == 0
    x = torch.rand(4, 1, 5, 5)
    adv = (x + 0.05).clamp(0, 1)
    noisy = noisy_like(x, adv, seed=0)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1 and not torch.equal(noisy, x)


@pytest.fixture(scope="module")
def selu():
    return noise_setting("selu_mlp", 90, 100)


def test_the_analysis_fits_the_supervised_detectors_on_rows_it_never_scores(selu, monkeypatch):
    """The analysis' fit split: the supervised detectors see only its images, the attacks only the rest."""
    from fsl.analysis.studies.adversarial import fit_supervised

    model, x, y, f_tr, y_tr, geom = selu
    seen = []
    original = SupervisedLayerDetector.fit_supervised

    def spy(self, model, clean, noisy, adv, labels, batch_size=256):
        seen.extend([clean, noisy, adv])
        return original(self, model, clean, noisy, adv, labels, batch_size)

    monkeypatch.setattr(SupervisedLayerDetector, "fit_supervised", spy)
    det = Detectors.fit(model, f_tr, y_tr, geometry=geom, names=["msp"])
    analysis = SimpleNamespace(options={"supervised": {"fit_fraction": 0.4}}, batch_size=64,
                               attacks={"p": {"attack": "pgd", "eps": 0.2, "steps": 5}})
    attacked = torch.arange(0, 90, 2)  # positions among the evaluation samples
    ctx = SimpleNamespace(model=model, seed=3, data_name="synthetic")
    scored, note = fit_supervised(analysis, ctx, det, x, y, attacked)
    assert set(det.names) == {"msp", "lid", "mahalanobis_ml"} and "`p` adversarial" in note[-1]
    assert set(scored.tolist()) < set(attacked.tolist()) and len(scored) == 27
    fit_pos = sorted(set(attacked.tolist()) - set(scored.tolist()))
    clean_seen = torch.cat(seen[0::3])
    # every clean image a detector saw is a fit sample; no scored image (clean, noisy or adversarial) is
    assert all(any(torch.equal(c, x[p]) for p in fit_pos) for c in clean_seen)
    for img in torch.cat(seen):
        assert not any(torch.equal(img, x[p]) for p in scored.tolist())


def test_adaptive_attack_on_the_supervised_detectors(selu):
    """Fitted on PGD, scored on held-out PGD (AUROC high); the adaptive attack on each lowers it."""
    model, x, y, f_tr, y_tr, geom = selu
    det = Detectors.fit(model, f_tr, y_tr, geometry=geom, names=["msp"])
    info = fit_supervised_detectors(det, model, x[:40], y[:40], "pgd", {"eps": 0.2, "steps": 10},
                                    params={"lid": {"k": 10, "batch": 40}}, seed=0)
    assert info["n_fit"] == 40 and det["lid"].fit_info["layers"] == ["layers.0", "layers.1", "layers.2", "layers.3"]
    budget = dict(eps=0.2, steps=10)
    plain = evaluate_attack(model, x[40:], y[40:], f_tr, y_tr, attack="pgd", detectors=det, n_boot=0, **budget)
    for name in ("lid", "mahalanobis_ml"):
        adapt = evaluate_attack(model, x[40:], y[40:], f_tr, y_tr, attack="adaptive", detectors=det, target=name,
                                n_boot=0, variants=["sum", "selective"], lambdas=[1.0], **budget).metrics
        assert plain.metrics[f"auroc/{name}"] > 0.7, name
        assert adapt["success_rate"] >= 0.9 and adapt[f"auroc/{name}"] < plain.metrics[f"auroc/{name}"] - 0.2, name


def test_mahalanobis_ml_input_preprocessing_lowers_every_layer_distance(selu):
    """Lee et al.'s preprocessing moves each input against the gradient of that layer's distance."""
    from fsl.adversarial.detectors._layers import pooled_maps

    model, x, y, f_tr, y_tr, geom = selu
    det = build_detector("mahalanobis_ml", noise=0.002)
    det.fit_supervised(model, x[:40], x[:40].flip(0), (x[:40] + 0.1).clamp(0, 1), y[:40])
    raw = det.layer_features(pooled_maps(model, x[40:]))
    moved = det.layer_features(det.maps_of(x[40:]))
    assert moved.shape == raw.shape == (50, 4) and bool((moved.mean(dim=0) < raw.mean(dim=0)).all())
    assert torch.isfinite(det.value_images(x[40:], None, None)).all()
