"""fsl.geometry.flip_margins: exactness against cvxpy + Clarabel, degenerate cases, certificates."""
import math

import numpy as np
import pytest
import torch

from fsl.geometry import flip_margins
from fsl.models.base import SELU_LOWER

cp = pytest.importorskip("cvxpy")
from fsl.geometry import reference  # noqa: E402

D64 = torch.float64


ref_flip = reference.flip_distance


def check_constraints(res, X, W, b, lo=None, hi=None, tol=1e-8):
    """Every finite flip point satisfies every constraint to ``tol``; distances match."""
    B, n = res.distances.shape
    for s in range(B):
        i = int(res.pred[s])
        for j in range(n):
            if j == i or not torch.isfinite(res.distances[s, j]):
                continue
            y = res.points[s, j]
            z = W @ y + b
            assert abs(float(z[i] - z[j])) <= tol
            assert float((z[i] - z).min()) >= -tol
            if lo is not None:
                assert float((y - lo).min()) >= -tol
            if hi is not None:
                assert float((hi - y).min()) >= -tol
            assert abs(float((y - X[s]).norm()) - float(res.distances[s, j])) <= 1e-10


def problem(seed, f, n, B, bounded):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, f, generator=g, dtype=D64)
    b = torch.randn(n, generator=g, dtype=D64)
    X = torch.randn(B, f, generator=g, dtype=D64)
    if bounded:
        X = X.clamp_min(0.0)  # ReLU-like: many exact zeros
    return X, W, b


@pytest.mark.parametrize("bounded", [False, True])
def test_matches_cvxpy_random(bounded):
    worst = 0.0
    cases = [(0, 5, 3), (1, 12, 6), (2, 30, 10), (3, 64, 10), (4, 8, 10), (5, 3, 7)]
    for seed, f, n in cases:
        X, W, b = problem(seed, f, n, 3, bounded)
        lo = 0.0 if bounded else None
        res = flip_margins(X, W, b, lower=lo, return_points=True)
        assert res.certified.all(), res.stats
        for s in range(X.shape[0]):
            i = int(res.pred[s])
            for j in range(n):
                if j == i:
                    assert torch.isnan(res.distances[s, j])
                    continue
                ref = ref_flip(X[s].numpy(), W.numpy(), b.numpy(), i, j, lo)
                ours = float(res.distances[s, j])
                if math.isinf(ref) or math.isinf(ours):
                    assert math.isinf(ref) and math.isinf(ours), (seed, s, j, ref, ours)
                else:
                    worst = max(worst, abs(ref - ours))
                    assert abs(ref - ours) <= 1e-6, (seed, s, j, ref, ours)
        check_constraints(res, X, W, b, lo=0.0 if bounded else None)
        d = torch.nan_to_num(res.distances, nan=math.inf)
        assert torch.equal(res.margin, d.min(1).values)
    assert worst <= 1e-6


def test_box_both_sides_matches_cvxpy():
    X, W, b = problem(7, 10, 5, 4, False)
    lo = -torch.rand(10, dtype=D64, generator=torch.Generator().manual_seed(1)) - 0.2
    hi = torch.rand(10, dtype=D64, generator=torch.Generator().manual_seed(2)) + 0.2
    X = torch.maximum(torch.minimum(X, hi), lo)
    res = flip_margins(X, W, b, lower=lo, upper=hi, return_points=True)
    assert res.certified.all()
    for s in range(4):
        i = int(res.pred[s])
        for j in range(5):
            if j != i:
                ref = ref_flip(X[s].numpy(), W.numpy(), b.numpy(), i, j, lo.numpy(), hi.numpy())
                ours = float(res.distances[s, j])
                assert (math.isinf(ref) and math.isinf(ours)) or abs(ref - ours) <= 1e-6
    check_constraints(res, X, W, b, lo, hi)


# the 2-D example of the paper's Figure 1 kind: class 0 is the middle partition
W2 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=D64)
B2 = torch.tensor([0.0, -1.0, -1.5, -1.0, -1.0], dtype=D64)


