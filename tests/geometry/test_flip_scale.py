"""fsl.geometry.flip_margins beyond the paper's size: the working-set dual against cvxpy + Clarabel at
n = 200 classes with many binding class constraints, active bounds and empty boundaries; the pruned
margin path; answers independent of the memory budget."""
import math

import numpy as np
import pytest
import torch

from fsl.geometry import flip_margins

cp = pytest.importorskip("cvxpy")
from fsl.geometry import reference  # noqa: E402

D64 = torch.float64


def crowded(n=200, f=300, B=6, seed=0):
    """Classes in tight groups (a flip point toward one member crosses its neighbours' constraints),
    ReLU features with many exact zeros (lower bound 0 active), and dominated classes: ``w_j <= w_k``
    coordinate-wise with ``b_j < b_k``, so ``z_j < z_k`` on the whole domain and every ``i|j`` boundary
    is empty (distance +inf)."""
    g = torch.Generator().manual_seed(seed)
    groups = -(-n // 8)
    centre = torch.randn(groups, f, generator=g, dtype=D64)
    W = centre.repeat_interleave(8, 0)[:n] + 0.15 * torch.randn(n, f, generator=g, dtype=D64)
    b = 0.3 * torch.randn(n, generator=g, dtype=D64)
    dominated = torch.arange(5, n, 37)
    W[dominated] = W[dominated - 1] - torch.rand(len(dominated), f, generator=g, dtype=D64) * 0.1
    b[dominated] = b[dominated - 1] - 1.0
    X = torch.relu(torch.randn(B, f, generator=g, dtype=D64) + 0.2 * W[torch.randint(0, n, (B,), generator=g)])
    return X, W, b, dominated


@pytest.fixture(scope="module")
def solved():
    X, W, b, dominated = crowded()
    return X, W, b, dominated, flip_margins(X, W, b, lower=0.0, return_points=True)


def test_working_set_is_exercised(solved):
    X, W, b, dominated, res = solved
    assert res.all_certified, res.stats
    assert res.stats["newton"] > 20 and res.stats["working_set"] > 2, res.stats
    assert res.stats["infeasible"] >= len(dominated) * X.shape[0] // 2
    # the dual points of the hard pairs have several binding class constraints
    mu = res.multipliers
    binding = ((mu.abs() > 1e-9).sum(2) >= 3)
    assert int(binding.sum()) >= 5
    # bounds are active at the flip points
    pts = res.points[torch.isfinite(res.points[..., 0])]
    assert float((pts == 0).float().mean()) > 0.2


def test_matches_clarabel_with_many_active_constraints(solved):
    X, W, b, dominated, res = solved
    Xn, Wn, bn = X.numpy(), W.numpy(), b.numpy()
    mu = res.multipliers
    checked = {"hard": 0, "inf": 0, "easy": 0}
    worst = 0.0
    g = np.random.default_rng(0)
    for s in range(2):
        i = int(res.pred[s])
        hard = [j for j in range(W.shape[0]) if j != i and int((mu[s, j].abs() > 1e-9).sum()) >= 2]
        inf = [j for j in range(W.shape[0]) if j != i and math.isinf(float(res.distances[s, j]))]
        easy = [int(j) for j in g.choice([j for j in range(W.shape[0]) if j != i and j not in hard and j not in inf],
                                         3, replace=False)]
        for kind, js in (("hard", hard[:5]), ("inf", inf[:2]), ("easy", easy)):
            for j in js:
                ref = reference.flip_distance(Xn[s], Wn, bn, i, j, lo=0.0)
                got = float(res.distances[s, j])
                if math.isinf(ref):
                    assert math.isinf(got), (s, j, got)
                else:
                    worst = max(worst, abs(got - ref) / ref)
                    y = res.points[s, j]
                    z = W @ y + b
                    assert float((y).min()) >= 0.0
                    assert abs(float(z[i] - z[j])) <= 1e-9 * (1 + float(z.abs().max()))
                    assert float((z[i] - z).min()) >= -1e-9 * (1 + float(z.abs().max()))
                checked[kind] += 1
    assert checked["hard"] >= 6 and checked["inf"] >= 2 and checked["easy"] == 6, checked
    assert worst < 1e-8, worst


def test_margin_path_matches_full_solve_and_clarabel(solved):
    X, W, b, _, full = solved
    fast = flip_margins(X, W, b, lower=0.0, margin_only=True, return_points=True)
    assert fast.all_certified and fast.stats["newton"] == 0
    assert fast.stats["solved"] < full.stats["solved"] / 5
    assert torch.equal(fast.margin, full.margin) and torch.equal(fast.closest, full.closest)
    rows = torch.arange(X.shape[0])
    assert torch.equal(fast.points[rows, fast.closest], full.points[rows, full.closest])
    skipped = torch.isnan(fast.distances) & ~torch.isnan(full.distances)
    assert bool((fast.lower_bound[skipped] <= full.distances[skipped]).all())
    assert bool((fast.lower_bound[skipped] >= fast.margin[:, None].expand_as(skipped)[skipped] * (1 - 1e-9)).all())
    for s in range(2):
        m, j, _ = reference.margin(X[s].numpy(), W.numpy(), b.numpy(), lo=0.0)
        assert abs(float(fast.margin[s]) - m) <= 1e-8 * m and int(fast.closest[s]) == j


@pytest.mark.parametrize("margin_only", [False, True])
def test_memory_budget_does_not_change_answers(margin_only):
    """A budget below one sample's pairs splits the classes into blocks (and the dual into small
    batches). Discrete answers are identical; numbers agree to rounding (matrix products of other
    shapes round differently)."""
    if margin_only:  # 8 candidates of ~3.4 KiB per sample do not fit 20 KiB
        X, W, b, _ = crowded(n=60, f=40, B=40, seed=1)
        budget = 20 * 1024
    else:  # 12 pairs of ~10 KiB per sample do not fit 64 KiB; few samples: tiny dual batches are slow
        g = torch.Generator().manual_seed(3)
        W, b = torch.randn(12, 200, generator=g, dtype=D64), torch.randn(12, generator=g, dtype=D64)
        X = torch.relu(torch.randn(8, 200, generator=g, dtype=D64))
        budget = 64 * 1024
    big = flip_margins(X, W, b, lower=0.0, margin_only=margin_only, return_points=True)
    small = flip_margins(X, W, b, lower=0.0, margin_only=margin_only, return_points=True, memory_budget=budget)
    assert small.stats["blocks"] >= 2 * X.shape[0] > 2 * big.stats["blocks"], (small.stats, big.stats)
    assert big.stats["newton"] == small.stats["newton"] and (margin_only or big.stats["newton"] > 0)
    for name in ("distances", "lower_bound", "points", "multipliers", "margin"):
        a, c = getattr(big, name), getattr(small, name)
        assert torch.equal(torch.isnan(a), torch.isnan(c)) and torch.equal(torch.isinf(a), torch.isinf(c)), name
        fin = torch.isfinite(a)
        assert torch.allclose(a[fin], c[fin], rtol=1e-12, atol=1e-13), name
    for name in ("certified", "closest", "pred"):
        assert torch.equal(getattr(big, name), getattr(small, name)), name


def test_bad_budget_is_refused():
    X, W, b, _ = crowded(n=20, f=10, B=2)
    with pytest.raises(ValueError, match="memory_budget"):
        flip_margins(X, W, b, memory_budget=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("margin_only", [False, True])
def test_cuda_matches_cpu(margin_only):
    X, W, b, _ = crowded(n=60, f=40, B=40, seed=2)
    cpu = flip_margins(X, W, b, lower=0.0, margin_only=margin_only)
    gpu = flip_margins(X.cuda(), W.cuda(), b.cuda(), lower=0.0, margin_only=margin_only)
    assert gpu.margin.device.type == "cuda" and gpu.all_certified
    assert torch.equal(gpu.closest.cpu(), cpu.closest) and torch.equal(gpu.pred.cpu(), cpu.pred)
    assert torch.allclose(gpu.margin.cpu(), cpu.margin, rtol=1e-10)
