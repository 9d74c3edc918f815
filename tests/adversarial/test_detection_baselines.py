"""Baseline detection scores (energy, kNN, fDBD, MSP) and the AUPR / FPR95 / bootstrap metrics of
fsl.adversarial.metrics, against pytorch-ood, sklearn and brute-force references."""
import importlib
import importlib.util
import math
import pathlib
import sys
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from fsl.adversarial.detectors import (DETECTORS, KNNDetector, energy_score, fdbd_score, fit_fdbd, knn_score,
                                       msp_score)
from fsl.adversarial.metrics import (BOOTSTRAP_METRICS, bootstrap_ci, bootstrap_indices, bootstrap_replicates,
                                     detection_metrics, detection_table)


# ------------------------------------------------------------------------------------ pytorch-ood
@pytest.fixture(scope="module")
def ood():
    """pytorch-ood's detector modules, loaded without its package ``__init__`` (which imports
    torchvision); ``sys.modules`` is restored afterwards."""
    spec = importlib.util.find_spec("pytorch_ood")  # top-level: locates the folder, runs nothing
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pytorch-ood is not installed (the Makefile installs pytorch-ood==0.4.0 --no-deps)")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    if not (root / "detector" / "fdbd.py").is_file():
        pytest.skip(f"pytorch-ood at {root} has no detector/fdbd.py (need pytorch-ood 0.4.0)")
    saved = {k: v for k, v in sys.modules.items() if k == "pytorch_ood" or k.startswith("pytorch_ood.")}
    for name, path in [("pytorch_ood", root), ("pytorch_ood.detector", root / "detector")]:
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        sys.modules[name] = stub
    try:
        yield {name: importlib.import_module(f"pytorch_ood.detector.{name}")
               for name in ("fdbd", "knn", "energy", "softmax")}
    finally:
        for k in [k for k in sys.modules if k == "pytorch_ood" or k.startswith("pytorch_ood.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_energy_and_msp_match_pytorch_ood(ood):
    logits = _rand(200, 10, seed=1, scale=4.0)
    for t in (1.0, 2.5):
        ref = ood["energy"].EnergyBased.score(logits, t=t).double()
        ours = energy_score(logits, temperature=t)
        assert ours.dtype == torch.float64 and ours.shape == (200,)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    ref = ood["softmax"].MaxSoftmax.score(logits).double()
    torch.testing.assert_close(msp_score(logits), ref, rtol=1e-5, atol=0)
    # hand value: -logsumexp(0, log 3) = -log 4
    assert float(energy_score(torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64))) == pytest.approx(-math.log(4.0), abs=1e-15)


def test_knn_matches_pytorch_ood(ood):
    train, test = _rand(500, 16, seed=2), _rand(120, 16, seed=3) * 1.5 + 0.3
    for k in (1, 50):
        det = ood["knn"].KNN(None, k=k).fit_features(train, torch.zeros(500, dtype=torch.long))
        ref = det.predict_features(test).double()
        ours = knn_score(test, train, k=k, chunk=37)  # several query blocks
        assert ours.dtype == torch.float64 and ours.shape == (120,)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)


def test_fdbd_matches_pytorch_ood(ood):
    head = torch.nn.Linear(12, 7)
    with torch.no_grad():
        head.weight.copy_(_rand(7, 12, seed=4))
        head.bias.copy_(_rand(7, seed=5))
    train, test = _rand(300, 12, seed=6) + 0.5, _rand(150, 12, seed=7) * 2
    ref = ood["fdbd"].fDBD(encoder=None, head=head).fit_features(train).predict_features(test).double()
    ours = fdbd_score(test, head.weight.detach(), head.bias.detach(), fit_fdbd(train))
    assert ours.dtype == torch.float64 and ours.shape == (150,)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------ kNN, fDBD
