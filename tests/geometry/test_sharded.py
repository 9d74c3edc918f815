"""The sharded geometry: ``geometry_study(..., map_rows=sharded)`` and ``sharded(flip_margins ...)`` over 2 gloo
processes (1 thread each) give the single-process numbers (2 threads and 1 thread), at n = 100 classes.

Data: 100 classes of ReLU features (f = 64, lower = 0; a 12-dimensional latent through a random map, some
classes tight, some loose, so balls hold other samples), 1,999 training and 401 evaluation samples (odd:
the stride shards are uneven), 20 of them convex combinations of training features (inside the hull),
and a least-squares linear head.

How equal (docs/multinode.md): every integer and flag (predictions, closest classes, certificates, ball
counts, union coverage, outside-hull flags, projection predictions) is identical. Floats agree to
rounding, not always bit for bit: the hull solver's batched linear algebra (a batched matrix-vector
product, and factorizations sized by the widest working set of the batch) rounds differently with the
batch a sample is solved in, and so, rarely, does the flip solver's Newton stage; sharding changes the
batches. So margins, distances and hull distances are compared to 1e-12 relative. An inside-hull
sample's distance is whatever the solver reached when its certificate held: any value below the
certified floor 1e-6 R (R: RMS radius of the training features; 1e-14 to 1e-9 here, depending on the
rounding path), so for those the test asks that both runs are below that floor. The support of an
inside sample is not unique (many convex combinations give the same point): which one the solver
finds depends on rounding, so its support counts are only compared for samples outside.

Cost: one module fixture (2 spawned ranks, then one process at 2 and at 1 thread), about 30 s of CPU;
40-45 s wall on the shared 2-core machines.
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsl.analysis.distributed import sharded, world
from fsl.geometry import flip_margins, geometry_study
from fsl.geometry.summary import describe

N_CLASSES, N_FEATURES, LATENT, N_TRAIN, N_EVAL, N_INSIDE = 100, 64, 12, 1999, 401, 20
WORLD = 2
RTOL = 1e-12
FLIP_KEYS = ("distances", "margin", "closest", "pred", "certified", "lower_bound")
# metrics of the hull's supports: the inside samples' supports are not unique (see the module docstring)
SUPPORT_METRICS = ("hull/support_label_agreement", "hull/support_size_mean", "hull/support_weight_agreement")
CONTINUOUS = re.compile(r"^(margin|hull|ambiguity|train_margin)/(mean|median|min|max|q\d\d)$")


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(LATENT, N_FEATURES, generator=g, dtype=torch.float64) / LATENT ** 0.5
    means = 2.0 * torch.randn(N_CLASSES, LATENT, generator=g, dtype=torch.float64)
    spread = 0.05 + 0.6 * torch.rand(N_CLASSES, generator=g, dtype=torch.float64)

    def draw(n):
        y = torch.randint(0, N_CLASSES, (n,), generator=g)
        z = means[y] + spread[y, None] * torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        return torch.relu(z @ proj), y

    x_tr, y_tr = draw(N_TRAIN)
    x_ev, y_ev = draw(N_EVAL - N_INSIDE)
    idx = torch.randint(0, N_TRAIN, (N_INSIDE, 3), generator=g)
    w = torch.rand(N_INSIDE, 3, generator=g, dtype=torch.float64)
    x_in = ((w / w.sum(1, keepdim=True))[:, :, None] * x_tr[idx]).sum(1)
    x_ev, y_ev = torch.cat([x_ev, x_in]), torch.cat([y_ev, y_tr[idx[:, 0]]])
    a = torch.cat([x_tr, torch.ones(N_TRAIN, 1, dtype=torch.float64)], 1)
    t = torch.nn.functional.one_hot(y_tr, N_CLASSES).double()
    sol = torch.linalg.solve(a.T @ a + 1e-2 * torch.eye(N_FEATURES + 1, dtype=torch.float64), a.T @ t)
    return {"x_tr": x_tr, "y_tr": y_tr, "x_ev": x_ev, "y_ev": y_ev, "weight": sol[:N_FEATURES].T.contiguous(),
            "bias": sol[N_FEATURES].contiguous()}


def compute(d: dict, map_rows=None) -> dict:
    """The study and the flip margins of the evaluation samples, with ``map_rows`` (None: one process)."""
    study = geometry_study(d["x_tr"], d["y_tr"], d["x_ev"], d["y_ev"], d["weight"], d["bias"], lower=0.0,
                           map_rows=map_rows)

    def flip(rows):
        r = flip_margins(d["x_ev"][rows], d["weight"], d["bias"], lower=0.0)
        return {k: getattr(r, k) for k in FLIP_KEYS}

    flips = sharded(flip, len(d["x_ev"])) if map_rows is not None else flip(torch.arange(len(d["x_ev"])))
    return {"metrics": study.metrics, "per_sample": study.per_sample, "distances": study.distances,
            "train_margin": study.train_margin, "flip": flips}


def _rank_main(rank: int, folder: str) -> None:
    """One DDP rank: gloo over a file rendezvous, 1 thread, the sharded computation, results to rank<r>.pt."""
    torch.set_num_threads(1)
    folder = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=300))
    try:
        assert world() == (rank, WORLD)
        out = compute(torch.load(folder / "data.pt"), map_rows=sharded)
        out["threads"] = torch.get_num_threads()
        torch.save(out, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process(d: dict, threads: int) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return compute(d)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    d = make_data()
    torch.save(d, folder / "data.pt")
    mp.spawn(_rank_main, args=(str(folder),), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]
    return {"data": d, "ranks": ranks, "single2": single_process(d, 2), "single1": single_process(d, 1)}


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL, atol=0.0) -> None:
    """Integers and flags identical; floats: the same NaN/inf pattern, finite values within
    ``rtol * |want| + atol`` (``atol`` a number or a tensor like ``want``)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype, got.shape, want.shape)
    if not want.is_floating_point():
        bad = torch.nonzero(got != want).flatten()[:5].tolist()
        assert not bad, f"{name}: differs at rows {bad}"
        return
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{name}: NaN pattern differs"
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(got[torch.isinf(want)],
                                                                            want[torch.isinf(want)]), name
    fin = torch.isfinite(want)
    tol = rtol * want.abs() + (atol if torch.is_tensor(atol) else torch.full_like(want, atol))
    err = (got - want).abs()
    bad = fin & ~(err <= tol)
    assert not bool(bad.any()), (f"{name}: {int(bad.sum())} values differ beyond tolerance, first rows "
                                 f"{torch.nonzero(bad)[:5].tolist()}, max error {float(err[fin].max()):.3g}")


