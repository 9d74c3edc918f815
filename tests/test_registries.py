"""Contracts every registered entry must meet, parametrised over the registries: a new model,
attack, detector or analysis is tested here without editing this file."""
from __future__ import annotations


import pytest
import torch
import yaml

from fsl.adversarial import ATTACKS, DETECTORS
from fsl.analysis import ANALYSES
from fsl.analysis.base import DRIVER_KEYS, analysis_defaults, create_analysis, default_analyses
from fsl.config import CONFIG_DIR
from fsl.models import MODELS, LinearHead

BUILTIN_ANALYSES = list(ANALYSES)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_contract(name, seeded_model):
    model = seeded_model(name)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model.forward_head(f)
    assert f.shape == (3, model.head.in_features) and logits.shape == (3, 10)
    assert torch.allclose(model(x), logits)
    assert model.feature_domain.contains(f), "features outside the declared feature domain"
    with torch.no_grad():
        maps = model.feature_maps(x)
    assert maps and all(m.shape[0] == 3 for m in maps.values())
    assert torch.equal(list(maps.values())[-1], f), "the last feature map must be forward_features(x)"
    head = LinearHead.from_model(model)
    assert torch.equal(head.weight, model.head.weight.detach().cpu())
    assert (head.lower, head.upper) == (model.feature_domain.lower, model.feature_domain.upper)
    if model.invertible_selu:
        stack = model.selu_stack()
        assert stack and all(isinstance(lin, torch.nn.Linear) for _, lin, _ in stack)
    cfg = yaml.safe_load((CONFIG_DIR / "model" / f"{name}.yaml").read_text())
    assert cfg["name"] == name and "_target_" not in cfg


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_contract(name, seeded_model):
    """Images stay in [0, 1] with their shape; success is decided on the returned images."""
    from fsl.adversarial import run_attack
    from fsl.adversarial.success import is_adversarial

    model = seeded_model("fcnn1")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    entry, defaults = ATTACKS.entry(name), ATTACKS.defaults(name)
    params = {"steps": 5} if "steps" in defaults else {}
    res = run_attack(model, x, y, name, **params)
    assert res.adv_images.shape == x.shape
    assert float(res.adv_images.min()) >= 0.0 and float(res.adv_images.max()) <= 1.0
    with torch.no_grad():
        logits = model(res.adv_images)
    assert torch.equal(res.success.cpu(), (is_adversarial(logits, y) & ~res.nonfinite).cpu())
    eps = defaults.get("eps")
    if entry.meta["norm"].lower() == "linf" and eps is not None:
        assert float(res.linf.max()) <= float(eps) + 1e-6
    assert entry.meta["doc"], f"attack {name!r} needs a docstring (its first line is the attack's description)"


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_contract(name):
    from fsl.adversarial.detectors import FitData, build_detector
    from fsl.adversarial.evaluate import detector_scores, per_sample_dtypes

    g = torch.Generator().manual_seed(3)
    W, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    F_tr = torch.randn(80, 6, generator=g, dtype=torch.float64).abs()
    y_tr = (F_tr @ W.T + b).argmax(1)
    det = build_detector(name).fit(FitData(F_tr, y_tr, W, b, 4))
    F = torch.randn(10, 6, generator=g, dtype=torch.float64).abs()
    logits = F @ W.T + b
    margin, hull = torch.rand(10, generator=g, dtype=torch.float64), torch.rand(10, generator=g, dtype=torch.float64)
    v = det.value(F, logits, margin, hull)
    assert v.shape == (10,) and bool(torch.isfinite(v).all())
    cols = {"margin": margin, "hull": hull, name: v}
    ps = {f"{k}_{c}": t for k in ("clean", "adv") for c, t in cols.items()}
    s = detector_scores(ps, "adv", [name])[name]
    assert s.shape == (10,)
    if not det.needs:
        assert torch.equal(s, -v if det.negate else v)
    assert f"adv_{name}" in per_sample_dtypes() and f"clean_{name}" in per_sample_dtypes()