def test_2d_hand_computed():
    x = torch.tensor([[0.8, 0.0]], dtype=D64)
    res = flip_margins(x, W2, B2, return_points=True)
    assert int(res.pred[0]) == 0
    # class 1: boundary x=1 at (1, 0); class 2: the hyperplane projection (1.15, 0.35) leaves the
    # partition (class 1 wins there), the flip point is the corner (1, 0.5); classes 3, 4: x=-1, y=-1
    expect = [math.nan, 0.2, math.sqrt(0.29), 1.8, 1.0]
    for j in range(1, 5):
        assert abs(float(res.distances[0, j]) - expect[j]) <= 1e-12
    assert torch.allclose(res.points[0, 2], torch.tensor([1.0, 0.5], dtype=D64), atol=1e-12)
    assert torch.allclose(res.points[0, 4], torch.tensor([0.8, -1.0], dtype=D64), atol=1e-12)
    assert float(res.margin[0]) == pytest.approx(0.2, abs=1e-12) and int(res.closest[0]) == 1
    # the relaxation is a strict lower bound for class 2 and is not what is returned
    assert float(res.lower_bound[0, 2]) == pytest.approx(0.7 / math.sqrt(2), abs=1e-12)
    assert float(res.distances[0, 2]) > float(res.lower_bound[0, 2]) + 0.04
    assert res.certified.all()


def test_2d_domain_removes_boundaries():
    """With the ReLU domain y >= 0, the boundaries with classes 3 (x=-1) and 4 (y=-1) do not exist."""
    x = torch.tensor([[0.8, 0.0]], dtype=D64)
    res = flip_margins(x, W2, B2, lower=0.0, return_points=True)
    assert torch.isinf(res.distances[0, 3]) and torch.isinf(res.distances[0, 4])
    assert res.certified[0].all()  # Farkas certificates verified
    assert torch.isnan(res.points[0, 3]).all()
    assert float(res.distances[0, 2]) == pytest.approx(math.sqrt(0.29), abs=1e-12)
    for j in (3, 4):
        assert math.isinf(ref_flip(x[0].numpy(), W2.numpy(), B2.numpy(), 0, j, lo=0.0))


def test_never_borders_unbounded_domain():
    """1-D: z0 = y, z1 = -y, z2 = 1: the 0|1 boundary y=0 lies inside class 2 (no boundary)."""
    W = torch.tensor([[1.0], [-1.0], [0.0]], dtype=D64)
    b = torch.tensor([0.0, 0.0, 1.0], dtype=D64)
    res = flip_margins(torch.tensor([[2.0]], dtype=D64), W, b)
    assert int(res.pred[0]) == 0
    assert torch.isinf(res.distances[0, 1]) and res.certified[0, 1]
    assert float(res.distances[0, 2]) == pytest.approx(1.0, abs=1e-12)
    assert math.isinf(ref_flip(np.array([2.0]), W.numpy(), b.numpy(), 0, 1))
    assert int(res.closest[0]) == 2


def test_ties_in_logits():
    x = torch.tensor([[1.0, 0.2]], dtype=D64)  # z0 = z1 = 0 exactly
    res = flip_margins(x, W2, B2, return_points=True)
    assert int(res.pred[0]) == 0
    assert float(res.distances[0, 1]) == 0.0 and float(res.margin[0]) == 0.0
    assert res.certified.all()
    # identical classes: every point is on their boundary; same w, other bias: never a boundary
    W = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=D64)
    b = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=D64)
    X = torch.tensor([[0.3, 0.4], [1.0, 0.5]], dtype=D64)
    assert (torch.addmm(b, X, W.T).argmax(1) == 0).all()
    r = flip_margins(X, W, b, return_points=True)
    assert (r.distances[:, 1] == 0).all() and torch.isinf(r.distances[:, 2]).all()
    assert r.certified.all()


def test_many_zeros_relu_and_selu_bounds():
    g = torch.Generator().manual_seed(3)
    f, n = 24, 6
    W = torch.randn(n, f, generator=g, dtype=D64)
    b = torch.randn(n, generator=g, dtype=D64)
    X = torch.relu(torch.randn(5, f, generator=g, dtype=D64) - 0.8)  # ~80% exact zeros
    assert (X == 0).float().mean() > 0.6
    for lo, Xs in [(0.0, X), (SELU_LOWER, X * 2 + SELU_LOWER * (X == 0))]:
        res = flip_margins(Xs, W, b, lower=lo, return_points=True)
        assert res.certified.all()
        active = 0
        for s in range(5):
            i = int(res.pred[s])
            for j in range(n):
                if j == i:
                    continue
                ref = ref_flip(Xs[s].numpy(), W.numpy(), b.numpy(), i, j, lo)
                ours = float(res.distances[s, j])
                assert (math.isinf(ref) and math.isinf(ours)) or abs(ref - ours) <= 1e-6
                if math.isfinite(ours):
                    active += int((res.points[s, j] <= lo + 1e-12).sum())
        assert active > 0  # the lower bound is active at the flip points
        check_constraints(res, Xs, W, b, lo=lo)


