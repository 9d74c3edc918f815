"""Gradients of the exact flip distances (fsl.geometry.differentiable_flip_distances): torch
gradcheck in float64 (with active bounds and several active constraints), agreement with
cvxpylayers on the same QPs, and the two-class closed form."""
import pytest
import torch

from fsl.geometry import flip_margins
from fsl.geometry.differentiable import differentiable_flip_distances, differentiable_flip_points

D64 = torch.float64


def problem(seed, f=5, n=4, B=6, bounded=False):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, f, generator=g, dtype=D64)
    b = torch.randn(n, generator=g, dtype=D64)
    if bounded:  # small positive features: the flip points hit the bound y >= 0
        return 0.2 + 0.3 * torch.rand(B, f, generator=g, dtype=D64), W, b
    return torch.randn(B, f, generator=g, dtype=D64), W, b


def finite_sum(X, W, b, lo, weights):
    d = differentiable_flip_distances(X, W, b, lower=lo).distances
    keep = torch.isfinite(d)
    return (torch.where(keep, d, torch.zeros_like(d)) * weights).sum()


@pytest.mark.parametrize("bounded", [False, True])
def test_gradcheck(bounded):
    X, W, b = problem(4, bounded=bounded)
    lo = 0.0 if bounded else None
    res = flip_margins(X, W, b, lower=lo, return_points=True)
    if bounded:  # the test covers active bounds and pairs with more than one active constraint
        assert int((res.points == 0).sum()) >= 10
    assert bool(((res.multipliers.abs() > 1e-9).sum(2) >= 2).any())
    weights = torch.rand(X.shape[0], W.shape[0], generator=torch.Generator().manual_seed(2), dtype=D64)
    Xr, Wr, br = (t.clone().requires_grad_(True) for t in (X, W, b))
    assert torch.autograd.gradcheck(lambda x, w, c: finite_sum(x, w, c, lo, weights), (Xr, Wr, br),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_two_class_closed_form():
    # two classes, no box: d = |(w0 - w1).x + b0 - b1| / ||w0 - w1||
    g = torch.Generator().manual_seed(4)
    W, b, X = torch.randn(2, 3, generator=g, dtype=D64), torch.randn(2, generator=g, dtype=D64), \
        torch.randn(5, 3, generator=g, dtype=D64)
    Xr, Wr, br = (t.clone().requires_grad_(True) for t in (X, W, b))
    res = differentiable_flip_distances(Xr, Wr, br)
    res.margin.sum().backward()
    Xc, Wc, bc = (t.clone().requires_grad_(True) for t in (X, W, b))
    a = Wc[0] - Wc[1]
    closed = ((Xc @ a + bc[0] - bc[1]).abs() / a.norm()).sum()
    closed.backward()
    torch.testing.assert_close(res.margin.sum(), closed.detach(), rtol=0, atol=1e-12)
    for got, want in ((Xr.grad, Xc.grad), (Wr.grad, Wc.grad), (br.grad, bc.grad)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_nonsmooth_pairs_get_zero_and_are_flagged():
    # class 2 never borders class 0 inside y >= 0 (its boundary lies in the negative orthant)
    W = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-5.0, -5.0]], dtype=D64)
    b = torch.tensor([0.0, 0.5, -50.0], dtype=D64)
    X = torch.tensor([[2.0, 1.0]], dtype=D64, requires_grad=True)
    res = differentiable_flip_distances(X, W, b, lower=0.0)
    assert res.pred.tolist() == [0] and torch.isinf(res.distances[0, 2]) and bool(res.nonsmooth[0, 2])
    assert not bool(res.nonsmooth[0, 1]) and not bool(res.nonsmooth[0, 0])
    d = res.distances[0, 1:]
    torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum().backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


