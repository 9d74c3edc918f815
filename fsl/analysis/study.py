"""``analyze(cfg)``: the full study on a checkpoint — what ``analyze.py`` runs."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fsl.analysis.features import FeatureSet, extract_features, fixed_subset
from fsl.analysis.geometry_study import feature_geometry_study
from fsl.analysis.paper import PAPER_CIFAR10
from fsl.analysis.results import ResultsDir

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    metrics: dict[str, float]
    results_dir: Path
    files: list[Path] = field(default_factory=list)


def pixel_hull_study(train_images: torch.Tensor, train_labels: torch.Tensor, images: torch.Tensor,
                     labels: torch.Tensor, model, hull_kwargs: dict | None = None, batch_size: int = 1000,
                     device="cpu") -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Project images onto the convex hull of the training images in pixel space; label agreement of
    the support and the model's accuracy on the projected images (paper: 27% and 90% -> 33%)."""
    from fsl.geometry import hull_distances

    q = images.flatten(1).double()
    pts = train_images.flatten(1).double()
    r = hull_distances(q, pts, **(hull_kwargs or {}))
    sidx = r.support_index.cpu()
    valid = sidx >= 0
    same = torch.zeros_like(valid)
    same[valid] = train_labels[sidx[valid]] == labels[:, None].expand_as(sidx)[valid]
    proj = r.projection.float().clamp(0, 1).view_as(images)
    preds = extract_features(model, proj, labels, batch_size=batch_size, device=device).preds
    orig = extract_features(model, images, labels, batch_size=batch_size, device=device).preds
    metrics = {
        "pixel/n_queries": float(len(q)), "pixel/n_train": float(len(pts)),
        "pixel/hull/distance_median": float(r.distance.double().median()),
        "pixel/hull/frac_outside": float((r.distance > 0).double().mean()),
        "pixel/hull/certified_frac": float(r.certified.double().mean()),
        "pixel/hull/support_label_agreement": float((same & valid).sum() / valid.sum().clamp(min=1)),
        "pixel/hull/projection_acc": float((preds == labels).double().mean()),
        "pixel/acc_on_queries": float((orig == labels).double().mean()),
    }
    return metrics, {"pixel_hull": r.distance.double().cpu(), "pixel_projection_pred": preds, "projection": proj}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def analyze(cfg) -> AnalysisResult:
    """Rebuild model and data from ``cfg.ckpt_path`` and run DESIGN A and B on the test set."""
    from fsl.data import create_datamodule
    from fsl.training.checkpoint import load_model

    from fsl.validate import validate_analyze_config

    validate_analyze_config(cfg)
    t0 = time.time()
    device = _device(cfg.get("device", "auto"))
    model, hp = load_model(cfg.ckpt_path, expected_model=cfg.get("expected_model"), map_location=device)
    data_spec = {**hp["data"], **{k: v for k, v in (cfg.get("data") or {}).items() if v is not None}}
    dm = create_datamodule(**data_spec)
    dm.setup()
    names = [str(c) for c in dm.class_names]
    out = ResultsDir(cfg.output_dir, staged=True)  # whole or absent: swapped in when everything is written
    bs = int(cfg.get("batch_size", 1000))
    seed = int(cfg.get("seed", 0))

    x_tr, y_tr = dm.tensors("train")
    x_te, y_te = dm.tensors("test")
    idx_tr = fixed_subset(len(y_tr), cfg.get("n_train"), seed)
    idx_te = fixed_subset(len(y_te), cfg.get("n_eval"), seed + 1)
    train = extract_features(model, x_tr[idx_tr], y_tr[idx_tr], idx_tr, bs, device, progress=True, desc="train features")
    test = extract_features(model, x_te[idx_te], y_te[idx_te], idx_te, bs, device, progress=True, desc="test features")
    images = x_te[idx_te]

    steps = tqdm(total=5, desc="analysis", leave=True)
    dom = model.feature_domain
    steps.set_postfix_str("feature-space geometry")
    study = feature_geometry_study(train, test, model.head.weight, model.head.bias, dom.lower, dom.upper,
                                   hull_kwargs=dict(cfg.get("hull") or {}), device=device)
    metrics = {f"analysis/{k}": v for k, v in study.metrics.items()}
    steps.update()

    per_sample = {k: v for k, v in study.per_sample.items()}
    pcfg = cfg.get("pixel_hull") or {}
    if pcfg.get("enabled", True):
        steps.set_postfix_str("pixel-space hull")
        n_q = pcfg.get("n_queries", 500)
        q_idx = torch.arange(len(idx_te))[: n_q if n_q else None]
        p_tr = fixed_subset(len(y_tr), pcfg.get("n_train"), seed)
        pm, pps = pixel_hull_study(x_tr[p_tr], y_tr[p_tr], images[q_idx], y_te[idx_te][q_idx], model,
                                   dict(pcfg.get("hull") or {}), bs, device)
        metrics.update(pm)
        col = torch.full((len(idx_te),), float("nan"), dtype=torch.float64)
        col[q_idx] = pps["pixel_hull"]
        per_sample["pixel_hull"] = col
    steps.update()

    steps.set_postfix_str("adversarial detection")
    adv_results = {}
    acfg = cfg.get("adversarial") or {}
    if acfg.get("enabled", True):
        from fsl.adversarial.evaluate import Detectors, DistanceFunctions, evaluate_attack
        from fsl.adversarial.suites import check_suite, load_suite, suite_for_data

        suite = acfg.get("suite") or "auto"
        attacks = check_suite(acfg["attacks"]) if acfg.get("attacks") else \
            load_suite(suite_for_data(hp["data"]["name"]) if suite == "auto" else suite)
        geom = DistanceFunctions.from_model(model, train.features.double(), **dict(cfg.get("hull") or {}))
        detectors = Detectors.fit(model, train.features, train.labels, geometry=geom,
                                  train_margins=study.train_margin, knn_k=int(acfg.get("knn_k", 50)))
        a_idx = torch.arange(len(idx_te))[: acfg.get("n_samples") or None]
        for name, params in tqdm(attacks.items(), desc="attacks", leave=False):
            params = dict(params)
            ev = evaluate_attack(model, images[a_idx], y_te[idx_te][a_idx], train.features, train.labels,
                                 attack=params.pop("attack"), detectors=detectors,
                                 batch_size=int(acfg.get("batch_size", 256)), seed=seed,
                                 n_boot=int(acfg.get("n_boot", 1000)), **params)
            adv_results[name] = ev
            metrics.update({f"adv/{name}/{k}": v for k, v in ev.metrics.items()})
    steps.update()

    steps.set_postfix_str("pixel-space studies")
    pixel_lines: list[str] = []
    xcfg = cfg.get("pixels") or {}
    if xcfg.get("run", True):
        from fsl.analysis.pixel_studies import pixel_space_studies
        from fsl.config import to_plain

        xm, pixel_lines = pixel_space_studies(model, x_tr[idx_tr], y_tr[idx_tr], images, y_te[idx_te], train.features,
                                              test.features, out, names, {k: v for k, v in to_plain(xcfg).items()
                                                                          if k != "run"})
        metrics.update({f"pixels/{k}": v for k, v in xm.items()})
    steps.update()

    steps.set_postfix_str("figures and report")
    files = _write_outputs(out, cfg, metrics, per_sample, study, images, names, adv_results, hp, pixel_lines)
    steps.update()
    steps.close()
    metrics["analysis/seconds"] = time.time() - t0
    files.append(out.write_json("metrics.json", metrics))
    files = [out.final_path(f) for f in files]
    out.commit()
    _log_wandb(cfg, metrics, out)
    return AnalysisResult(metrics=metrics, results_dir=out.root, files=files)


