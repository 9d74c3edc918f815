"""Wall time of each training and validation epoch, so analysis overhead can be read off the run."""
from __future__ import annotations

import time

import pytorch_lightning as pl



def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """To every logger, from rank zero only."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class EpochTimer(pl.Callback):
    """Logs ``time/train_epoch_s`` (training batches only) and ``time/val_epoch_s`` (validation batches,
    before the analysis callbacks' epoch-end hooks run)."""

    def __init__(self):
        self._t_train = self._t_val = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._t_train = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module):
        self._t_val = time.perf_counter()
        if self._t_train is not None and not trainer.sanity_checking:
            log_scalars(trainer, {"time/train_epoch_s": self._t_val - self._t_train})
            self._t_train = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._t_val_end = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if self._t_val is not None and not trainer.sanity_checking:
            log_scalars(trainer, {"time/val_epoch_s": getattr(self, "_t_val_end", time.perf_counter()) - self._t_val})