def test_attack_defaults_are_read_when_asked(seeded_model):
    """``ATTACKS.defaults`` and ``run_attack`` see an attack registered after import (no snapshot),
    and every call gets a fresh dict."""
    from fsl.adversarial import register_attack, run_attack

    @register_attack("late_identity", defaults={"scale": 0.0}, norm="Linf")
    def late_identity(model, images, labels, scale):
        """Returns the images moved by ``scale`` (0: unchanged)."""
        return (images + scale).clamp(0, 1)

    try:
        assert ATTACKS.names()[-1] == "late_identity" and "late_identity" in ATTACKS
        assert ATTACKS.defaults("late_identity") == {"scale": 0.0}
        ATTACKS.defaults("late_identity")["scale"] = 9.0  # a copy: the registered defaults stay
        assert ATTACKS.defaults("late_identity") == {"scale": 0.0}
        assert ATTACKS.entry("late_identity").meta == {"norm": "Linf", "doc": late_identity.__doc__}
        model = seeded_model("fcnn1")
        x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
        res = run_attack(model, x, model(x).argmax(1).detach(), "late_identity")
        assert res.params == {"scale": 0.0} and torch.equal(res.adv_images, x)
    finally:
        ATTACKS.unregister("late_identity")
    assert "late_identity" not in ATTACKS


def test_detector_registration_order():
    """The built-in detectors in the order of the report's columns (registration order)."""
    assert DETECTORS.names()[:7] == ("margin", "ambiguity", "msp", "energy", "mahalanobis", "knn", "fdbd")
    assert list(DETECTORS) == list(DETECTORS.names())


def test_unknown_attack_and_detector_names_suggest_the_closest(seeded_model):
    from fsl.adversarial import Detectors, DistanceFunctions, run_attack
    from fsl.adversarial.detectors import build_detector
    from fsl.adversarial.suites import check_suite
    from fsl.errors import ConfigError

    model = seeded_model("fcnn1")
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'; did you mean 'pgd'"):
        run_attack(model, x, y, "pgdd")
    with pytest.raises(ConfigError, match=r"run_attack\('pgd'\): attack 'pgd' has no option 'epss'; did you mean 'eps'"):
        run_attack(model, x, y, "pgd", epss=0.1)
    with pytest.raises(ConfigError, match="'p': unknown attack 'deepfol'; did you mean 'deepfool'"):
        check_suite({"p": {"attack": "deepfol"}})
    with pytest.raises(ConfigError, match=r"\(cw\): attack 'cw' has no option 'kapa'; did you mean 'kappa'"):
        check_suite({"c": {"attack": "cw", "kapa": 1.0}})
    with pytest.raises(ConfigError, match="unknown detector 'knnn'; did you mean 'knn'"):
        build_detector("knnn")
    with pytest.raises(ConfigError, match=r"detector 'knn' has no option 'kk'; did you mean 'k'"):
        build_detector("knn", kk=3)
    with pytest.raises(ConfigError, match=r"unknown detector 'enrgy'; did you mean 'energy'"):
        geo = DistanceFunctions(margin_fn=lambda f: f.norm(dim=1), hull_fn=lambda f: f.norm(dim=1))
        Detectors.fit(model, torch.rand(20, model.head.in_features), torch.arange(20) % 10, geometry=geo,
                      params={"enrgy": {"temperature": 2.0}})
    with pytest.raises(ValueError, match="has no option"):  # ConfigError is a ValueError
        build_detector("margin", k=1)


@pytest.mark.parametrize("name", BUILTIN_ANALYSES)
def test_analysis_contract(name):
    """One yaml per analysis, holding its options under its name (the only copy of its defaults)."""
    cls = ANALYSES[name]
    assert cls.prefix and cls.name == name and cls.__doc__
    path = CONFIG_DIR / "analysis" / f"{name}.yaml"
    node = yaml.safe_load(path.read_text())
    assert list(node) == [name], f"{path} must hold one top-level key, {name!r}"
    assert set(DRIVER_KEYS) <= set(node[name])
    a = create_analysis(name)
    assert set(a.options) == set(analysis_defaults(name)) - set(DRIVER_KEYS)
    for dep in (*cls.requires, *cls.uses):
        assert dep in ANALYSES, f"{name} depends on unknown analysis {dep!r}"
    with pytest.raises(Exception, match="has no option"):
        create_analysis(name, not_an_option=1)
    assert name in default_analyses(), f"{path} should say `default: true` (analyze.py's default list)"


def test_unknown_names_are_refused_with_the_closest():
    from fsl.analysis import build_analyses

    with pytest.raises(Exception, match="did you mean 'geometry'"):
        build_analyses({"geometri": {}})
    with pytest.raises(Exception, match="needs \\['geometry'\\]"):
        class Needs(ANALYSES["spaces"]):
            requires = ("geometry",)
        ANALYSES.register("needs_geo", Needs)
        try:
            build_analyses({"needs_geo": {}})
        finally:
            ANALYSES.unregister("needs_geo")
