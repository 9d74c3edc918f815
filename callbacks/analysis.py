"""One Lightning callback for every analysis: runs the configured list after validation on its
schedule and logs what each returns (scalars to every logger, figures/histograms/tables to W&B)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
from torch import nn
from pytorch_lightning.loggers import WandbLogger

from callbacks.timing import log_scalars
from fsl.analysis.base import analysis_defaults, build_analyses
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
    """Runs ``analyses`` (``{name: options}``, the config's ``analysis:`` node, or a list of names
    with their yaml defaults; each with its ``every_n_epochs``) on fixed, seeded subsets: training
    samples against validation samples. Works in any LightningModule and Trainer.

    Args:
        analyses: the analyses and their options (``configs/analysis/<name>.yaml``); a list of names
            takes their defaults.
        pixels: the shared settings of the pixel-space analyses.
        seed: subsets and attacks are seeded from it. n_train, n_eval: default subset sizes.
        batch_size: feature-extraction batch size. log_media: figures, histograms, tables to W&B.
        model: the classifier to analyse; None: ``pl_module.net`` when it is an fsl model, else
            ``fsl.wrap(pl_module)`` (its ``forward`` must give logits from a final ``nn.Linear``).
        train, val: ``(images, labels)`` tensors in [0, 1] or DataLoaders of such batches; None:
            fsl's data module's splits when the trainer has one, else the trainer's train and
            (first) validation dataloaders, read once into memory.

    Runs after validation in ``fit`` and ``validate``, and under DDP (every rank computes its shard; the
    analyses gather, rank zero logs). Scalars go to every logger of the trainer, figures, histograms
    and tables to its W&B loggers. ``last`` holds the latest results by name.
    """

    def __init__(self, analyses: Mapping[str, Any] | Sequence[str] | None = None, pixels: Mapping | None = None,
                 seed: int = 0, n_train: int | None = None, n_eval: int | None = None, batch_size: int = 1000,
                 log_media: bool = True, model: nn.Module | None = None, train=None, val=None):
        from fsl.configfiles import to_plain

        if isinstance(analyses, (list, tuple)):
            analyses = {name: {} for name in analyses}
        spec = to_plain(analyses) if analyses is not None else {}
        self.analyses = build_analyses(spec, shared={"pixels": pixels} if pixels is not None else None)
        # each analysis' schedule: the options given, else its yaml (analyses given by name)
        self.every = {a.name: int({"every_n_epochs": 1, **analysis_defaults(a.name), **(spec.get(a.name) or {})}
                                  ["every_n_epochs"]) for a in self.analyses}
        self.seed, self.n_train, self.n_eval = int(seed), n_train, n_eval
        self.batch_size, self.log_media = int(batch_size), bool(log_media)
        self.model, self._given = model, {"train": train, "val": val}
        self._data: dict | None = None
        self.last: dict = {}

    def _model(self, pl_module: pl.LightningModule, tensors) -> nn.Module:
        from fsl.models.base import FeatureClassifier

        if self.model is None:
            net = getattr(pl_module, "net", None)
            if isinstance(net, FeatureClassifier):
                return net
            from fsl.models.wrap import wrap

            self.model = wrap(pl_module, data=tensors("train")[0][:64].to(pl_module.device))
        return self.model

    def _tensors(self, trainer: pl.Trainer):
        """``split -> (images, labels)`` from the given data or the trainer's dataloaders (cached)."""
        if self._data is None:
            from fsl.analysis.run import as_tensors
            from fsl.errors import ConfigError

            data = {}
            for split in ("train", "val"):
                src = self._given[split]
                if src is None:
                    src = trainer.train_dataloader if split == "train" else trainer.val_dataloaders
                    if isinstance(src, (list, tuple)):
                        src = src[0] if src else None
                if src is None:
                    raise ConfigError(f"AnalysisCallback: no {split} data: give AnalysisCallback({split}=...) "
                                      f"((images, labels) or a DataLoader), or fit with a {split} dataloader")
                data[split] = as_tensors(src, f"AnalysisCallback {split} data")
            self._data = data
        data = self._data
        return lambda split: data["train"] if split == "train" else data["val"]

    def _context(self, trainer: pl.Trainer, pl_module: pl.LightningModule, figures: bool) -> Context:
        kw = dict(eval_split="val", seed=self.seed, n_train=self.n_train, n_eval=self.n_eval,
                  batch_size=self.batch_size, device=pl_module.device, epoch=trainer.current_epoch, figures=figures)
        dm = getattr(trainer, "datamodule", None)
        if self._given["train"] is None and dm is not None and hasattr(dm, "tensors"):
            return Context.from_datamodule(self._model(pl_module, dm.tensors), dm, **kw)
        tensors = self._tensors(trainer)
        return Context(self._model(pl_module, tensors), tensors, **kw)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = [a for a in self.analyses if is_due(trainer, self.every.get(a.name, 1))]
        if not due:
            return
        runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []
        ctx = self._context(trainer, pl_module, figures=self.log_media and bool(runs))

        def log(a, res) -> None:
            log_scalars(trainer, flat_metrics(a, res))
            if runs and self.log_media:  # runs is empty off rank zero
                media = wandb_media(a, res)
                for run in runs:
                    run.log({**media, "trainer/global_step": trainer.global_step})
            close_figures(res)

        run_analyses(due, ctx, on_result=log)
        self.last = dict(ctx.results)