def _knn_brute(x, train, k):
    def unit(v):
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.maximum(n, 1e-12)
    d = np.sqrt(((unit(x)[:, None, :] - unit(train)[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k - 1]


def test_knn_brute_force_with_ties_and_k_equal_n():
    base = _rand(8, 5, seed=8).double()
    # duplicates and positive multiples normalise to the same point: tied neighbour distances
    train = torch.cat([base, base[:3], 2.5 * base[3:6], torch.zeros(1, 5)])  # N = 15, one zero vector
    test = torch.cat([_rand(10, 5, seed=9).double(), base[:2], torch.zeros(1, 5)])
    n = train.shape[0]
    for k in (1, 2, 4, 9, n):
        ref = _knn_brute(test.numpy(), train.numpy(), k)
        np.testing.assert_allclose(knn_score(test, train, k=k, chunk=4).numpy(), ref, rtol=1e-13, atol=1e-15)
    # the zero query vector stays zero: distance 1 to every unit vector, 0 to the zero training vector
    assert float(knn_score(torch.zeros(1, 5), train, k=1)) == 0.0
    assert float(knn_score(torch.zeros(1, 5), train, k=2)) == pytest.approx(1.0, abs=1e-15)
    # an exact training point (duplicated) is at distance 0 from its two copies
    assert knn_score(base[:1], train, k=2).item() == pytest.approx(0.0, abs=1e-15)
    det = KNNDetector(train, k=3)
    torch.testing.assert_close(det.score(test), knn_score(test, train, k=3), rtol=0, atol=0)
    unnorm = knn_score(test, train, k=3, normalize=False)
    ref = np.sort(np.linalg.norm(test.numpy()[:, None] - train.numpy()[None], axis=-1), axis=1)[:, 2]
    np.testing.assert_allclose(unnorm.numpy(), ref, rtol=1e-13)


def test_knn_bad_k_and_inputs_raise():
    train = _rand(15, 5, seed=10)
    with pytest.raises(ValueError, match=r"k=16 .*number of training features \(15\).*k <= 15"):
        knn_score(train, train, k=16)
    with pytest.raises(ValueError, match="k=0"):
        knn_score(train, train, k=0)
    with pytest.raises(ValueError, match="dims"):
        knn_score(_rand(3, 4), train, k=2)
    bad = train.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        knn_score(bad, train, k=2)
    with pytest.raises(ValueError, match="non-finite"):
        KNNDetector(bad, k=2)


def test_fdbd_hand_computed_2d():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    b = torch.tensor([0.0, 0.5, 0.0])
    mu = fit_fdbd(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    assert mu.tolist() == [1.0, 1.0]
    f = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    # f1: z = (2, 1.5, -2), p = 0; boundary 0|1 is x - y = 0.5 (distance 0.5/sqrt2), 0|2 is x = 0 (2);
    #     ||f1 - mu|| = 1
    # f2: z = (0, 3.5, 0), p = 1; |z_1 - z_c| = 3.5 for both, ||w_1 - w_c|| = sqrt2; ||f2 - mu|| = sqrt5
    s2 = math.sqrt(2.0)
    expected = [-(2.0 + 0.5 / s2) / 2.0, -(3.5 / s2 + 3.5 / s2) / (2.0 * math.sqrt(5.0))]
    got = fdbd_score(f, w, b, mu)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-15)
    # at the mean (z = (1, 1.5, -1), p = 1) the distance ||f - mu|| = 0 is clamped at 1e-8
    assert float(fdbd_score(mu[None], w, b, mu)) == pytest.approx(-(0.5 / s2 + 2.5 / s2) / 2.0 / 1e-8, rel=1e-12)
    # bias None = zero bias
    np.testing.assert_allclose(fdbd_score(f, w, None, mu).numpy(),
                               fdbd_score(f, w, torch.zeros(3), mu).numpy(), rtol=0)


def test_fdbd_identical_weights_and_bad_inputs_raise():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"classes \(0, 2\) have identical weight vectors"):
        fdbd_score(torch.ones(3, 2), w, None, torch.zeros(2))
    w_ok = torch.eye(2)
    with pytest.raises(ValueError, match="non-finite"):
        fdbd_score(torch.tensor([[float("nan"), 0.0]]), w_ok, None, torch.zeros(2))
    with pytest.raises(ValueError, match="weight"):
        fdbd_score(torch.ones(2, 3), w_ok, None, torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        fit_fdbd(torch.tensor([[float("inf"), 0.0]]))


def test_detector_order_and_nan_logits():
    assert DETECTORS.names() == ("margin", "ambiguity", "msp", "energy", "mahalanobis", "knn", "fdbd", "lid",
                                 "mahalanobis_ml")
    with pytest.raises(ValueError, match="non-finite"):
        energy_score(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="temperature"):
        energy_score(torch.zeros(1, 2), temperature=0.0)


# ------------------------------------------------------------------------------------ metrics
def _tied_scores(seed, n_c, n_a, shift=0.7, grid=4.0):
    g = torch.Generator().manual_seed(seed)
    c = torch.round(torch.randn(n_c, generator=g, dtype=torch.float64) * grid) / grid
    a = torch.round((torch.randn(n_a, generator=g, dtype=torch.float64) + shift) * grid) / grid
    return c, a


def _fpr95_sweep(c, a):
    c, a = np.asarray(c), np.asarray(a)
    best = np.inf
    for t in np.concatenate([[np.inf], np.unique(np.concatenate([c, a]))]):
        if (a >= t).mean() >= 0.95:
            best = min(best, (c >= t).mean())
    return best


@pytest.mark.parametrize("seed,n_c,n_a", [(0, 40, 20), (1, 57, 83), (2, 200, 37), (3, 5, 3)])
def test_aupr_and_fpr95_against_sklearn_and_sweep(seed, n_c, n_a):
    c, a = _tied_scores(seed, n_c, n_a)
    assert torch.unique(torch.cat([c, a])).numel() < n_c + n_a  # ties are present
    m = detection_metrics(c, a)
    y = np.r_[np.zeros(n_c), np.ones(n_a)]
    s = np.r_[c.numpy(), a.numpy()]
    assert m["aupr_out"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m["fpr_at_95tpr"] == pytest.approx(_fpr95_sweep(c, a), abs=1e-15)


def test_perfectly_separated_and_fully_tied():
    c, a = torch.arange(30.0), torch.arange(30.0) + 100
    m = detection_metrics(c, a)
    assert (m["auroc"], m["aupr_in"], m["aupr_out"], m["fpr_at_95tpr"], m["tpr_at_5fpr"]) == (1.0, 1.0, 1.0, 0.0, 1.0)
    m = detection_metrics(-c, -a)  # perfectly inverted
    assert m["auroc"] == 0.0 and m["fpr_at_95tpr"] == 1.0
    m = detection_metrics(torch.zeros(30), torch.zeros(10))
    assert m["auroc"] == 0.5 and m["fpr_at_95tpr"] == 1.0 and m["tpr_at_5fpr"] == 0.0
    assert m["aupr_out"] == pytest.approx(10 / 40, abs=1e-15) and m["aupr_in"] == pytest.approx(30 / 40, abs=1e-15)


def test_empty_and_nan_scores():
    m = detection_metrics(torch.randn(5), torch.empty(0))
    assert all(math.isnan(m[k]) for k in ("aupr_in", "aupr_out", "fpr_at_95tpr"))
    ci = bootstrap_ci(torch.empty(0), torch.randn(4), n_boot=10)
    assert set(ci) == {f"{k}_{e}" for k in BOOTSTRAP_METRICS for e in ("lo", "hi")}
    assert all(math.isnan(v) for v in ci.values())
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(torch.tensor([0.0, float("nan")]), torch.tensor([1.0]), n_boot=10)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(torch.randn(3), torch.randn(3), n_boot=0)


# ------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_equals_reference_loop():
    c, a = _tied_scores(4, 50, 30, shift=0.5)
    n_boot, seed, fpr = 40, 7, 0.1
    idx_c, idx_a = bootstrap_indices(50, 30, n_boot=n_boot, seed=seed)
    assert idx_c.shape == (n_boot, 50) and idx_a.shape == (n_boot, 30)
    reps = bootstrap_replicates(c, a, n_boot=n_boot, seed=seed, fpr=fpr)
    ref = {k: np.array([detection_metrics(c[idx_c[b]], a[idx_a[b]], fpr)[k] for b in range(n_boot)])
           for k in BOOTSTRAP_METRICS}
    for k in BOOTSTRAP_METRICS:
        np.testing.assert_allclose(reps[k].numpy(), ref[k], rtol=0, atol=1e-12, err_msg=k)
        assert np.ptp(ref[k]) > 0, k  # the replicates differ: the comparison has teeth
    ci = bootstrap_ci(c, a, n_boot=n_boot, level=0.9, seed=seed, fpr=fpr)
    for k in BOOTSTRAP_METRICS:
        lo, hi = np.quantile(ref[k], [0.05, 0.95])
        assert ci[f"{k}_lo"] == pytest.approx(lo, abs=1e-12) and ci[f"{k}_hi"] == pytest.approx(hi, abs=1e-12)


def test_bootstrap_repeatable_thread_independent_and_covers_point():
    g = torch.Generator().manual_seed(11)
    c = torch.randn(1000, generator=g, dtype=torch.float64)
    a = torch.randn(1000, generator=g, dtype=torch.float64) + 1.5
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bootstrap_ci(c, a, n_boot=300, seed=3)
        torch.set_num_threads(2)
        two = bootstrap_ci(c, a, n_boot=300, seed=3)
    finally:
        torch.set_num_threads(threads)
    assert one == two and bootstrap_ci(c, a, n_boot=300, seed=3) == one
    assert bootstrap_ci(c, a, n_boot=300, seed=4) != one
    point = detection_metrics(c, a)
    for k in BOOTSTRAP_METRICS:
        assert one[f"{k}_lo"] < point[k] < one[f"{k}_hi"], k
    assert 0.01 < one["auroc_hi"] - one["auroc_lo"] < 0.06  # sd of the AUROC ~ 0.01 at this size


def test_detection_table_keys_and_intervals():
    c, a = _tied_scores(5, 80, 60)
    flat, curves = detection_table({"x": (c, a), "y": (a, c)}, n_boot=50, seed=2)
    short = ("auroc", "tpr5", "aupr_in", "aupr_out", "fpr95")
    expected = {f"{m}/{n}" for m in short + ("threshold",) for n in "xy"}
    expected |= {f"{m}_{e}/{n}" for m in short for e in ("lo", "hi") for n in "xy"}
    assert set(flat) == expected
    m = detection_metrics(c, a)
    assert flat["aupr_in/x"] == m["aupr_in"] and flat["aupr_out/x"] == m["aupr_out"]
    assert flat["fpr95/x"] == m["fpr_at_95tpr"]
    ci = bootstrap_ci(c, a, n_boot=50, seed=2)
    assert flat["auroc_lo/x"] == ci["auroc_lo"] and flat["fpr95_hi/x"] == ci["fpr_at_95tpr_hi"]
    assert flat["tpr5_hi/y"] == bootstrap_ci(a, c, n_boot=50, seed=2)["tpr_at_5fpr_hi"]
    plain, _ = detection_table({"x": (c, a)})
    assert set(plain) == {f"{m}/x" for m in short + ("threshold",)}