def rms_radius(x: torch.Tensor) -> float:
    return float(((x - x.mean(0)) ** 2).sum(1).mean().sqrt())


def test_the_data_exercise_every_branch(runs):
    """Uneven shards, balls holding other samples, samples inside and outside the hull, all certified."""
    m = runs["single2"]["metrics"]
    assert N_EVAL % WORLD and N_TRAIN % WORLD
    assert m["margin/certified_frac"] == 1.0 and m["hull/certified_frac"] == 1.0
    assert 0.2 < m["ball/frac_with_other_eval"] < 0.8 and 0.2 < m["ball/union_coverage"] < 0.8
    assert m["ball/max_count"] > 5
    assert m["hull/frac_outside"] == pytest.approx(1 - N_INSIDE / N_EVAL)
    assert 0.0 < m["frac_hull_lt_margin"] < 1.0
    assert runs["ranks"][0]["threads"] == 1


def test_every_rank_gets_the_same_gathered_result(runs):
    r0, r1 = runs["ranks"]
    assert r0["metrics"] == r1["metrics"]
    for group in ("per_sample", "flip"):
        assert r0[group].keys() == r1[group].keys()
        for k in r0[group]:
            assert torch.equal(r0[group][k].nan_to_num(-7.0), r1[group][k].nan_to_num(-7.0)), (group, k)
    for k in ("distances", "train_margin"):
        assert torch.equal(r0[k].nan_to_num(-7.0), r1[k].nan_to_num(-7.0)), k


