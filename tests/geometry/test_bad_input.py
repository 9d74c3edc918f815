"""Non-finite, empty and extreme inputs of fsl.geometry: a clear error or the right number, never a
"certified" wrong answer."""
import pytest
import torch

from fsl.geometry import ball_counts, flip_margins, hull_distances, union_coverage


def head(f=4, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("where", ["features", "weight", "bias"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_flip_margins_rejects_non_finite(where, value):
    W, b = head()
    X = torch.randn(6, 4, dtype=torch.float64)
    target = {"features": X, "weight": W, "bias": b}[where]
    target.view(-1)[2 if where != "bias" else 1] = value
    with pytest.raises(ValueError, match=f"flip_margins {where}: 1 row\\(s\\) contain NaN/inf"):
        flip_margins(X, W, b)


def test_flip_margins_names_the_rows():
    W, b = head()
    X = torch.randn(8, 4, dtype=torch.float64)
    X[5, 0] = float("nan")
    X[7, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"2 row\(s\).*first: \[5, 7\]"):
        flip_margins(X, W, b)


def test_ball_counts_with_huge_features_equal_the_scaled_problem():
    """Squares of 1e30 overflow float32: the filter must fall back to float64, counts stay exact."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 8, generator=g, dtype=torch.float64)
    r = torch.rand(200, generator=g, dtype=torch.float64) * 3
    ref = ((torch.cdist(X, X) < r[:, None]).sum(1) - 1)  # brute force, self excluded
    for scale in (1.0, 1e19, 1e30, 1e100):
        got = ball_counts(X * scale, r * scale, X * scale)
        assert torch.equal(got, ref), scale
        assert int(got.min()) >= 0
    cov = union_coverage(X[:50] * 1e30 + 1e29, X * 1e30, r * 1e30)
    assert torch.equal(cov, (torch.cdist(X[:50] + 0.1, X) < r[None, :]).any(1))


def test_ball_counts_radii():
    X = torch.randn(30, 3, dtype=torch.float64)
    r = torch.ones(30, dtype=torch.float64)
    r[4] = float("nan")
    with pytest.raises(ValueError, match=r"radii: 1 NaN radii \(first balls: \[4\]\)"):
        ball_counts(X, r, X)
    r[4] = -1.0  # a negative radius is a ball that holds nothing (documented)
    assert int(ball_counts(X, r, X)[4]) == 0
    r[4] = float("inf")
    assert int(ball_counts(X, r, X)[4]) == 29


def test_hull_distances_bad_input():
    Q, P = torch.randn(5, 3, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="no points"):
        hull_distances(Q, P[:0])
    bad = Q.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"hull_distances queries: 1 row\(s\).*first: \[2\]"):
        hull_distances(bad, P)
    badp = P.clone()
    badp[11, 0] = float("inf")
    with pytest.raises(ValueError, match=r"hull_distances points: 1 row\(s\).*first: \[11\]"):
        hull_distances(Q, badp)
    with pytest.raises(ValueError, match=r"expected queries \(Q, f\) and points \(N, f\), got \(5, 3\) and \(20, 2\)"):
        hull_distances(Q, P[:, :2])


def test_hull_distances_scale_with_huge_features():
    """float32 pricing would overflow at 1e20 (squares 1e40): the result must still scale exactly."""
    g = torch.Generator().manual_seed(2)
    P = torch.randn(300, 6, generator=g, dtype=torch.float64)
    Q = torch.randn(20, 6, generator=g, dtype=torch.float64) * 3
    ref = hull_distances(Q, P)
    big = hull_distances(Q * 1e20, P * 1e20)
    assert bool(ref.certified.all()) and bool(big.certified.all())
    torch.testing.assert_close(big.distance / 1e20, ref.distance, rtol=1e-6, atol=1e-9)
