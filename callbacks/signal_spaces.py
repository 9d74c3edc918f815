"""Per-epoch singular values, numerical rank and condition number of every Linear/Conv2d layer."""
from __future__ import annotations

import math
import time

import pytorch_lightning as pl

from callbacks.common import log_scalars, wandb_experiments


class SignalSpacesCallback(pl.Callback):
    """Logs ``spaces/<layer>/{sigma_max,sigma_min,rank,condition}`` after every ``every_n_epochs``-th
    training epoch, and the full singular-value spectra as W&B histograms."""

    def __init__(self, every_n_epochs: int = 1, prefix: str = "spaces", log_media: bool = True):
        self.every_n_epochs, self.prefix, self.log_media = int(every_n_epochs), prefix, bool(log_media)
        self.last: list = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs <= 0 or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        from fsl.spaces import layer_spectra

        t0 = time.perf_counter()
        self.last = spectra = layer_spectra(pl_module.net)
        metrics = {f"{self.prefix}/seconds": time.perf_counter() - t0}
        for sp in spectra:
            key = f"{self.prefix}/{sp.name}"
            s = sp.singular_values
            metrics[f"{key}/sigma_max"] = float(s[0]) if s.numel() else 0.0
            metrics[f"{key}/sigma_min"] = float(s[-1]) if s.numel() else 0.0
            metrics[f"{key}/rank"] = float(sp.rank)
            metrics[f"{key}/condition"] = sp.condition if math.isfinite(sp.condition) else float("nan")
        log_scalars(trainer, metrics)
        runs = wandb_experiments(trainer) if self.log_media else []
        if runs:
            import wandb

            media = {f"{self.prefix}/{sp.name}/singular_values": wandb.Histogram(sp.singular_values.double().cpu().numpy())
                     for sp in spectra if sp.singular_values.numel()}
            for run in runs:
                run.log({**media, "trainer/global_step": trainer.global_step})
