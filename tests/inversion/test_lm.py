"""The continuation Levenberg-Marquardt inversion (method="lm"), its feature path and the miss diagnosis,
on toy networks small enough to run in seconds."""
from __future__ import annotations

import inspect

import pytest
import torch

from fsl.errors import ConfigError
from fsl.inversion import (ALOptions, ALSQPOptions, LMOptions, PoolOptions, SQPOptions, diagnose, feature_bounds,
                           feature_path, invert_to_features, probe_reachability, residual_lower_bound)
from fsl.models import create_model


def _toy_selu(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("selu_mlp", input_shape=(1, 6, 6), hidden=(24, 6), mean=(0.5,), std=(0.5,)).eval()


def _toy_resnet(seed: int = 0):
    torch.manual_seed(seed)
    m = create_model("resnet20", input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))
    for mod in m.modules():  # non-trivial running statistics, so BatchNorm is a real affine map
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _feats(model, x):
    with torch.no_grad():
        return model.forward_features(x)


@pytest.mark.parametrize("make", [_toy_selu, _toy_resnet])
def test_feature_bounds_contain_every_image(make):
    model = make()
    lo, hi = feature_bounds(model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(512, *model.input_shape, generator=g)
    x[:128] = (x[:128] > 0.5).float()  # box corners too
    f = _feats(model, x).double()
    assert bool((f >= lo - 1e-5).all()) and bool((f <= hi + 1e-5).all())
    assert bool((hi > lo).all())


def test_reachable_target_is_hit_and_unreachable_one_is_proven():
    model = _toy_selu()
    g = torch.Generator().manual_seed(2)
    refs = torch.rand(2, 1, 6, 6, generator=g)
    reachable = _feats(model, torch.rand(1, 1, 6, 6, generator=g))[0]
    lo, hi = feature_bounds(model)
    unreachable = hi.float() + 1.0  # above what any image in the box can produce, inside the domain
    targets = torch.stack([reachable, unreachable])
    res = invert_to_features(model, targets, refs, tol=1e-3)
    assert res.method == "lm"
    assert bool(res.success[0]) and float(res.feature_residual[0]) <= 1e-3
    indep = (_feats(model, res.images).double() - targets.double()).norm(dim=1) / targets.double().norm(dim=1)
    torch.testing.assert_close(indep, res.feature_residual, rtol=1e-4, atol=1e-7)
    assert not bool(res.success[1])
    diag = diagnose(model, res, targets)
    assert diag.category == ["hit", "unreachable"]
    assert float(diag.lower_bound[1]) > float(diag.abs_tol[1])
    assert float(diag.lower_bound[1]) <= float((res.features[1].double() - targets[1].double()).norm())
    # the bound is a bound: no lower than 0, and 0 for the reachable target
    assert float(diag.lower_bound[0]) == 0.0


def test_negative_relu_targets_are_proven_unreachable():
    model = _toy_resnet()
    t = _feats(model, torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))).double()
    t[:, 0] = -0.5  # no ReLU feature is negative
    lo, hi = feature_bounds(model)
    assert bool((residual_lower_bound(t, lo, hi) >= 0.49).all())


def test_feature_path_starts_at_the_sample_and_ends_at_the_target():
    model = _toy_selu()
    g = torch.Generator().manual_seed(4)
    a = torch.rand(1, 6, 6, generator=g)
    t = _feats(model, torch.rand(1, 1, 6, 6, generator=g))[0]
    path = feature_path(model, a, t, n_points=5, tol=1e-3)
    assert path.images.shape == (5, 1, 6, 6)
    assert torch.equal(path.images[0], a)
    torch.testing.assert_close(path.features[0], _feats(model, a[None])[0])
    assert bool(path.reached.all()), path.residual
    assert float((path.features[-1].double() - t.double()).norm() / t.double().norm()) <= 1e-3
    # the goals are the straight feature segment, and the images move away from a monotonically in s
    torch.testing.assert_close(path.goals[2], 0.5 * (path.goals[0] + path.goals[-1]))
    dist = (path.images.double() - a.double()).flatten(1).norm(dim=1)
    assert float(dist[-1]) > 0 and bool((dist[1:] >= dist[:-1] - 1e-6).all())


def test_old_and_new_methods_agree_on_an_easy_target():
    model = _toy_selu()
    g = torch.Generator().manual_seed(5)
    refs = torch.rand(4, 1, 6, 6, generator=g) * 0.6 + 0.2
    near = (refs + 0.05 * torch.randn(4, 1, 6, 6, generator=g)).clamp(0, 1)
    targets = _feats(model, near)
    new = invert_to_features(model, targets, refs, method="lm")
    old = invert_to_features(model, targets, refs, method="al+sqp")
    assert bool(new.success.all()) and bool(old.success.all())
    assert not bool(new.extra["fallback"].any())  # the path itself got there
    moved = (near.double() - refs.double()).flatten(1).norm(dim=1)
    # both find images no farther than the perturbed image itself, and close to each other
    assert bool((new.distance <= moved * 1.05).all()) and bool((old.distance <= moved * 1.05).all())
    torch.testing.assert_close(new.distance, old.distance, rtol=0.25, atol=1e-3)


