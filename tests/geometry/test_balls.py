"""fsl.geometry balls / union / ambiguity / lipschitz / FeatureGeometry."""
import math

import pytest
import torch

from fsl.data.subsets import stratified_subset

from fsl.geometry import (FeatureGeometry, ambiguity, ball_counts, flip_margins, hull_distances, region_labels,
                          lipschitz, union_coverage)

D64 = torch.float64


def brute_counts(C, r, P, self_idx=None):
    d2 = ((C[:, None, :] - P[None, :, :]) ** 2).sum(2)
    inside = d2 < (r * r)[:, None]
    if self_idx is not None:
        inside[torch.arange(C.shape[0]), self_idx] = False
    return inside.sum(1)


def test_ball_counts_brute_force_and_borderline():
    g = torch.Generator().manual_seed(0)
    P = torch.randn(700, 16, generator=g, dtype=D64) * 3 + 100.0  # large norms: cancellation
    C = P[:300]
    r = torch.rand(300, generator=g, dtype=D64) * 8
    # borderline: radius exactly the distance to some point (not strictly inside), and just above
    d = (C[:100] - P[400:500]).norm(dim=1)
    r[:100] = d
    r[100:150] = (C[100:150] - P[500:550]).norm(dim=1) * (1 + 1e-15)
    got = ball_counts(C, r, P, exclude_self=False, chunk_q=64, chunk_n=128)
    ref = brute_counts(C, r, P)
    assert torch.equal(got, ref)
    # exclude_self with centers being the points themselves
    got = ball_counts(P, torch.full((700,), 6.0, dtype=D64), P)
    assert torch.equal(got, brute_counts(P, torch.full((700,), 6.0, dtype=D64), P, torch.arange(700)))
    # float32 inputs are decided in float64 too
    got32 = ball_counts(C.float(), r, P.float(), exclude_self=False)
    assert torch.equal(got32, brute_counts(C.float().double(), r, P.float().double()))


def test_exclude_self_rules_and_duplicates():
    P = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=D64)
    r = torch.tensor([1.0, 0.5, 2.0, 0.0], dtype=D64)
    # self excluded by index; the duplicate (index 1) still counts; radius 0 holds nothing;
    # point at distance exactly 1 is not strictly inside
    assert ball_counts(P, r, P).tolist() == [1, 1, 2, 0]
    assert ball_counts(P, r, P, exclude_self=False).tolist() == [2, 2, 3, 0]
    assert ball_counts(P[:2], r[:2], P, exclude_self=torch.tensor([1, -1])).tolist() == [1, 2]


def test_union_coverage():
    g = torch.Generator().manual_seed(1)
    C = torch.randn(300, 8, generator=g, dtype=D64)
    r = torch.rand(300, generator=g, dtype=D64)
    X = torch.randn(500, 8, generator=g, dtype=D64)
    X[:20] = C[:20] + torch.nn.functional.normalize(torch.randn(20, 8, generator=g, dtype=D64), dim=1) * r[:20, None]
    d2 = ((X[:, None] - C[None]) ** 2).sum(2)
    ref = (d2 < (r * r)[None]).any(1)
    assert torch.equal(union_coverage(X, C, r, chunk_q=100, chunk_n=64), ref)


def test_ambiguity_and_lipschitz():
    W = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=D64)
    assert lipschitz(W) == 4.0
    assert torch.equal(ambiguity(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])), torch.tensor([0.5, -1.0]))


def test_feature_geometry_study_numbers():
    g = torch.Generator().manual_seed(2)
    n, f = 4, 6
    centers = torch.rand(n, f, generator=g, dtype=D64) * 3
    ytr = torch.randint(0, n, (400,), generator=g)
    yte = torch.randint(0, n, (60,), generator=g)
    Xtr = torch.relu(centers[ytr] + torch.randn(400, f, generator=g, dtype=D64))
    Xte = torch.relu(centers[yte] + torch.randn(60, f, generator=g, dtype=D64))
    W = centers - centers.mean(0)
    b = -0.5 * (centers ** 2).sum(1) + 0.5 * (centers.mean(0) ** 2).sum()
    geo = FeatureGeometry(Xtr, ytr, W, b, lower=0.0)
    study = geo.analyze(Xte, yte, max_queries=40, max_train=300)
    st, ps = study.metrics, study.per_sample
    assert all(isinstance(v, float) for v in st.values())
    idx = ps["index"]
    assert idx.numel() == 40 and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, stratified_subset(yte, 40, 0).sort().values)  # the draw is stratified, seeded
    tidx = stratified_subset(ytr, 300, 1).sort().values
    Xq, yq, Xt, yt = Xte[idx], yte[idx], Xtr[tidx], ytr[tidx]
    fr = flip_margins(Xq, W, b, lower=0.0)
    ft = flip_margins(Xt, W, b, lower=0.0)
    hr = hull_distances(Xq, Xt)
    assert torch.allclose(ps["margin"], fr.margin) and torch.allclose(ps["hull"], hr.distance)
    assert torch.allclose(ps["ambiguity"], fr.margin - hr.distance)
    assert torch.allclose(study.train_margin, ft.margin)
    assert st["frac_hull_lt_margin"] == float((hr.distance < fr.margin).double().mean())
    assert st["acc"] == float((fr.pred == yq).double().mean())
    assert st["hull/certified_frac"] == 1.0 and st["margin/certified_frac"] == 1.0
    assert st["margin/median"] == float(fr.margin.median())
    # balls over train + analysed test points, centres excluded; union of the train balls
    pts = torch.cat([Xt, Xq])
    radii = torch.cat([ft.margin, fr.margin])
    ref = brute_counts(pts, radii, pts, torch.arange(len(pts)))
    assert torch.equal(ps["ball_count"], ref[300:])
    assert st["ball/mean_count"] == float(ref.double().mean())
    assert st["ball/frac_with_other_train"] == float((ref[:300] > 0).double().mean())
    d2 = ((Xq[:, None] - Xt[None]) ** 2).sum(2)
    assert torch.equal(ps["in_train_union"], (d2 < (ft.margin ** 2)[None]).any(1))
    proj_pred = (hr.projection @ W.T + b).argmax(1)
    assert st["hull/projection_acc"] == float((proj_pred == yq).double().mean())
    assert 0.0 <= st["hull/support_label_agreement"] <= 1.0
    assert math.isclose(st["lipschitz"], float(torch.linalg.matrix_norm(W, 2)))


