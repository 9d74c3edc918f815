"""``train(cfg)``: everything ``train.py`` does, as one function that tests call directly."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fsl.config import to_plain
from fsl.tracking.rundir import (FAILED_MARKER, claim_run_dir, fail_run_dir, new_run_id, process_rank, read_marker,
                                 release_run_dir)
from fsl.training.checkpoint import CHECKPOINT_KEY, read_checkpoint
from fsl.training.module import ClassifierModule
from fsl.validate import validate_train_config

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    best_checkpoint: str | None
    last_checkpoint: str | None
    output_dir: str
    wandb_dir: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _without_target(cfg) -> dict:
    d = to_plain(cfg) if cfg is not None else {}
    d.pop("_target_", None)
    return d


def build_datamodule(cfg: DictConfig):
    return instantiate(cfg.data)


def build_module(cfg: DictConfig, datamodule) -> pl.LightningModule:
    """The classifier (``ClassifierModule``), or, when ``featinv.classifier`` is set, a FeatInv
    decoder for one layer of that frozen classifier (``fsl.featinv.FeatInvModule``)."""
    if (cfg.get("featinv") or {}).get("classifier"):
        from fsl.featinv.module import featinv_module

        return featinv_module(to_plain(cfg.featinv), data=_without_target(cfg.data))
    model_spec = {**datamodule.model_kwargs(), **_without_target(cfg.model)}
    module = ClassifierModule(model=model_spec, optimizer=to_plain(cfg.optimizer), scheduler=to_plain(cfg.scheduler),
                              data=_without_target(cfg.data), loss=to_plain(cfg.get("loss")))
    if cfg.get("init_from"):
        init_weights(module, str(cfg.init_from))
    return module


def init_weights(module: ClassifierModule, path: str) -> None:
    """Start ``module``'s network from the weights of the classifier checkpoint ``path`` (fine-tuning:
    a fresh optimizer, schedule and epoch count, unlike ``ckpt_path``). The checkpoint must hold the
    same architecture built for the same data (CheckpointError otherwise)."""
    from fsl.training.checkpoint import CheckpointError, load_model

    src, hp = load_model(path)
    mine = {k: v for k, v in module.hparams["model"].items()}
    theirs = dict(hp["model"])
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CheckpointError(f"init_from={path}: its model differs from this run's in {diff} "
                              f"(checkpoint {[theirs.get(k) for k in diff]}, run {[mine.get(k) for k in diff]}); "
                              f"pick a checkpoint of the same experiment or drop init_from")
    module.net.load_state_dict(src.state_dict(), strict=True)
    log.info("initialised the network from %s", path)


def _targets(cfg: DictConfig, group: str, hint: str):
    """The entries of config group ``group`` that are set; each must have a ``_target_`` (``hint``
    says how to fix one that has not)."""
    for name, spec in (cfg.get(group) or {}).items():
        if spec is None:
            continue
        if "_target_" not in spec:
            raise ValueError(f"{group}.{name} has no _target_; {hint}")
        yield spec


def build_callbacks(cfg: DictConfig, has_logger: bool = True) -> list[pl.Callback]:
    out = []
    for spec in _targets(cfg, "callbacks", "every entry under callbacks: must name a class"):
        if not has_logger and spec._target_.endswith("LearningRateMonitor"):
            continue  # it refuses to run without a logger
        out.append(instantiate(spec))
    return out


def build_loggers(cfg: DictConfig, resume_run_id: str | None = None) -> list:
    loggers = []
    for spec in _targets(cfg, "logger", "pick logger=wandb, logger=csv or logger=none"):
        extra = {}
        if resume_run_id and spec._target_.endswith("WandbLogger"):
            extra = {"id": resume_run_id, "resume": "allow"}
        if spec._target_.endswith("WandbLogger"):
            Path(spec.save_dir).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(spec, **extra))
    return loggers


def finish_wandb(logger) -> None:
    """Finish the run and flush its files. wandb-core completes the .wandb file only when its
    service shuts down, so code that reads the run back in the same process needs the teardown."""
    import wandb

    logger.experiment.finish()
    wandb.teardown()


def _run_folder(cfg: DictConfig) -> tuple[Path, str]:
    """``(folder, run id)`` of this run, written back into ``cfg``: Hydra's run dir when Hydra runs
    (so that ``hydra.run.dir=X`` and ``paths.output_dir=X`` both put everything in X), else
    ``paths.output_dir``. DDP ranks > 0 take rank 0's folder and id."""
    folder = Path(str(cfg.paths.output_dir))
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            folder = Path(HydraConfig.get().runtime.output_dir)
    except ImportError:  # pragma: no cover
        pass
    run_id = str(cfg.get("run_id") or new_run_id())
    if process_rank() > 0:
        run_id = str((read_marker(folder) or {}).get("run_id", run_id))
    with open_dict(cfg):
        if Path(str(cfg.paths.output_dir)).resolve() != folder.resolve():
            log.info("run folder: %s (Hydra's run dir; paths.output_dir follows it)", folder)
        cfg.paths.output_dir = str(folder)
        cfg.run_id = run_id
    return folder, run_id


def train(cfg: DictConfig) -> TrainResult:
    """Fit (optionally resuming from ``cfg.ckpt_path``), then test the best checkpoint.

    The run lives in one folder (``paths.output_dir``, see :mod:`fsl.tracking.rundir`), claimed
    exclusively before any work. A run that fails before its first checkpoint leaves no folder
    behind; one that fails later keeps its checkpoints and a ``FAILED`` note.
    """
    folder, run_id = _run_folder(cfg)
    rank0 = process_rank() == 0
    if rank0:
        claim_run_dir(folder, run_id)
    try:
        result = _train(cfg)
    except BaseException as exc:
        if rank0:
            fail_run_dir(folder, exc)
        raise
    if rank0:
        (folder / FAILED_MARKER).unlink(missing_ok=True)
        release_run_dir(folder)
    return result


def _train(cfg: DictConfig) -> TrainResult:
    validate_train_config(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    resume_id = None
    if cfg.get("ckpt_path"):
        resume_id = read_checkpoint(cfg.ckpt_path).get(CHECKPOINT_KEY)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")  # missing data fails here, before a logger or W&B run exists
    module = build_module(cfg, datamodule)
    loggers = build_loggers(cfg, resume_id)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ckpt_cbs = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, pl.callbacks.ModelCheckpoint)]
    monitored = [cb for cb in ckpt_cbs if cb.monitor]
    best = (monitored[0].best_model_path if monitored else None) or None
    last = next((cb.last_model_path or cb.best_model_path for cb in ckpt_cbs if cb.filename == "last"), None) or None
    if cfg.get("test_after_fit"):
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best if best else None, verbose=False)
        for row in test_metrics:
            metrics.update({k: float(v) for k, v in row.items()})
    wandb_dir = None
    for logger in loggers:
        if hasattr(logger, "experiment") and logger.__class__.__name__ == "WandbLogger" and trainer.is_global_zero:
            wandb_dir = str(Path(logger.experiment.dir).parent)
    for logger in loggers:
        if logger.__class__.__name__ == "WandbLogger" and trainer.is_global_zero:
            finish_wandb(logger)
    return TrainResult(metrics=metrics, best_checkpoint=best, last_checkpoint=last,
                       output_dir=str(cfg.paths.output_dir), wandb_dir=wandb_dir)