def test_probe_hits_reachable_targets_and_never_beats_a_certified_bound():
    model = _toy_selu()
    g = torch.Generator().manual_seed(6)
    refs = torch.rand(3, 1, 6, 6, generator=g)
    reachable = _feats(model, torch.rand(2, 1, 6, 6, generator=g))
    lo, hi = feature_bounds(model)
    unreachable = (hi.float() + 1.0).unsqueeze(0)
    targets = torch.cat([reachable, unreachable])
    probe = probe_reachability(model, targets, refs, n_random=2, steps=1500, lr=0.05,
                               generator=torch.Generator().manual_seed(0))
    assert probe.images.shape == refs.shape and bool((probe.images >= 0).all()) and bool((probe.images <= 1).all())
    # the residual is re-measured on the returned images, independently here
    indep = (_feats(model, probe.images).double() - targets.double()).norm(dim=1) / targets.double().norm(dim=1)
    torch.testing.assert_close(indep, probe.residual, rtol=1e-6, atol=1e-9)
    assert probe.hit.tolist() == [True, True, False]
    # the certified lower bound of the unreachable target holds for the probe's image too
    bound = residual_lower_bound(unreachable, lo, hi)[0] / unreachable.double().norm()
    assert float(probe.residual[2]) >= float(bound) > 1e-3
    assert 0 <= int(probe.start.min()) and int(probe.start.max()) <= 2


def test_diagnose_splits_misses_by_the_probe():
    model = _toy_selu()
    g = torch.Generator().manual_seed(7)
    refs = torch.rand(2, 1, 6, 6, generator=g)
    targets = _feats(model, torch.rand(2, 1, 6, 6, generator=g))
    # a budget of one trial point and no fallback: both targets are missed by the solver ...
    res = invert_to_features(model, targets, refs, method="lm", options=LMOptions(max_iter=1, fallback=None))
    assert not bool(res.success.any())
    probe = probe_reachability(model, targets, refs, steps=1500, lr=0.05)
    diag = diagnose(model, res, targets, probe=probe)
    # ... and the probe proves them reachable: solver misses, not a floor
    assert diag.miss_split(1e-3) == {"reachable": 2, "near": 0, "floor": 0}
    with pytest.raises(ValueError, match="no probe"):
        diagnose(model, res, targets).miss_split(1e-3)


@pytest.mark.parametrize("kw, match", [
    (dict(steps=0), "steps must be a positive int"),
    (dict(n_random=-1), "n_random must be an int"),
    (dict(lr=float("nan")), "lr must be a positive finite"),
])
def test_probe_rejects_bad_options(kw, match):
    model = _toy_selu()
    x = torch.rand(1, 1, 6, 6)
    with pytest.raises(ValueError, match=match):
        probe_reachability(model, _feats(model, x), x, **kw)


