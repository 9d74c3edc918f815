"""Running analyses: :func:`run_analyses` (a list of analyses in one context: what both drivers
call, so that keys, figures and report sections are the same per epoch and on a checkpoint), the
logged form of a result, and :func:`analyze` (every configured analysis once on a checkpoint's test
set: what ``analyze.py`` runs; writes ``metrics.json``, ``per_sample.csv``, ``figures/*.png`` and
``report.md`` whole or not at all, and logs the same keys, figures, histograms and tables to W&B as
the training callback)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from fsl.analysis.base import Analysis, Result, build_analyses
from fsl.analysis.context import Context
from fsl.analysis.report import render_report
from fsl.analysis.results import ResultsDir, check_results_folder

log = logging.getLogger(__name__)


def run_analyses(analyses: Iterable[Analysis], ctx: Context,
                 on_result: Callable[[Analysis, Result], None] | None = None) -> dict[str, Result]:
    """Run ``analyses`` in order in ``ctx`` (each sees the earlier results in ``ctx.results``);
    ``on_result(analysis, result)`` is called after each one (log it, save its figures)."""
    for a in analyses:
        res = a.run(ctx)
        ctx.results[a.name] = res
        if on_result is not None:
            on_result(a, res)
    return ctx.results


def flat_metrics(a: Analysis, res: Result) -> dict[str, float]:
    """``{<prefix>/<key>: value}`` and the analysis' wall time under ``a.seconds_key``."""
    out = {f"{a.prefix}/{k}": float(v) for k, v in res.metrics.items()}
    out[a.seconds_key] = float(res.seconds)
    return out


def wandb_media(a: Analysis, res: Result, figure_files: dict[str, Any] | None = None) -> dict[str, Any]:
    """W&B objects of a result: figures (``wandb.Image``; from the saved files when
    ``figure_files`` maps figure keys to paths), histograms and tables, keyed ``<prefix>/<key>``."""
    import wandb

    media: dict[str, Any] = {}
    for key, fig in res.figures.items():
        src = (figure_files or {}).get(key)
        media[f"{a.prefix}/{key}"] = wandb.Image(str(src) if src is not None else fig.fig)
    for key, values in res.histograms.items():
        v = torch.as_tensor(values).double().cpu()
        if v.numel():
            media[f"{a.prefix}/{key}"] = wandb.Histogram(v.numpy())
    for key, table in res.tables.items():
        t = wandb.Table(columns=list(table.columns))
        for row in table.rows:
            t.add_data(*[wandb.Image(c.permute(1, 2, 0).squeeze(-1).numpy()) if isinstance(c, torch.Tensor)
                         and c.dim() == 3 else c for c in row])
        media[f"{a.prefix}/{key}"] = t
    return media


def close_figures(res: Result) -> None:
    import matplotlib.pyplot as plt

    for fig in res.figures.values():
        plt.close(fig.fig)


@dataclass
class AnalysisResult:
    metrics: dict[str, float]
    results_dir: Path
    files: list[Path] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def checkpoint_context(cfg) -> tuple[torch.nn.Module, dict, Context]:
    """The model of ``cfg.ckpt_path`` (its architecture checked against ``cfg.expected_model``), the
    checkpoint's hyperparameters, and a :class:`Context` over the test split of its data set
    (``cfg.data`` overrides the stored data spec; sizes, seed, batch size and device from ``cfg``)."""
    from fsl.data import create_datamodule
    from fsl.training.checkpoint import load_model

    device = _device(cfg.get("device", "auto"))
    if (cfg.get("model") or {}).get("target"):
        return user_model_context(cfg, device)
    model, hp = load_model(cfg.ckpt_path, expected_model=cfg.get("expected_model"), map_location=device)
    data_spec = {**hp["data"], **{k: v for k, v in (cfg.get("data") or {}).items()
                                  if v is not None and k not in ("target", "kwargs")}}
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
    return model, hp, ctx


