"""Keeps the W&B run id in every checkpoint so that resuming from it continues the same run."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from fsl.training.checkpoint import CHECKPOINT_KEY


class RememberWandbRun(pl.Callback):
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[CHECKPOINT_KEY] = str(logger.version)
