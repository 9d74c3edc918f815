"""Per-epoch feature-space geometry (DESIGN A) on validation samples against training features."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from callbacks.common import is_due, log_scalars, remember, subset_features, wandb_experiments
from fsl.analysis.geometry_study import GeometryStudy, feature_geometry_study


class FeatureGeometryCallback(pl.Callback):
    """After validation (every ``every_n_epochs`` epochs and at the last one): margins, hull distances,
    balls, union coverage, support agreement and ambiguity of ``n_eval`` fixed validation samples
    against ``n_train`` fixed training samples. Logs ``analysis/*`` scalars to every logger and, to
    W&B, histograms, a per-sample table with images and grids of the most and least ambiguous samples.
    """

    def __init__(self, every_n_epochs: int = 1, n_train: int | None = 5000, n_eval: int | None = 1000,
                 seed: int = 0, prefix: str = "analysis", log_media: bool = True, table_rows: int = 100,
                 grid_size: int = 16, hull_kwargs: dict | None = None, batch_size: int = 1000):
        self.every_n_epochs, self.n_train, self.n_eval, self.seed = int(every_n_epochs), n_train, n_eval, int(seed)
        self.prefix, self.log_media, self.table_rows, self.grid_size = prefix, bool(log_media), int(table_rows), int(grid_size)
        self.hull_kwargs = dict(hull_kwargs or {})
        self.batch_size = int(batch_size)
        self.last: GeometryStudy | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_due(trainer, self.every_n_epochs):
            return
        t0 = time.perf_counter()
        self.last = study = self.compute(trainer, pl_module)
        study.metrics["seconds"] = time.perf_counter() - t0
        log_scalars(trainer, {f"{self.prefix}/{k}": v for k, v in study.metrics.items()})
        if self.log_media:
            self._log_media(trainer, study)

    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> GeometryStudy:
        train, _ = subset_features(trainer, pl_module, "train", self.n_train, self.seed, self.batch_size)
        evals, images = subset_features(trainer, pl_module, "val", self.n_eval, self.seed + 1, self.batch_size)
        net = pl_module.net
        study = feature_geometry_study(train, evals, net.head.weight, net.head.bias, net.feature_domain.lower,
                                       net.feature_domain.upper, hull_kwargs=self.hull_kwargs)
        study.extras["images"] = images
        remember(trainer, study.train_margin, "train_margin", len(train), self.seed)
        return study

    def _log_media(self, trainer: pl.Trainer, study: GeometryStudy) -> None:
        runs = wandb_experiments(trainer)
        if not runs:
            return
        import wandb

        from fsl.plots.geometry_figures import ambiguity_grid

        ps, images = study.per_sample, study.extras["images"]
        names = list(getattr(trainer.datamodule, "class_names", None) or range(len(study.distances[0])))
        names = [str(n) for n in names]
        media = {}
        for key in ("margin", "hull", "ambiguity"):
            v = ps[key][torch.isfinite(ps[key])].numpy()
            if len(v):
                media[f"{self.prefix}/{key}_hist"] = wandb.Histogram(v)
        order = torch.argsort(ps["ambiguity"])
        rows = torch.cat([order[: self.table_rows // 2], order[-(self.table_rows - self.table_rows // 2):]]).unique()
        table = wandb.Table(columns=["index", "image", "label", "pred", "margin", "closest", "hull", "ambiguity",
                                     "ball_count", "in_train_union"])
        for i in rows.tolist():
            img = images[i].permute(1, 2, 0).squeeze(-1).numpy()
            table.add_data(int(ps["index"][i]), wandb.Image(img), names[int(ps["label"][i])],
                           names[int(ps["pred"][i])], float(ps["margin"][i]), int(ps["closest"][i]),
                           float(ps["hull"][i]), float(ps["ambiguity"][i]), int(ps["ball_count"][i]),
                           bool(ps["in_train_union"][i]))
        media[f"{self.prefix}/samples"] = table
        import matplotlib.pyplot as plt

        for most in (True, False):
            fig, _ = ambiguity_grid(images, ps["ambiguity"], ps["label"], ps["pred"], names, k=self.grid_size, most=most)
            media[f"{self.prefix}/{'most' if most else 'least'}_ambiguous"] = wandb.Image(fig)
            plt.close(fig)
        for run in runs:
            run.log({**media, "trainer/global_step": trainer.global_step})