@pytest.mark.parametrize("f", [32, 784])
def test_float32_filter_band_is_decided_in_float64(f):
    # points at relative distance 1 -+ 1e-7 from the sphere: inside the float32 filter's band,
    # exactly decidable in float64 (f = 784: pixel space, a wider band)
    g = torch.Generator().manual_seed(3)
    C = torch.randn(50, f, generator=g, dtype=D64) + 5.0
    r = torch.rand(50, generator=g, dtype=D64) + 0.5
    u = torch.nn.functional.normalize(torch.randn(50, 6, f, generator=g, dtype=D64), dim=2)
    scale = torch.tensor([1 - 1e-7, 1 + 1e-7, 1 - 1e-9, 1 + 1e-9, 1 - 1e-12, 1.0], dtype=D64)
    P = (C[:, None, :] + u * (r[:, None, None] * scale[None, :, None])).reshape(-1, f)
    got = ball_counts(C, r, P, exclude_self=False)
    assert torch.equal(got, brute_counts(C, r, P))
    assert (got >= 1).all()  # the 1 - 1e-7 point of its own centre is always inside
    X = P[::3]
    d2 = ((X[:, None] - C[None]) ** 2).sum(2)
    assert torch.equal(union_coverage(X, C, r), (d2 < (r * r)[None]).any(1))


def test_float64_filter_when_float32_matmul_is_reduced(monkeypatch):
    g = torch.Generator().manual_seed(4)
    P = torch.randn(400, 10, generator=g, dtype=D64)
    r = torch.rand(400, generator=g, dtype=D64) * 2
    ref = brute_counts(P, r, P, torch.arange(400))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # TF32/bf16 allowed: the filter switches to float64
        assert torch.equal(ball_counts(P, r, P), ref)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(ball_counts(P, r, P), ref)


def _head_problem(seed, N=600, f=8, n=4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, f, generator=g, dtype=D64) * 3
    y = torch.randint(0, n, (N,), generator=g)
    X = torch.relu(centers[y] + torch.randn(N, f, generator=g, dtype=D64))
    W = centers - centers.mean(0)
    b = -0.5 * (centers ** 2).sum(1)
    return X, W, b


def test_region_pruning_matches_brute_force():
    X, W, b = _head_problem(5)
    # a point on a boundary (exact tie of classes 0 and 1) and a point outside the domain
    a = W[0] - W[1]
    X[0] = torch.relu(X[0])
    X[0] = X[0] - ((X[0] @ a + b[0] - b[1]) / (a @ a)) * a
    X[1, 0] = -0.5
    reg = region_labels(X, W, b, lower=0.0)
    assert reg[0] == -1 and reg[1] == -1
    z = X @ W.T + b
    assert torch.equal(reg[2:], z.argmax(1)[2:])
    r = flip_margins(X, W, b, lower=0.0).margin
    r[5] = float("inf")  # an unbounded ball counts every compatible point
    ref = brute_counts(X, r, X, torch.arange(len(X)))
    ref[5] = int((reg[5] == reg).sum() + (reg < 0).sum() - 1)
    got = ball_counts(X, r, X, center_regions=reg, point_regions=reg, chunk_q=64, chunk_n=100)
    assert torch.equal(got, ref)
    assert int(got.sum()) > 0
    # exclude_self by index, with balls around a subset and points = all
    sub = torch.arange(0, 600, 7)
    got = ball_counts(X[sub], r[sub], X, exclude_self=sub, center_regions=reg[sub], point_regions=reg)
    assert torch.equal(got, ref[sub])
    # union of the training balls for new queries
    Xq, _, _ = _head_problem(6, N=300)
    rq = r.clone()
    rq[5] = 1.0
    regq = region_labels(Xq, W, b, lower=0.0)
    d2 = ((Xq[:, None] - X[None]) ** 2).sum(2)
    assert torch.equal(union_coverage(Xq, X, rq, regq, reg), (d2 < (rq * rq)[None]).any(1))


def test_ball_inputs_are_checked():
    P = torch.randn(10, 3, dtype=D64)
    bad = P.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ball_counts(bad, torch.ones(10, dtype=D64), P)
    with pytest.raises(ValueError, match="NaN"):
        union_coverage(bad, P, torch.ones(10, dtype=D64))
    with pytest.raises(ValueError, match="radii"):
        ball_counts(P, torch.ones(3, dtype=D64), P)
    with pytest.raises(ValueError, match="both"):
        ball_counts(P, torch.ones(10, dtype=D64), P, center_regions=torch.zeros(10))