def user_model_context(cfg, device: torch.device) -> tuple[torch.nn.Module, dict, Context]:
    """:func:`checkpoint_context` for a model fsl did not train: ``cfg.model.target(**kwargs)`` with
    ``cfg.model.weights`` (:func:`fsl.models.user.build_user_model`), wrapped with
    :func:`fsl.models.wrap.wrap` (``cfg.model.wrap`` options, checked on training images), over an fsl
    data set (``cfg.data.name``) or a user's LightningDataModule (``cfg.data.target(**kwargs)``: its
    train and test dataloaders)."""
    from fsl.configfiles import to_plain
    from fsl.models.user import build_user_model, import_target
    from fsl.models.wrap import wrap

    mcfg, dcfg = to_plain(cfg.model), to_plain(cfg.get("data") or {})
    model = build_user_model(mcfg["target"], mcfg.get("kwargs"), mcfg.get("weights"), map_location=device)
    if dcfg.get("target"):
        dm = import_target(dcfg["target"], "data.target")(**dict(dcfg.get("kwargs") or {}))
        for stage in ("fit", "test"):
            if hasattr(dm, "setup"):
                dm.setup(stage)
        data = {"train": as_tensors(dm.train_dataloader(), "data.target train_dataloader()"),
                "test": as_tensors(dm.test_dataloader(), "data.target test_dataloader()")}
        tensors, data_name, class_names = (lambda split: data["train"] if split == "train" else data["test"]), \
            dcfg["target"], getattr(dm, "class_names", None)
    else:
        from fsl.data import create_datamodule

        spec = {k: v for k, v in dcfg.items() if v is not None and k not in ("target", "kwargs")}
        dm = create_datamodule(**spec)
        dm.setup()
        tensors, data_name, class_names = dm.tensors, spec["name"], getattr(dm, "class_names", None)
    net = wrap(model, data=tensors("train")[0][:64].to(device), **dict(mcfg.get("wrap") or {}))
    ctx = Context(net, tensors, eval_split="test", seed=int(cfg.get("seed", 0)), n_train=cfg.get("n_train"),
                  n_eval=cfg.get("n_eval"), batch_size=int(cfg.get("batch_size", 1000)), device=device,
                  progress=True, class_names=class_names, data_name=data_name)
    hp = {"model": {"name": mcfg["target"]}, "data": {"name": data_name}}
    return net, hp, ctx


def analyze(cfg) -> AnalysisResult:
    """Rebuild model and data from ``cfg.ckpt_path``, :func:`run_analyses` ``cfg.analysis`` (the
    analyses of ``configs/analysis/``, in dependency order) on the test set, and write the results
    folder ``cfg.output_dir`` whole (and the same values to W&B)."""
    from fsl.tracking.provenance import provenance, sha256
    from fsl.validate import validate_analyze_config

    validate_analyze_config(cfg)
    check_results_folder(cfg.output_dir)  # before any work: never a folder holding files fsl did not write
    t0 = time.time()
    analyses = build_analyses(cfg.get("analysis"), shared={"pixels": cfg.get("pixels")})
    model, hp, ctx = checkpoint_context(cfg)
    # fsl's own files are replaced when everything is written
    weights = cfg.ckpt_path or (cfg.get("model") or {}).get("weights")
    source = {"path": str(weights), "sha256": sha256(weights) if weights and weights != "random" else None}
    if not cfg.ckpt_path:
        source["target"] = cfg.model.target
    out = ResultsDir(cfg.output_dir, staged=True, meta={"checkpoint": source, **provenance()})
    metrics, done = collect(analyses, ctx, out)
    title = f"fsl analysis: {hp['model']['name']} on {hp['data']['name']}"
    what = f"Checkpoint: `{cfg.ckpt_path}`" if cfg.ckpt_path else f"Model: `{cfg.model.target}`, weights `{weights}`"
    report = render_report(title, what, ctx, metrics, done)
    written = write_results(out, metrics, done, per_sample_columns(done) if done else {}, report, t0)
    _log_wandb(cfg, metrics, done, out)
    return AnalysisResult(metrics=metrics, results_dir=out.root, files=written)


