"""What the analysis callbacks share: when to run, which samples, feature extraction (sharded under
DDP, cached per step), and logging to every logger from rank zero only."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from fsl.analysis.features import FeatureSet, fixed_subset
from fsl.analysis.geometry_study import sharded

_CACHE: dict[tuple, FeatureSet] = {}


def is_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Run after validation every ``every_n_epochs`` epochs and after the last epoch."""
    if trainer.sanity_checking or every_n_epochs <= 0:
        return False
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last


def split_tensors(trainer: pl.Trainer, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "tensors"):
        raise RuntimeError("the analysis callbacks need an fsl ImageDataModule (trainer.fit(..., datamodule=dm))")
    return dm.tensors(split)


def subset_features(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, n: int | None,
                    seed: int, batch_size: int = 1000) -> tuple[FeatureSet, torch.Tensor]:
    """Features of a fixed, seeded subset of a split: ``(FeatureSet, images)``, identical on every rank."""
    images, labels = split_tensors(trainer, split)
    index = fixed_subset(len(labels), n, seed)
    key = cache_key(trainer, split, len(index), seed)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[:3] != key[:3]]:  # keep only this step's entries
            del _CACHE[old]
        net = pl_module.net
        device = pl_module.device

        @torch.no_grad()
        def fn(rows: torch.Tensor) -> dict[str, torch.Tensor]:
            was = net.training
            net.eval()
            try:
                feats, logits = [], []
                for s in range(0, len(rows), batch_size):
                    x = images[index[rows[s:s + batch_size]]].to(device)
                    f = net.forward_features(x)
                    feats.append(f.float().cpu())
                    logits.append(net.forward_head(f).float().cpu())
            finally:
                net.train(was)
            f_dim, n_cls = net.head.in_features, net.head.out_features
            return {"features": torch.cat(feats) if feats else torch.empty(0, f_dim),
                    "logits": torch.cat(logits) if logits else torch.empty(0, n_cls)}

        out = sharded(fn, len(index))
        _CACHE[key] = FeatureSet(features=out["features"], logits=out["logits"], labels=labels[index].cpu(),
                                 index=index)
    return _CACHE[key], images[index]


def cache_key(trainer: pl.Trainer, *parts) -> tuple:
    return (id(trainer), trainer.global_step, trainer.current_epoch, *parts)


def train_margins(trainer: pl.Trainer, pl_module: pl.LightningModule, train: FeatureSet, n: int | None,
                  seed: int) -> torch.Tensor:
    """Margins of the training subset, computed once per step (shared by the analysis callbacks)."""
    key = cache_key(trainer, "train_margin", len(train), seed)
    if key not in _CACHE:
        from fsl.geometry import flip_margins

        net = pl_module.net
        dom = net.feature_domain
        out = sharded(lambda rows: {"m": flip_margins(train.features[rows], net.head.weight, net.head.bias,
                                                      dom.lower, dom.upper).margin}, len(train))
        _CACHE[key] = out["m"]
    return _CACHE[key]


def remember(trainer: pl.Trainer, value, *parts) -> None:
    _CACHE[cache_key(trainer, *parts)] = value


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def wandb_experiments(trainer: pl.Trainer) -> list[Any]:
    """The wandb runs to log rich media to (rank zero only)."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]