def test_relaxation_is_lower_bound():
    X, W, b = problem(11, 16, 8, 200, True)
    res = flip_margins(X, W, b, lower=0.0)
    mask = ~torch.isnan(res.distances)
    assert (res.distances[mask] >= res.lower_bound[mask] - 1e-12).all()
    # and it is not the answer: with the domain and the other classes it is often strictly smaller
    assert (res.distances[mask] > res.lower_bound[mask] + 1e-6).float().mean() > 0.2


@pytest.mark.parametrize("lo", [None, 0.0, SELU_LOWER])
def test_ball_keeps_class(lo):
    """Property: every point of B(x) ∩ domain has the predicted class of x."""
    g = torch.Generator().manual_seed(5)
    X, W, b = problem(5, 10, 6, 50, lo is not None)
    res = flip_margins(X, W, b, lower=lo)
    for s in range(50):
        u = torch.randn(400, 10, generator=g, dtype=D64)
        u = u / u.norm(dim=1, keepdim=True) * torch.rand(400, 1, generator=g, dtype=D64) ** 0.1
        pts = X[s] + 0.999 * float(res.margin[s]) * u
        if lo is not None:
            pts = pts.clamp_min(lo)  # the projection onto the domain stays inside the ball
        assert ((pts - X[s]).norm(dim=1) < float(res.margin[s])).all()
        assert ((pts @ W.T + b).argmax(1) == res.pred[s]).all()
    # and the ball is tight: the closest flip point flips (ties it)
    r2 = flip_margins(X[:5], W, b, lower=lo, return_points=True)
    for s in range(5):
        y = r2.points[s, int(r2.closest[s])]
        z = W @ y + b
        assert abs(float(z[int(r2.pred[s])] - z[int(r2.closest[s])])) < 1e-9


def test_float32_input_and_chunks():
    X, W, b = problem(9, 20, 7, 300, True)
    a = flip_margins(X, W, b, lower=0.0)
    c = flip_margins(X.float(), W.float(), b.float(), lower=0.0, chunk_size=37)
    assert c.distances.dtype == torch.float64
    a2 = flip_margins(X.float().double(), W.float().double(), b.float().double(), lower=0.0)
    assert torch.allclose(torch.nan_to_num(c.distances, nan=-1.0), torch.nan_to_num(a2.distances, nan=-1.0), atol=1e-12)
    assert a.certified.all() and c.certified.all()


@pytest.mark.parametrize("bounded", [False, True])
def test_margin_only_skips_pairs_and_keeps_the_margin(bounded):
    X, W, b = problem(11, 8, 10, 300, bounded)
    lo = 0.0 if bounded else None
    full = flip_margins(X, W, b, lower=lo, return_points=True)
    fast = flip_margins(X, W, b, lower=lo, return_points=True, margin_only=True)
    # the margin needs no dual solve (pruning by bounds: tests/geometry/test_flip_scale.py)
    assert fast.stats["skipped"] > 0 and fast.stats["newton"] == 0 and full.stats["newton"] > 0
    assert torch.equal(fast.margin, full.margin) and torch.equal(fast.closest, full.closest)
    exact = ~torch.isnan(fast.distances)
    assert torch.equal(fast.distances[exact], full.distances[exact])
    assert bool(fast.certified.all())
    rows = torch.arange(X.shape[0])[fast.closest >= 0]
    cl = fast.closest[rows]
    assert torch.equal(fast.points[rows, cl], full.points[rows, cl])
    skipped = torch.isnan(fast.distances) & ~torch.isnan(full.distances)
    assert int(skipped.sum()) == fast.stats["skipped"]
    # the reported bound of a skipped pair is below its true distance and not below the margin
    assert bool((fast.lower_bound[skipped] <= full.distances[skipped]).all())
    assert bool((fast.lower_bound[skipped] >= fast.margin[:, None].expand_as(skipped)[skipped]).all())