def collect(analyses: Iterable[Analysis], ctx: Context, out: ResultsDir | None = None) -> tuple[dict, list]:
    """:func:`run_analyses` with a progress bar, collecting ``(metrics, done)``: the flat metrics and
    ``[(analysis, result, {figure key: file})]``; with ``out``, figures are saved as they come (and
    closed), without it they stay open in the results."""
    metrics: dict[str, float] = {}
    done: list[tuple[Analysis, Result, dict]] = []

    def save(a: Analysis, res: Result) -> None:
        metrics.update(flat_metrics(a, res))
        files = {}
        if out is not None:
            files = {key: out.save_figure(fig.file, fig.fig) for key, fig in res.figures.items()}  # written as they come
            close_figures(res)
        done.append((a, res, files))

    run_analyses(_progress(analyses, ctx.progress), ctx, on_result=save)
    return metrics, done


def write_results(out: ResultsDir, metrics: dict, done: list, per_sample: dict, report: str,
                  t0: float) -> list[Path]:
    """Write ``per_sample.csv`` (when an analysis ran), ``report.md`` and ``metrics.json`` (with
    ``analyze/seconds`` since ``t0``) beside the figures and commit the folder; the final paths of
    every file written."""
    written = [out.write_csv("per_sample.csv", per_sample)] if done else []
    written.append(out.write_text("report.md", report))
    metrics["analyze/seconds"] = time.time() - t0
    written.append(out.write_json("metrics.json", metrics))
    written += [p for _, _, files in done for p in files.values()]
    written = [out.final_path(f) for f in written]
    out.commit()
    return written


def _progress(analyses, show: bool = True):
    """The analyses, with a bar naming the one being computed."""
    bar = tqdm(analyses, desc="analysis", leave=True, disable=not show)
    for a in bar:
        bar.set_postfix_str(a.name)
        yield a
    bar.close()


def per_sample_columns(done) -> dict:
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


def _log_wandb(cfg, metrics: dict, done, out: ResultsDir) -> None:
    wcfg = cfg.get("wandb") or {}
    if not wcfg.get("enabled", True):
        return
    import wandb

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


@dataclass
class AnalysisReport:
    """What :func:`analyze_model` (``fsl.analyze``) returns.

    Attributes:
        metrics: ``{key: float}``, the same flat keys as W&B and ``metrics.json``
            (``analysis/margin/median``, ``adv/deepfool/auroc/margin``, ...).
        per_sample: columns over the evaluation samples (``per_sample.csv``).
        figures: ``{W&B key: Figure}`` (open matplotlib figures when no folder was written).
        report: ``report.md`` as text.
        results_dir: the folder written (None without ``output_dir``); files: its files.
    """

    metrics: dict[str, float]
    per_sample: dict[str, Any]
    figures: dict[str, Any]
    report: str
    results_dir: Path | None = None
    files: list[Path] = field(default_factory=list)