def cvxpylayers_flip_pairs(X, W, b):
    """For every finite pair (s, j) of the box-constrained (y >= 0) flip QP: cvxpylayers (Clarabel,
    tolerances 1e-12) solves it with fresh leaf copies of x_s, W, b; yields (s, j, xs, Ws, bs, y)."""
    cp = pytest.importorskip("cvxpy")
    layers = pytest.importorskip("cvxpylayers.torch")
    res = flip_margins(X, W, b, lower=0.0)
    f = W.shape[1]
    for s in range(X.shape[0]):
        i = int(res.pred[s])
        for j in range(W.shape[0]):
            if j == i or not torch.isfinite(res.distances[s, j]):
                continue
            others = [k for k in range(W.shape[0]) if k not in (i, j)]
            y, x = cp.Variable(f), cp.Parameter(f)
            A, c = cp.Parameter((len(others), f)), cp.Parameter(len(others))
            aj, cj = cp.Parameter(f), cp.Parameter()
            prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x)), [aj @ y + cj == 0, A @ y + c >= 0, y >= 0])
            layer = layers.CvxpyLayer(prob, parameters=[x, A, c, aj, cj], variables=[y],
                                      solver_args={"solve_method": "Clarabel", "tol_gap_abs": 1e-12,
                                                   "tol_gap_rel": 1e-12, "tol_feas": 1e-12})
            xs, Ws, bs = (t.clone().requires_grad_(True) for t in (X[s], W, b))
            ys, = layer(xs, Ws[i] - Ws[others], bs[i] - bs[others], Ws[i] - Ws[j], bs[i] - bs[j])
            yield s, j, xs, Ws, bs, ys


def test_agrees_with_cvxpylayers():
    X, W, b = problem(4, B=3, bounded=True)
    for s, j, xs, Ws, bs, ys in cvxpylayers_flip_pairs(X, W, b):
        (ys - xs).norm().backward()
        xo, Wo, bo = (t.clone().requires_grad_(True) for t in (X, W, b))
        differentiable_flip_distances(xo, Wo, bo, lower=0.0).distances[s, j].backward()
        torch.testing.assert_close(xo.grad[s], xs.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(Wo.grad, Ws.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(bo.grad, bs.grad, rtol=0, atol=1e-6)


def hull_problem(seed=0, f=3, N=7, Q=5):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(N, f, generator=g, dtype=D64)
    Qs = 1.5 * torch.randn(Q, f, generator=g, dtype=D64)
    Qs[0] = D[:3].mean(0)  # inside the hull
    Qs[1] = D[0] + 3.0 * (D[0] - D.mean(0))  # outside, beyond a vertex
    return Qs, D


def hull_layer(N, f):
    """cvxpylayers (Clarabel, tolerances 1e-12) on min 1/2 ||q - D^T a||^2 over the simplex: the weights a."""
    cp = pytest.importorskip("cvxpy")
    layers = pytest.importorskip("cvxpylayers.torch")
    a, q, Dp = cp.Variable(N), cp.Parameter(f), cp.Parameter((N, f))
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(q - Dp.T @ a)), [a >= 0, cp.sum(a) == 1])
    return layers.CvxpyLayer(prob, parameters=[q, Dp], variables=[a],
                             solver_args={"solve_method": "Clarabel", "tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12,
                                          "tol_feas": 1e-12})


def test_hull_gradcheck_queries_and_points():
    from fsl.geometry import hull_distances
    from fsl.geometry.differentiable import differentiable_hull_distances

    Qs, D = hull_problem()
    res = hull_distances(Qs, D, tol=1e-13)
    sizes = (res.support_index >= 0).sum(1)
    assert res.certified[1:].all() and {1, 2, 3} <= set(sizes[1:].tolist())  # projections on a vertex, edge, face
    assert hull_distances(Qs, D).inside.tolist() == [True, False, False, False, False]
    out = differentiable_hull_distances(Qs, D)
    assert out.nonsmooth.tolist() == [True, False, False, False, False]
    Qr, Dr = Qs[1:].clone().requires_grad_(True), D.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, d: differentiable_hull_distances(q, d, tol=1e-13).distance,
                                    (Qr, Dr), eps=1e-6, atol=1e-6, rtol=1e-5)
    Qi = Qs[:1].clone().requires_grad_(True)
    differentiable_hull_distances(Qi, D).distance.sum().backward()
    assert torch.equal(Qi.grad, torch.zeros_like(Qi))  # inside: the documented subgradient 0


