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

    saved = [(r, set(r.names())) for r in (ATTACKS, DETECTORS, MODELS, ANALYSES)]
    yield
    for reg, before in saved:  # a name cannot be registered twice, so only new names need removing
        for name in set(reg.names()) - before:
            reg.unregister(name)


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
    from fsl.analysis.metric_docs import analysis_docs, match
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
    assert all(match(key, list(analysis_docs(type(analyses[1])))) for key in flat)  # each key has a MetricDoc
    media = wandb_media(analyses[1], res)
    assert set(media) == {"norms/hist", "norms/feature_hist"}
    assert res.figures["hist"].file == "feature_norms" and len(res.per_sample["feature_norm"]) == 30


def test_pixel_study_example(registries, tmp_path, monkeypatch):
    """The PixelStudy of docs/extending.md: its yaml (in a copy of configs/) puts it into analyze.py's
    default list, the run's `pixels` settings reach it, and its metric is the relative feature change
    on the samples the pixel studies share."""
    import shutil

    import fsl.configfiles
    from fsl.analysis import Context, build_analyses, default_analyses, flat_metrics, run_analyses
    from fsl.analysis.metric_docs import analysis_docs, match
    from fsl.config import with_default_analyses

    model = tiny_model()
    run_example("pixel_study")
    _, cfg = blocks("pixel_study")
    for sub in ("analysis", "pixels"):
        shutil.copytree(fsl.configfiles.CONFIG_DIR / sub, tmp_path / sub)
    (tmp_path / "analysis" / "noise.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(fsl.configfiles, "CONFIG_DIR", tmp_path)  # the yaml files are read on every call
    assert default_analyses()[-1] == "noise"  # `default: true`, registered after the built-ins
    assert with_default_analyses("analyze", [])[0].endswith(",noise]")

    ctx = Context(model, lambda split: data(60 if split == "train" else 30, seed=0 if split == "train" else 3),
                  eval_split="test", figures=True)
    (study,) = build_analyses({"noise": {}}, shared={"pixels": {"n_measure": 12, "n_figure": 2}})
    assert study.sigma == 0.05  # the yaml's default
    res = run_analyses([study], ctx)["noise"]

    run = study.begin(ctx)  # the same selection (cached per context) and settings
    assert run.o["n_measure"] == 12 and run.o["method"] == "lm"  # the run's pixels, then configs/pixels/
    assert torch.bincount(run.test_labels, minlength=3).tolist() == [4, 4, 4]  # stratified by class
    x = run.test_images[:12]
    g = torch.Generator().manual_seed(int(run.o["seed"]))
    x_noisy = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        f, f_noisy = model.forward_features(x).double(), model.forward_features(x_noisy).double()
    want = float(((f_noisy - f).norm(dim=1) / f.norm(dim=1)).median())
    assert res.metrics["noise/relative_change_median"] == pytest.approx(want) and want > 0
    assert set(flat_metrics(study, res)) == {"pixels/noise/n", "pixels/noise/relative_change_median",
                                             "pixels/studies/noise/seconds"}
    assert all(match(key, list(analysis_docs(type(study)))) for key in flat_metrics(study, res))
    assert res.figures["noise"].file == "pixels_noise" and res.report[0].startswith("- pixel noise of sigma 0.05")
    assert study.section_intro(ctx)[0] == "## From feature space back to pixels"
    ANALYSES.unregister("noise")
    assert "noise" not in ANALYSES