def as_tensors(data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, H, W) in [0, 1], labels (N,) long)`` from a pair of tensors or from any
    iterable of ``(images, labels)`` batches (a DataLoader, read once into memory: pass a subset of
    a large set). Checked with :mod:`fsl.checks`."""
    from fsl.checks import check_images, check_labels
    from fsl.errors import ConfigError

    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
    else:
        try:
            batches = [(b[0], b[1]) for b in data]
        except (TypeError, IndexError, KeyError):
            raise ConfigError(f"{what}: expected (images, labels) tensors or a DataLoader of (images, labels) "
                              f"batches, got {type(data).__name__}") from None
        if not batches:
            raise ConfigError(f"{what}: the DataLoader gave no batches")
        images = torch.cat([torch.as_tensor(x) for x, _ in batches])
        labels = torch.cat([torch.as_tensor(y) for _, y in batches])
    images = check_images(f"{what} images", images)
    labels = check_labels(f"{what} labels", labels, images.shape[0]).long()
    if images.shape[0] == 0:
        raise ConfigError(f"{what}: no samples")
    return images.cpu(), labels.cpu()


def analyze_model(model: torch.nn.Module, train, eval, analyses: Iterable[str] | None = None,
                  output_dir: str | Path | None = None, *, pixels: dict | None = None, seed: int = 0,
                  n_train: int | None = None, n_eval: int | None = None, batch_size: int = 1000,
                  device: str | torch.device | None = None, class_names=None, data_name: str = "",
                  progress: bool = True, **options) -> AnalysisReport:
    """``fsl.analyze``: the analyses of ``analyze.py`` on any classifier and data set, the same code
    path (:func:`collect`, :func:`write_results`) without a checkpoint or a config file.

    Args:
        model: an fsl model, or any ``nn.Module`` whose logits are a final ``nn.Linear`` (wrapped
            with :func:`fsl.models.wrap.wrap`, checked on the training images).
        train, eval: ``(images (N, C, H, W) in [0, 1], labels (N,))`` or a DataLoader of such batches;
            ``train`` spans the hull and fits the detectors, ``eval`` is analysed.
        analyses: names (None: every analysis with ``default: true`` in its yaml).
        output_dir: when given, the results folder is written there (``metrics.json``,
            ``per_sample.csv``, ``report.md``, ``figures/``; refused if it holds files fsl did not write).
        pixels: the pixel-space studies' shared settings (``configs/pixels/default.yaml`` keys).
        seed, n_train, n_eval, batch_size, device, class_names, data_name: as in ``analyze.py``.
        **options: ``{analysis name: {option: value}}`` overrides of ``configs/analysis/<name>.yaml``,
            e.g. ``adversarial={"n_samples": 100}``.

    Returns:
        :class:`AnalysisReport` with ``.metrics`` (the W&B keys), ``.per_sample``, ``.figures``, ``.report``.
    """
    from fsl.analysis.base import default_analyses
    from fsl.errors import ConfigError
    from fsl.models.base import FeatureClassifier

    t0 = time.time()
    names = list(analyses) if analyses is not None else default_analyses()
    unknown = sorted(set(options) - set(names))
    if unknown:
        from fsl.registry import closest

        raise ConfigError(f"fsl.analyze: options for {unknown[0]!r}, which is not among the analyses run "
                          f"({', '.join(names)}){closest(unknown[0], names)}")
    if output_dir is not None:
        check_results_folder(output_dir)
    analyses_ = build_analyses({n: dict(options.get(n) or {}) for n in names}, shared={"pixels": pixels})
    train_t, eval_t = as_tensors(train, "train"), as_tensors(eval, "eval")
    if not isinstance(model, FeatureClassifier):
        from fsl.models.wrap import wrap

        model = wrap(model, data=train_t[0][:64].to(next(iter(model.parameters())).device))
    ctx = Context(model, lambda split: train_t if split == "train" else eval_t, eval_split="test", seed=seed,
                  n_train=n_train, n_eval=n_eval, batch_size=batch_size, device=device, class_names=class_names,
                  data_name=data_name, progress=progress)
    out = None
    if output_dir is not None:
        from fsl.tracking.provenance import provenance

        out = ResultsDir(output_dir, staged=True, meta={"model": type(model).__name__, **provenance()})
    metrics, done = collect(analyses_, ctx, out)
    name = type(getattr(model, "model", model)).__name__  # the user's class, not the wrapper
    report = render_report(f"fsl analysis: {name} on {data_name or 'the given data'}", f"Model: `{name}`", ctx,
                           metrics, done)
    per_sample = per_sample_columns(done) if done else {}
    files: list[Path] = []
    if out is not None:
        files = write_results(out, metrics, done, per_sample, report, t0)
    else:
        metrics["analyze/seconds"] = time.time() - t0
    figures = {f"{a.prefix}/{k}": fig for a, res, _ in done for k, fig in res.figures.items()}
    return AnalysisReport(metrics=metrics, per_sample=per_sample, figures=figures, report=report,
                          results_dir=None if out is None else out.root, files=files)
