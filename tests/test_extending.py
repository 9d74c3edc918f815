"""The worked examples of docs/extending.md, executed: each registers itself, runs through fsl's
own machinery, and is removed again (the registries are restored after every test)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from fsl.adversarial import ATTACKS, DETECTORS
from fsl.analysis import ANALYSES
from fsl.models import MODELS

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def blocks(kind: str) -> tuple[str, dict]:
    """The python source and the parsed yaml of the doc's ``example=<kind>`` blocks."""
    text = DOC.read_text()
    src = re.findall(rf"```python example={kind}\n(.*?)```", text, re.S)
    cfg = re.findall(rf"```yaml example={kind}\n(.*?)```", text, re.S)
    assert len(src) == 1, f"docs/extending.md needs one python example={kind} block"
    return src[0], (yaml.safe_load(cfg[0]) if cfg else {})


@pytest.fixture
def registries():
    import fsl.analysis.studies  # noqa: F401  (register the built-in analyses before the snapshot)

    saved = [(r, dict(r)) for r in (ATTACKS, DETECTORS, MODELS, ANALYSES)]
    yield
    for reg, copy in saved:
        reg.clear()
        reg.update(copy)


def run_example(kind: str) -> tuple[dict, dict]:
    src, cfg = blocks(kind)
    ns: dict = {}
    exec(compile(src, f"docs/extending.md[{kind}]", "exec"), ns)
    return ns, cfg


def tiny_model():
    ns, cfg = run_example("model")
    from fsl.models import create_model

    torch.manual_seed(0)
    kw = {k: v for k, v in cfg.items() if k != "name"}
    return create_model(cfg["name"], input_shape=[1, 12, 12], num_classes=3, mean=[0.5], std=[0.25], **kw).eval()


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (0.15 * torch.rand(n, 1, 12, 12, generator=g) + 0.25 * y.view(-1, 1, 1, 1).float()).clamp(0, 1)
    return x, y


def test_model_example(registries):
    model = tiny_model()
    assert "tiny_cnn" in MODELS
    x, _ = data(8)
    f = model.forward_features(x)
    assert f.shape == (8, 16) and bool((f >= 0).all())  # its declared feature domain
    assert model.feature_domain.contains(f)
    assert torch.allclose(model(x), model.forward_head(f))


def test_attack_example(registries):
    model = tiny_model()
    run_example("attack")
    _, suite = blocks("attack")
    from fsl.adversarial import run_attack
    from fsl.adversarial.suites import check_suite

    (name, spec), = check_suite(suite).items()
    params = dict(spec)
    x, y = data(12)
    res = run_attack(model, x, y, params.pop("attack"), **params)
    assert res.adv_images.shape == x.shape and 0 <= float(res.adv_images.min()) and float(res.adv_images.max()) <= 1
    assert float(res.linf.max()) <= 0.1 + 1e-6
    # a plain FGSM step is exactly sign(grad) * eps wherever the box does not clip
    x.requires_grad_(True)
    grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)
    want = (x + 0.1 * grad.sign()).clamp(0, 1).detach()
    assert torch.allclose(res.adv_images, want, atol=1e-6)


def test_detector_example(registries):
    model = tiny_model()
    run_example("detector")
    from fsl.adversarial.evaluate import Detectors, evaluate_attack

    x_tr, y_tr = data(60, seed=1)
    with torch.no_grad():
        f_tr = model.forward_features(x_tr)
    det = Detectors.fit(model, f_tr, y_tr, knn_k=5)
    assert "feature_norm" in det.names
    x, y = data(24, seed=2)
    ev = evaluate_attack(model, x, y, f_tr, y_tr, attack="deepfool", detectors=det, n_boot=20, only_correct=False)
    with torch.no_grad():
        want = (model.forward_features(x[ev.per_sample["index"]]).double().norm(dim=1)
                - f_tr.double().norm(dim=1).median()).abs()
    assert torch.allclose(ev.per_sample["clean_feature_norm"], want)
    assert ev.metrics["success_rate"] > 0.5  # DeepFool ends past the boundary
    assert 0.0 <= ev.metrics["auroc/feature_norm"] <= 1.0


def test_analysis_example(registries):
    model = tiny_model()
    run_example("analysis")
    _, cfg = blocks("analysis")
    from fsl.analysis import Context, build_analyses, flat_metrics, run_analyses
    from fsl.analysis.run import wandb_media

    x, y = data(60)
    ctx = Context(model, lambda split: data(60 if split == "train" else 30, seed=0 if split == "train" else 3),
                  eval_split="val", figures=True)
    analyses = build_analyses({"feature_norms": cfg["feature_norms"], "geometry": {"n_train": None}})
    assert [a.name for a in analyses] == ["geometry", "feature_norms"]  # `uses` orders it after geometry
    results = run_analyses(analyses, ctx)
    res = results["feature_norms"]
    feats = ctx.eval_features().features.double()
    norms = feats.norm(dim=1)
    assert res.metrics["feature/median"] == pytest.approx(float(norms.median()))
    margins = results["geometry"].data.per_sample["margin"]
    assert res.metrics["margin_over_norm/median"] == pytest.approx(float((margins / norms).median()))
    flat = flat_metrics(analyses[1], res)
    assert set(flat) == {"norms/feature/median", "norms/head/max_row", "norms/margin_over_norm/median", "norms/seconds"}
    media = wandb_media(analyses[1], res)
    assert set(media) == {"norms/hist", "norms/feature_hist"}
    assert res.figures["hist"].file == "feature_norms" and len(res.per_sample["feature_norm"]) == 30
