"""``analyze(cfg)``: every configured analysis once on a checkpoint's test set — what ``analyze.py``
runs. Writes ``metrics.json``, ``per_sample.csv``, ``figures/*.png`` and ``report.md`` (whole or
absent) and logs the same keys, figures, histograms and tables to W&B as the training callback."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fsl.analysis.base import Analysis, Result, build_analyses
from fsl.analysis.context import Context
from fsl.analysis.paper import PAPER_CIFAR10
from fsl.analysis.report import fmt
from fsl.analysis.results import ResultsDir, check_results_folder
from fsl.analysis.run import close_figures, flat_metrics, run_analyses

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    metrics: dict[str, float]
    results_dir: Path
    files: list[Path] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def analyze(cfg) -> AnalysisResult:
    """Rebuild model and data from ``cfg.ckpt_path`` and run ``cfg.analysis`` (the analyses of
    ``configs/analysis/``, in dependency order) on the test set."""
    from fsl.data import create_datamodule
    from fsl.training.checkpoint import load_model
    from fsl.validate import validate_analyze_config

    validate_analyze_config(cfg)
    check_results_folder(cfg.output_dir)  # before any work: never a folder holding files fsl did not write
    t0 = time.time()
    device = _device(cfg.get("device", "auto"))
    model, hp = load_model(cfg.ckpt_path, expected_model=cfg.get("expected_model"), map_location=device)
    analyses = build_analyses(cfg.get("analysis"), shared={"pixels": cfg.get("pixels")})
    data_spec = {**hp["data"], **{k: v for k, v in (cfg.get("data") or {}).items() if v is not None}}
    if data_spec.get("val_size") == 0:  # trained before validation splits existed
        log.warning("this checkpoint was trained with data.val_size=0: it was selected on the test split, so its "
                    "test numbers are biased; retrain it (validation is now held out of the training data)")
        data_spec["val_size"] = None
    dm = create_datamodule(**data_spec)
    dm.setup()
    ctx = Context.from_datamodule(model, dm, eval_split="test", seed=int(cfg.get("seed", 0)),
                                  n_train=cfg.get("n_train"), n_eval=cfg.get("n_eval"),
                                  batch_size=int(cfg.get("batch_size", 1000)), device=device, progress=True,
                                  data_name=hp["data"]["name"])
    from fsl.publish.provenance import provenance, sha256

    # refused before any work when the folder holds files fsl did not write; fsl's own files are
    # replaced when everything is written
    out = ResultsDir(cfg.output_dir, staged=True,
                     meta={"checkpoint": {"path": str(cfg.ckpt_path), "sha256": sha256(cfg.ckpt_path)}, **provenance()})
    metrics: dict[str, float] = {}
    done: list[tuple[Analysis, Result, dict]] = []

    def save(a: Analysis, res: Result) -> None:
        metrics.update(flat_metrics(a, res))
        files = {key: out.save_figure(fig.file, fig.fig) for key, fig in res.figures.items()}  # written as they come
        close_figures(res)
        done.append((a, res, files))

    run_analyses(_progress(analyses), ctx, on_result=save)
    written = [out.write_csv("per_sample.csv", _per_sample(done, ctx))] if done else []
    written.append(out.write_text("report.md", render_report(cfg, hp, ctx, metrics, done)))
    metrics["analyze/seconds"] = time.time() - t0
    written.append(out.write_json("metrics.json", metrics))
    written += [p for _, _, files in done for p in files.values()]
    written = [out.final_path(f) for f in written]
    out.commit()
    _log_wandb(cfg, metrics, done, out)
    return AnalysisResult(metrics=metrics, results_dir=out.root, files=written)


def _progress(analyses):
    """The analyses, with a bar naming the one being computed."""
    bar = tqdm(analyses, desc="analysis", leave=True)
    for a in bar:
        bar.set_postfix_str(a.name)
        yield a
    bar.close()


def _per_sample(done, ctx) -> dict:
    """Every analysis' per-sample columns over the evaluation samples, in analysis order."""
    cols: dict = {}
    n = None
    for a, res, _ in done:
        for k, v in res.per_sample.items():
            v = (v.double() if v.dtype.is_floating_point else v.long()) if isinstance(v, torch.Tensor) else v
            if n is None:
                n = len(v)
            if len(v) != n:
                raise ValueError(f"analysis {a.name!r}: per-sample column {k!r} has {len(v)} rows, the evaluation "
                                 f"set {n}; per_sample columns must cover the context's evaluation samples")
            cols[k] = v
    return cols


def render_report(cfg, hp, ctx, metrics: dict, done) -> str:
    """``report.md``: the paper comparison, then every analysis' section with its figures."""
    lines = [f"# fsl analysis: {hp['model']['name']} on {hp['data']['name']}", "",
             f"Checkpoint: `{cfg.ckpt_path}`  ", f"Analyses: {', '.join(a.name for a, _, _ in done)}."]
    if any(key in metrics for key in PAPER_CIFAR10):  # only when an analysis measured one of them
        lines += ["", "## Paper (ResNet-20, CIFAR-10) vs measured", "",
                  "| quantity | paper | measured |", "|---|---|---|"]
        for key, (paper, what) in PAPER_CIFAR10.items():
            lines.append(f"| {what} (`{key}`) | {fmt(paper)} | {fmt(metrics.get(key))} |")
    sections = set()
    for a, res, files in done:
        section = getattr(a, "section", None)
        lines.append("")
        if section and section not in sections:
            sections.add(section)
            lines += a.section_intro(ctx)
        lines += res.report
        if files:
            lines += ["", *[f"![{res.figures[k].file}](figures/{Path(p).name})" for k, p in files.items()]]
    lines.append("")
    return "\n".join(lines)


def _log_wandb(cfg, metrics: dict, done, out: ResultsDir) -> None:
    wcfg = cfg.get("wandb") or {}
    if not wcfg.get("enabled", True):
        return
    import wandb

    from fsl.analysis.run import wandb_media
    from fsl.config import wandb_mode

    run = wandb.init(project=wcfg.get("project", "fsl"), job_type="analyze", dir=str(wcfg.get("dir", ".")),
                     mode=wcfg.get("mode") or wandb_mode(), name=wcfg.get("name"),
                     config={"ckpt_path": str(cfg.ckpt_path), "results_dir": str(out.root)})
    media = {}
    for a, res, files in done:
        media.update(wandb_media(a, res, {k: out.root / "figures" / Path(p).name for k, p in files.items()}))
    run.log({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, **media})
    run.finish()
    wandb.teardown()