def _write_outputs(out: ResultsDir, cfg, metrics, per_sample, study, images, names, adv_results, hp,
                   pixel_lines=()) -> list[Path]:
    from fsl.plots import geometry_figures as gf

    files = []
    cols = {k: (v.double() if v.dtype.is_floating_point else v.long()) for k, v in per_sample.items()}
    cols["label_name"] = [names[int(i)] for i in per_sample["label"]]
    cols["pred_name"] = [names[int(i)] for i in per_sample["pred"]]
    for j, name in enumerate(names):
        cols[f"d_{j}"] = study.distances[:, j]
    files.append(out.write_csv("per_sample.csv", cols))
    ps = study.per_sample
    files.append(out.save_figure("distance_histograms", gf.distance_histograms(ps["margin"], ps["hull"])))
    files.append(out.save_figure("margin_vs_hull", gf.margin_vs_hull(ps["margin"], ps["hull"], ps["correct"])))
    files.append(out.save_figure("closest_class", gf.closest_class_bars(ps["closest"], ps["pred"], names)))
    for most in (True, False):
        fig, _ = gf.ambiguity_grid(images, ps["ambiguity"], ps["label"], ps["pred"], names, k=16, most=most)
        files.append(out.save_figure("most_ambiguous" if most else "least_ambiguous", fig))
    ids = [int(i) for i in (cfg.get("table1_samples") or [0, 1, 2, 3, 4]) if int(i) < len(ps["index"])]
    files.append(out.save_figure("table1_margins", gf.margin_table_figure(
        study.distances[ids], names, [int(ps["index"][i]) for i in ids], ps["pred"][ids])))
    if adv_results:
        from fsl.plots.detection_figures import roc_figure

        for name, ev in adv_results.items():
            files.append(out.save_figure(f"roc_{name}", roc_figure(ev.roc, title=f"{name}: adversarial vs clean")))
    files.append(out.write_text("report.md", render_report(cfg, metrics, study, names, ids, adv_results, hp, out,
                                                           pixel_lines)))
    return files


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_report(cfg, metrics, study, names, ids, adv_results, hp, out: ResultsDir, pixel_lines=()) -> str:
    m = metrics
    lines = [f"# fsl analysis: {hp['model']['name']} on {hp['data']['name']}", "",
             f"Checkpoint: `{cfg.ckpt_path}`  ",
             f"Evaluation samples: {int(m['analysis/n_eval'])} (test split), training features: "
             f"{int(m['analysis/n_train'])}; model accuracy on them: {m['analysis/acc']:.4f}.", "",
             "## Paper (ResNet-20, CIFAR-10) vs measured", "",
             "| quantity | paper | measured |", "|---|---|---|"]
    for key, (paper, what) in PAPER_CIFAR10.items():
        lines.append(f"| {what} (`{key}`) | {_fmt(paper)} | {_fmt(m.get(key))} |")
    lines += ["", "## Feature space", "",
              f"- margin d_min: median {_fmt(m['analysis/margin/median'])}, mean {_fmt(m['analysis/margin/mean'])}; "
              f"hull distance d_h: median {_fmt(m['analysis/hull/median'])}",
              f"- certified: margins {_fmt(m['analysis/margin/certified_frac'])}, hull {_fmt(m['analysis/hull/certified_frac'])}",
              f"- accuracy on hull projections (feature space): {_fmt(m.get('analysis/hull/projection_acc'))} "
              f"(model: {_fmt(m['analysis/acc'])})",
              f"- Lipschitz constant of the head (sigma_max(W)): {_fmt(m['analysis/lipschitz'])}", "",
              "### Table 1: distance to each class's boundary", "",
              "| sample | pred | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    ps = study.per_sample
    for i in ids:
        row = []
        for j in range(len(names)):
            d = float(study.distances[i, j])
            row.append("-" if j == int(ps["pred"][i]) else ("inf" if math.isinf(d) else f"{d:.3f}"))
        lines.append(f"| #{int(ps['index'][i])} | {names[int(ps['pred'][i])]} | " + " | ".join(row) + " |")
    if adv_results:
        lines += ["", *adversarial_report_lines(m, list(adv_results))]
    if pixel_lines:
        lines += ["", *pixel_lines]
    lines += ["", "## Figures", ""]
    for name, path in out.figures.items():
        if not name.startswith("pixels_"):  # those are placed in their own section
            lines.append(f"![{name}](figures/{path.name})")
    lines.append("")
    return "\n".join(lines)


def adversarial_report_lines(m: dict, attacks: list[str]) -> list[str]:
    """The report's attack table and detection table (attacks x detectors, AUROC with 95% CI)."""
    from fsl.adversarial.detection import SCORES

    g = lambda a, k: _fmt(m.get(f"adv/{a}/{k}"))  # noqa: E731
    lines = ["## Adversarial detection", "",
             "Attacked: correctly classified test samples. Success: misclassified with a logit gap above float "
             "noise. Norms and gap: medians over the successful examples.", "",
             "| attack | attacked | success | median L2 | median Linf | median logit gap | frac d_min < d_h | "
             "frac d_h shrank | train-margin rule caught | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in attacks:
        lines.append(f"| {a} | {g(a, 'n_attacked')} | {g(a, 'success_rate')} | {g(a, 'l2/median')} | "
                     f"{g(a, 'linf/median')} | {g(a, 'gap/median')} | {g(a, 'frac_margin_lt_hull')} | "
                     f"{g(a, 'frac_hull_shrank')} | {g(a, 'rule/train_margin_caught')} | {g(a, 'seconds')} |")

    def cell(a: str, s: str, key: str = "auroc") -> str:
        v, lo, hi = (m.get(f"adv/{a}/{k}/{s}") for k in (key, f"{key}_lo", f"{key}_hi"))
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and not math.isnan(lo) else f"{v:.3f}"

    for key, title in (("auroc", "AUROC"), ("fpr95", "FPR at 95% TPR"), ("tpr5", "TPR at 5% FPR")):
        lines += ["", f"### {title} (95% bootstrap interval), clean test samples vs successful adversarial examples",
                  "", "| attack | " + " | ".join(SCORES) + " |", "|---|" + "---|" * len(SCORES)]
        lines += [f"| {a} | " + " | ".join(cell(a, s, key) for s in SCORES) + " |" for a in attacks]
    return lines


def _log_wandb(cfg, metrics: dict, out: ResultsDir) -> None:
    wcfg = cfg.get("wandb") or {}
    if not wcfg.get("enabled", True):
        return
    import wandb

    from fsl.config import wandb_mode

    run = wandb.init(project=wcfg.get("project", "fsl"), job_type="analyze", dir=str(wcfg.get("dir", ".")),
                     mode=wcfg.get("mode") or wandb_mode(), name=wcfg.get("name"),
                     config={"ckpt_path": str(cfg.ckpt_path), "results_dir": str(out.root)})
    run.log({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
             **{f"figures/{k}": wandb.Image(str(p)) for k, p in out.figures.items()}})
    run.finish()
    wandb.teardown()
