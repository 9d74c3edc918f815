"""One Lightning callback for every analysis: runs the configured list after validation on its
schedule and logs what each returns (scalars to every logger, figures/histograms/tables to W&B)."""
from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from callbacks.timing import log_scalars
from fsl.analysis.base import build_analyses
from fsl.analysis.context import Context
from fsl.analysis.run import close_figures, flat_metrics, run_analyses, wandb_media


def is_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """After validation every ``every_n_epochs`` epochs and after the last epoch (0: never)."""
    if trainer.sanity_checking or every_n_epochs <= 0:
        return False
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last


class AnalysisCallback(pl.Callback):
    """Runs ``analyses`` (``{name: options}``, the config's ``analysis:`` node; each with its
    ``every_n_epochs``) on fixed, seeded subsets: training samples against validation samples.

    Args:
        analyses: the analyses and their options (``configs/analysis/<name>.yaml``).
        pixels: the shared settings of the pixel-space analyses.
        seed: subsets and attacks are seeded from it. n_train, n_eval: default subset sizes.
        batch_size: feature-extraction batch size. log_media: figures, histograms, tables to W&B.

    Runs after validation in ``fit`` and ``validate``, and under DDP (every rank computes its shard; the
    analyses gather, rank zero logs). ``last`` holds the latest results by name.
    """

    def __init__(self, analyses: Mapping[str, Any] | None = None, pixels: Mapping | None = None, seed: int = 0,
                 n_train: int | None = None, n_eval: int | None = None, batch_size: int = 1000,
                 log_media: bool = True):
        from fsl.config import to_plain

        spec = to_plain(analyses) if analyses is not None else {}
        self.analyses = build_analyses(spec, shared={"pixels": pixels} if pixels is not None else None)
        self.every = {name: int((opts or {}).get("every_n_epochs", 1)) for name, opts in spec.items()}
        self.seed, self.n_train, self.n_eval = int(seed), n_train, n_eval
        self.batch_size, self.log_media = int(batch_size), bool(log_media)
        self.last: dict = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = [a for a in self.analyses if is_due(trainer, self.every.get(a.name, 1))]
        if not due:
            return
        runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []
        ctx = Context.from_datamodule(pl_module.net, trainer.datamodule, eval_split="val", seed=self.seed,
                                      n_train=self.n_train, n_eval=self.n_eval, batch_size=self.batch_size,
                                      device=pl_module.device, epoch=trainer.current_epoch,
                                      figures=self.log_media and bool(runs))

        def log(a, res) -> None:
            log_scalars(trainer, flat_metrics(a, res))
            if runs and self.log_media:  # runs is empty off rank zero
                media = wandb_media(a, res)
                for run in runs:
                    run.log({**media, "trainer/global_step": trainer.global_step})
            close_figures(res)

        run_analyses(due, ctx, on_result=log)
        self.last = dict(ctx.results)