@pytest.mark.parametrize("reference", ["single2", "single1"])
def test_sharded_study_equals_single_process(runs, reference):
    got, want, d = runs["ranks"][0], runs[reference], runs["data"]
    ps, ref = got["per_sample"], want["per_sample"]
    assert ps.keys() == ref.keys()
    floor = 1e-6 * rms_radius(d["x_tr"])  # the hull's certified floor (its inside_tol)
    outside = ref["hull"] > floor  # the study's "outside" test
    assert int((~outside).sum()) == N_INSIDE and not bool((~outside[:N_EVAL - N_INSIDE]).any())
    assert torch.equal(ps["hull"] > floor, outside)
    atol_inside = torch.where(outside, 0.0, floor).double()  # inside: both below the floor
    for k in ps:
        if k == "hull":
            assert_close(k, ps[k], ref[k], atol=atol_inside)
        elif k == "ambiguity":  # margin - hull: relative to the terms, not to the (cancelling) difference
            assert_close(k, ps[k], ref[k], atol=RTOL * (ref["margin"].abs() + ref["hull"].abs()) + atol_inside)
        elif k == "support_agreement":  # a ratio of support counts: exact where the support is unique
            assert torch.equal(ps[k][outside], ref[k][outside]), k
            assert bool(((ps[k] >= 0) & (ps[k] <= 1)).all())
        else:
            assert_close(k, ps[k], ref[k])
    assert_close("distances", got["distances"], want["distances"])
    assert_close("train_margin", got["train_margin"], want["train_margin"])

    m, mref = got["metrics"], want["metrics"]
    assert m.keys() == mref.keys() and len([k for k in m if k.startswith("closest_class/")]) == N_CLASSES
    scale = mref["margin/max"] + mref["hull/max"]
    for k, v in mref.items():
        if k in SUPPORT_METRICS:  # differs only through the inside samples' supports
            assert m[k] == pytest.approx(v, abs=N_INSIDE / N_EVAL * max(1.0, mref["hull/support_size_mean"])), k
        elif k == "hull/max_relative_gap":  # rounding-level certificates: both certified is what counts
            assert m[k] <= 1e-6 and v <= 1e-6
        elif CONTINUOUS.match(k) and k.startswith(("hull/", "ambiguity/")):
            # statistics of the per-sample values compared above: exactly those of this run's values,
            # and within the inside samples' floor of the single process's
            prefix = k.split("/")[0]
            assert m[k] == describe(prefix, ps[prefix])[k], k
            assert m[k] == pytest.approx(v, rel=RTOL, abs=RTOL * scale + floor), k
        elif CONTINUOUS.match(k):
            assert m[k] == pytest.approx(v, rel=RTOL, abs=RTOL * scale), k
        else:  # counts, fractions of flags, the head's Lipschitz constant: identical
            assert m[k] == v, k


@pytest.mark.parametrize("reference", ["single2", "single1"])
def test_sharded_flip_margins_equal_single_process(runs, reference):
    got, want = runs["ranks"][0]["flip"], runs[reference]["flip"]
    assert got.keys() == want.keys() == set(FLIP_KEYS)
    assert got["distances"].shape == (N_EVAL, N_CLASSES)
    for k in FLIP_KEYS:
        assert_close(k, got[k], want[k])
    assert bool(got["certified"].all())
    # the same numbers as the study's own (sharded) margins
    assert torch.equal(got["margin"], runs["ranks"][0]["per_sample"]["margin"])
