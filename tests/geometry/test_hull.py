"""fsl.geometry.hull_distances: exactness against cvxpy + Clarabel, certificates, degenerate cases."""
import math

import pytest
import torch

from fsl.geometry import hull_distances

cp = pytest.importorskip("cvxpy")
from fsl.geometry import reference  # noqa: E402
D64 = torch.float64


ref_hull2 = reference.hull_distance_squared


def verify(res, Q, D, tol=1e-6):
    """Independent check of every returned certificate."""
    assert res.certified.all()
    K = res.support_index.shape[1]
    for k in range(Q.shape[0]):
        idx = res.support_index[k]
        w = res.support_weight[k]
        m = idx >= 0
        assert (w[m] > 0).all() and (w[~m] == 0).all()
        assert abs(float(w.sum()) - 1.0) <= 1e-12
        p = (w[m][:, None] * D[idx[m]]).sum(0)
        assert torch.allclose(p, res.projection[k], atol=1e-10)
        u = Q[k] - p
        gap = 2.0 * float((D @ u).max() - u @ p)  # Frank-Wolfe gap over ALL points
        assert gap <= float(res.gap[k]) * (1 + 1e-9) + 1e-12
        d2 = float(u @ u)
        assert abs(math.sqrt(d2) - float(res.distance[k])) <= 1e-12
        R = res.stats["R"]
        assert gap <= tol * max(d2, (1e-3 * R) ** 2) * (1 + 1e-9)
        assert float(res.lower_bound[k]) <= float(res.distance[k]) + 1e-15
    assert K >= 1


def assert_matches_cvxpy(res, Q, D, rows, atol=1e-8):
    """Squared distances of ``rows`` agree with cvxpy + Clarabel to ``atol``."""
    for k in rows:
        assert abs(float(res.distance[k]) ** 2 - ref_hull2(Q[k].numpy(), D.numpy())) <= atol, k


@pytest.mark.parametrize("f,N", [(5, 40), (16, 60), (64, 120), (30, 12)])
def test_matches_cvxpy(f, N):
    g = torch.Generator().manual_seed(f * 1000 + N)
    D = torch.randn(N, f, generator=g, dtype=D64)
    Q = torch.cat([torch.randn(4, f, generator=g, dtype=D64) * 2.0,
                   0.5 * D[:2] + 0.5 * D[2:4],           # inside (on a segment)
                   D[:1],                                # a training point
                   D[:5].mean(0, keepdim=True)])         # inside (barycentre)
    res = hull_distances(Q, D)
    verify(res, Q, D)
    for k in range(Q.shape[0]):
        ref2 = ref_hull2(Q[k].numpy(), D.numpy())
        d2 = float(res.distance[k]) ** 2
        assert abs(d2 - ref2) <= 1e-9 * (1 + ref2), (k, d2, ref2)
        if ref2 > 1e-6:
            assert abs(math.sqrt(ref2) - float(res.distance[k])) <= 1e-6
    assert (res.distance[4:] <= 1e-6 * res.stats["R"]).all()  # inside the hull: distance 0
    assert res.inside[4:].all()


def test_query_equal_to_point_and_duplicates():
    g = torch.Generator().manual_seed(1)
    D = torch.randn(30, 8, generator=g, dtype=D64)
    D = torch.cat([D, D[:10], D[:10]])  # every one of the first 10 points three times
    Q = torch.cat([D[3:4], D[40:41], torch.randn(3, 8, generator=g, dtype=D64) * 3])
    res = hull_distances(Q, D)
    verify(res, Q, D)
    assert float(res.distance[0]) <= 1e-12 and float(res.distance[1]) <= 1e-12
    assert_matches_cvxpy(res, Q, D, range(2, 5))


def test_f_greater_than_n_and_n_greater_than_f():
    g = torch.Generator().manual_seed(2)
    # f > N: the hull is a low-dimensional simplex, every query off its affine hull is outside
    D = torch.randn(6, 50, generator=g, dtype=D64)
    Q = torch.randn(5, 50, generator=g, dtype=D64)
    res = hull_distances(Q, D)
    verify(res, Q, D)
    assert_matches_cvxpy(res, Q, D, range(5))
    # N >> f: most Gaussian queries of small norm are inside
    D = torch.randn(3000, 3, generator=g, dtype=D64)
    Q = torch.randn(50, 3, generator=g, dtype=D64) * 1.5
    res = hull_distances(Q, D, chunk_n=700)
    verify(res, Q, D)
    assert res.inside.float().mean() > 0.5
    assert_matches_cvxpy(res, Q, D, range(0, 50, 7))


@pytest.mark.parametrize("f", [784, 3072])  # MNIST and CIFAR-10 pixel space
def test_pixel_space_and_float32_pricing(f):
    g = torch.Generator().manual_seed(3)
    D = torch.rand(400, f, generator=g, dtype=D64)
    Q = torch.rand(6, f, generator=g, dtype=D64)
    res = hull_distances(Q, D)
    verify(res, Q, D)
    res32 = hull_distances(Q, D, pricing_dtype=torch.float32)
    verify(res32, Q, D)
    assert torch.allclose(res.distance, res32.distance, rtol=1e-6)
    for k in range(2):
        assert abs(float(res.distance[k]) ** 2 - ref_hull2(Q[k].numpy(), D.numpy())) <= 1e-6 * float(res.distance[k]) ** 2


def test_two_d_square():
    D = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D64)
    Q = torch.tensor([[2.0, 0.5], [0.5, 0.5], [2.0, 2.0], [-1.0, -2.0]], dtype=D64)
    res = hull_distances(Q, D)
    verify(res, Q, D)
    assert torch.allclose(res.distance, torch.tensor([1.0, 0.0, math.sqrt(2), math.sqrt(5)], dtype=D64), atol=1e-12)
    assert torch.allclose(res.projection[0], torch.tensor([1.0, 0.5], dtype=D64), atol=1e-12)
    assert set(res.support_index[0][res.support_index[0] >= 0].tolist()) == {1, 3}


def test_float32_pricing_ties_fall_back_to_float64():
    # the 64 vertices of a cube in 6-d: a query straight out of a facet has 32 tied maximisers
    # of u·d, more than k_check=4 near-maximisers, so the pricing must fall back to float64
    import itertools
    D = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=D64) * 3.0 + 10.0
    Q = torch.full((3, 6), 11.5, dtype=D64)
    Q[0, 0] = 15.0  # outside, projection on the facet x0 = 13: distance 2
    Q[1, :2] = 14.0  # outside along an edge direction: distance sqrt(2)
    # Q[2] is the cube's centre: inside
    res = hull_distances(Q, D, pricing_dtype=torch.float32, k_check=4)
    ref = hull_distances(Q, D, pricing_dtype=torch.float64)
    verify(res, Q, D)
    assert torch.allclose(res.distance, torch.tensor([2.0, 2.0 ** 0.5, 0.0], dtype=D64), atol=1e-6)
    assert torch.allclose(res.distance, ref.distance, atol=1e-12)
    assert torch.allclose(res.gap, ref.gap, atol=1e-12)