def test_hull_gradients_agree_with_cvxpylayers():
    from fsl.geometry.differentiable import differentiable_hull_distances

    Qs, D = hull_problem(seed=5)
    layer = hull_layer(*D.shape)
    for s in range(1, Qs.shape[0]):
        qs, Ds = Qs[s].clone().requires_grad_(True), D.clone().requires_grad_(True)
        aw, = layer(qs, Ds)
        (qs - Ds.T @ aw).norm().backward()
        qo, Do = Qs[s:s + 1].clone().requires_grad_(True), D.clone().requires_grad_(True)
        differentiable_hull_distances(qo, Do, tol=1e-13).distance.sum().backward()
        torch.testing.assert_close(qo.grad[0], qs.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(Do.grad, Ds.grad, rtol=0, atol=1e-6)


# ---- flip points and hull projections: implicit differentiation on the active set ----

def finite_points(X, W, b, lo, weights):
    out = differentiable_flip_points(X, W, b, lower=lo)
    keep = ~out.nonsmooth & torch.isfinite(out.distances)
    return (torch.where(keep[..., None], out.points, torch.zeros_like(out.points)) * weights).sum()


@pytest.mark.parametrize("bounded", [False, True])
def test_flip_points_gradcheck(bounded):
    X, W, b = problem(4, bounded=bounded)
    lo = 0.0 if bounded else None
    out = differentiable_flip_points(X, W, b, lower=lo)
    ref = flip_margins(X, W, b, lower=lo, return_points=True)
    fin = torch.isfinite(ref.distances)
    torch.testing.assert_close(out.points[fin], ref.points[fin], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.distances[fin], ref.distances[fin], rtol=0, atol=1e-12)
    assert not bool(out.degenerate.any())  # random problems: strict complementarity
    weights = torch.rand(*out.points.shape, generator=torch.Generator().manual_seed(3), dtype=D64)
    Xr, Wr, br = (t.clone().requires_grad_(True) for t in (X, W, b))
    assert torch.autograd.gradcheck(lambda x, w, c: finite_points(x, w, c, lo, weights), (Xr, Wr, br),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_flip_point_distance_gradient_matches_the_envelope():
    X, W, b = problem(7, bounded=True)
    grads = []
    for fn in (differentiable_flip_points, differentiable_flip_distances):
        Xr, Wr, br = (t.clone().requires_grad_(True) for t in (X, W, b))
        d = fn(Xr, Wr, br, lower=0.0).distances
        torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum().backward()
        grads.append((Xr.grad, Wr.grad, br.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_flip_point_weakly_active_bound_is_flagged():
    # x sits exactly where the hyperplane projection touches the bound y1 = 0: the bound is active
    # with a zero multiplier (one-sided derivative)
    W = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D64)
    b = torch.tensor([0.0, 0.0], dtype=D64)
    X = torch.tensor([[1.0, 0.5], [1.0, 0.0]], dtype=D64, requires_grad=True)
    out = differentiable_flip_points(X, W, b, lower=0.0)
    assert out.pred.tolist() == [0, 0]
    torch.testing.assert_close(out.points[:, 1].detach(), torch.tensor([[0.0, 0.5], [0.0, 0.0]], dtype=D64))
    assert out.degenerate[:, 1].tolist() == [True, True] and not bool(out.nonsmooth.any())
    out.points[0, 1, 1].backward()  # the free coordinate follows x: dy1/dx1 = 1
    torch.testing.assert_close(X.grad[0], torch.tensor([0.0, 1.0], dtype=D64))


def test_flip_points_agree_with_cvxpylayers():
    X, W, b = problem(4, B=2, bounded=True)
    v = torch.randn(W.shape[1], generator=torch.Generator().manual_seed(9), dtype=D64)
    checked = 0
    for s, j, xs, Ws, bs, ys in cvxpylayers_flip_pairs(X, W, b):
        (ys @ v).backward()
        xo, Wo, bo = (t.clone().requires_grad_(True) for t in (X, W, b))
        (differentiable_flip_points(xo, Wo, bo, lower=0.0).points[s, j] @ v).backward()
        torch.testing.assert_close(xo.grad[s], xs.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(Wo.grad, Ws.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(bo.grad, bs.grad, rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 4


def test_hull_projection_gradcheck_and_inside():
    from fsl.geometry import hull_distances
    from fsl.geometry.differentiable import differentiable_hull_projections

    Qs, D = hull_problem()
    out = differentiable_hull_projections(Qs[1:], D, tol=1e-13)
    ref = hull_distances(Qs[1:], D, tol=1e-13)
    torch.testing.assert_close(out.projection, ref.projection.to(D64), rtol=0, atol=1e-9)
    torch.testing.assert_close(out.distance, ref.distance.to(D64), rtol=0, atol=1e-9)
    assert not bool(out.nonsmooth.any()) and not bool(out.degenerate.any())
    inside = differentiable_hull_projections(Qs[:1], D)
    assert inside.degenerate.tolist() == [True] and inside.distance.tolist() == [0.0]
    v = torch.randn(Qs.shape[1], generator=torch.Generator().manual_seed(1), dtype=D64)
    Qr, Dr = Qs[1:].clone().requires_grad_(True), D.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, d: differentiable_hull_projections(q, d, tol=1e-13).projection @ v,
                                    (Qr, Dr), eps=1e-6, atol=1e-6, rtol=1e-5)
    # a vertex projection does not move with the query; an inside query moves with itself
    Qi = Qs[:2].clone().requires_grad_(True)
    differentiable_hull_projections(Qi, D).projection.sum().backward()
    assert torch.equal(Qi.grad[1], torch.zeros_like(Qi.grad[1]))
    torch.testing.assert_close(Qi.grad[0], torch.ones_like(Qi.grad[0]), rtol=0, atol=1e-9)


def test_hull_projections_agree_with_cvxpylayers():
    from fsl.geometry.differentiable import differentiable_hull_projections

    Qs, D = hull_problem(seed=5)
    f = D.shape[1]
    layer = hull_layer(*D.shape)
    v = torch.randn(f, generator=torch.Generator().manual_seed(2), dtype=D64)
    for s in range(1, Qs.shape[0]):
        qs, Ds = Qs[s].clone().requires_grad_(True), D.clone().requires_grad_(True)
        aw, = layer(qs, Ds)
        ((Ds.T @ aw) @ v).backward()
        qo, Do = Qs[s:s + 1].clone().requires_grad_(True), D.clone().requires_grad_(True)
        (differentiable_hull_projections(qo, Do, tol=1e-13).projection[0] @ v).backward()
        torch.testing.assert_close(qo.grad[0], qs.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(Do.grad, Ds.grad, rtol=0, atol=1e-6)


def test_flip_points_closest_only_matches_all_pairs_there():
    X, W, b = problem(5, bounded=True)
    grads = []
    for closest_only in (False, True):
        Xr = X.clone().requires_grad_(True)
        out = differentiable_flip_points(Xr, W, b, lower=0.0, closest_only=closest_only)
        dd = torch.nan_to_num(out.distances.detach(), nan=float("inf"))
        cl = dd.argmin(1)
        out.points[torch.arange(X.shape[0]), cl].sum().backward()
        grads.append(Xr.grad)
        if closest_only:
            others = torch.ones_like(out.nonsmooth)
            others[torch.arange(X.shape[0]), cl] = False
            assert bool(out.nonsmooth[others & ~torch.isnan(out.distances.detach())].all())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