def test_probe_rejects_bad_targets_and_starts():
    model = _toy_selu()
    x = torch.rand(2, 1, 6, 6)
    t = _feats(model, x)
    with pytest.raises(ValueError, match="2 targets"):
        probe_reachability(model, t, x[:1])
    bad = t.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        probe_reachability(model, bad, x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        probe_reachability(model, t, x + 2.0)


def test_pool_restarts_replace_misses_with_hits_from_the_nearest_pool_image():
    model = _toy_selu()
    g = torch.Generator().manual_seed(8)
    refs = torch.rand(3, 1, 6, 6, generator=g)
    sources = torch.rand(3, 1, 6, 6, generator=g)
    targets = _feats(model, sources)
    pool = torch.cat([torch.rand(5, 1, 6, 6, generator=g), sources])
    # one trial point from the reference and no fallback: the path alone misses every target ...
    alone = invert_to_features(model, targets, refs, method="lm", options=LMOptions(max_iter=1, fallback=None))
    assert not bool(alone.success.any())
    # ... the pool holds images with exactly the target features: restarting there hits them
    res = invert_to_features(model, targets, refs, method="lm",
                             options=LMOptions(max_iter=1, fallback=None, pool=PoolOptions(images=pool)))
    assert bool(res.success.all()) and bool(res.extra["pool"].all())
    indep = (_feats(model, res.images).double() - targets.double()).norm(dim=1) / targets.double().norm(dim=1)
    torch.testing.assert_close(indep, res.feature_residual, rtol=1e-4, atol=1e-7)
    assert bool((res.feature_residual <= 1e-3).all())


# ----------------------------------------------------------------------------- options of invert_to_features
def _same_result(a, b):
    for k in ("images", "features", "feature_residual", "feature_error", "distance", "success", "iterations",
              "target_in_domain"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert torch.equal(a.stationarity.isnan(), b.stationarity.isnan())
    assert torch.equal(a.stationarity.nan_to_num(), b.stationarity.nan_to_num())
    assert a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)


@pytest.mark.parametrize("method, cls, fields", [
    ("lm", LMOptions, dict(max_iter=3, max_jac=2, polish=2, fallback=dict(al_iter=2, inner_steps=5, max_iter=4),
                           pool=dict(k=2, polish=1))),
    ("al+sqp", ALSQPOptions, dict(al_iter=2, inner_steps=5, lr=0.02, mu0=2.0, max_iter=4, step_tol=1e-3)),
    ("sqp", SQPOptions, dict(max_iter=4, mu_rel=1e-5, step_tol=1e-3)),
    ("al", ALOptions, dict(max_iter=3, inner_steps=5, lr=0.02, polish=2)),
])
def test_options_as_dict_or_dataclass_give_identical_results(method, cls, fields):
    model = _toy_selu()
    g = torch.Generator().manual_seed(11)
    refs, src = torch.rand(3, 1, 6, 6, generator=g), torch.rand(3, 1, 6, 6, generator=g)
    targets = _feats(model, src)
    targets[2] *= 3.0  # a miss, so the fallback and the pool restarts run
    fields = dict(fields)
    if method == "lm":
        fields["pool"] = dict(fields["pool"], images=torch.rand(4, 1, 6, 6, generator=g))
        as_class = dict(fields, pool=PoolOptions(**fields["pool"]), fallback=ALSQPOptions(**fields["fallback"]))
    else:
        as_class = fields
    a = invert_to_features(model, targets, refs, method=method, options=fields)
    b = invert_to_features(model, targets, refs, method=method, options=cls(**as_class))
    _same_result(a, b)
    # the defaults: no options, an empty dict and the default dataclass are the same call
    if method == "sqp":
        c = invert_to_features(model, targets, refs, method=method)
        _same_result(c, invert_to_features(model, targets, refs, method=method, options={}))
        _same_result(c, invert_to_features(model, targets, refs, method=method, options=cls()))


def test_options_defaults_are_the_documented_ones():
    assert LMOptions() == LMOptions(max_iter=80, max_jac=80, broyden=False, polish=0, mu_rel=1e-6, step_tol=1e-4,
                                    pool=None, fallback=ALSQPOptions())
    assert ALSQPOptions() == ALSQPOptions(al_iter=15, inner_steps=40, lr=0.01, mu0=1.0, max_iter=60, mu_rel=1e-6,
                                          step_tol=1e-4)
    assert SQPOptions() == SQPOptions(max_iter=60, mu_rel=1e-6, step_tol=1e-4)
    assert ALOptions() == ALOptions(max_iter=30, inner_steps=40, lr=0.01, mu0=1.0, polish=20, mu_rel=1e-6)
    p = PoolOptions(images=torch.zeros(1, 1, 6, 6))
    assert (p.features, p.k, p.polish) == (None, 3, 10)
    # nested dicts, a bare pool tensor and a bool fallback become their dataclasses
    o = LMOptions(pool=p.images, fallback={"al_iter": 4})
    assert isinstance(o.pool, PoolOptions) and o.pool.images is p.images
    assert o.fallback == ALSQPOptions(al_iter=4)
    assert LMOptions(fallback=False).fallback is None and LMOptions(fallback=True).fallback == ALSQPOptions()
    with pytest.raises(Exception):
        LMOptions().max_iter = 3  # frozen


@pytest.mark.parametrize("method, options, match", [
    ("lm", {"max_iters": 3}, "unknown option 'max_iters' of LMOptions; did you mean 'max_iter'"),
    ("lm", {"fallback": {"al_iters": 3}}, "unknown option 'al_iters' of ALSQPOptions; did you mean 'al_iter'"),
    ("lm", {"pool": {"k": 2}}, "PoolOptions needs 'images'"),
    ("al", {"inner_step": 3}, "did you mean 'inner_steps'"),
    ("sqp", {"zzz": 1}, "valid: max_iter, mu_rel, step_tol"),
    ("lm", SQPOptions(), "method 'lm' takes LMOptions or a dict of its fields, got SQPOptions"),
    ("sqp", [1], "method 'sqp' takes SQPOptions"),
])
def test_bad_options_raise_config_error_with_a_suggestion(method, options, match):
    model = _toy_selu()
    x = torch.rand(1, 1, 6, 6)
    with pytest.raises(ConfigError, match=match):
        invert_to_features(model, _feats(model, x), x, method=method, options=options)


def test_invert_to_features_has_at_most_12_parameters():
    assert len(inspect.signature(invert_to_features).parameters) <= 12


def test_no_import_cycle_inside_fsl_inversion():
    """The solver modules import each other one way only (sqp <- al <- lm <- invert), so each one imports alone."""
    import ast
    import pathlib

    import fsl.inversion

    pkg = pathlib.Path(fsl.inversion.__file__).parent
    deps = {}
    for f in pkg.glob("*.py"):
        if f.stem == "__init__":
            continue
        mods = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fsl.inversion."):
                mods.add(node.module.rsplit(".", 1)[1])
        deps[f.stem] = mods
    assert {"sqp", "al", "lm", "invert", "options", "jacobian"} <= deps.keys() and "core" not in deps
    done: set[str] = set()

    def visit(m, path):
        assert m not in path, f"import cycle: {' -> '.join(path + [m])}"
        if m not in done:
            for d in deps.get(m, ()):
                visit(d, path + [m])
            done.add(m)

    for m in deps:
        visit(m, [])
