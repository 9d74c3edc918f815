"""``ClassifierModule``: cross-entropy training of an fsl model, rebuilt from plain hyperparameters."""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fsl.models import FeatureClassifier, create_model
from fsl.training.losses import margin_hinge


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers and tuples into plain dicts/lists (checkpoints must hold plain values)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"hyperparameter value {value!r} of type {type(value).__name__} is not a plain "
                    f"str/number/list/dict; checkpoints must load with torch.load(weights_only=True)")


class ClassifierModule(pl.LightningModule):
    """Trains ``create_model(**model)`` with cross-entropy.

    Args:
        model: kwargs of :func:`fsl.models.create_model`, including ``name`` and the data-derived
            ``input_shape``, ``num_classes``, ``mean``, ``std``.
        optimizer: ``{"name": "sgd"|"adam"|"adamw", "lr": ..., "weight_decay": ..., "momentum": ...}``.
        scheduler: ``{"name": "none"|"cosine"|"multistep"|"onecycle", ...}`` (stepped per batch
            for ``onecycle``, per epoch otherwise).
        data: the data set's kwargs, kept so that analysis can rebuild the data from the checkpoint.
        loss: ``{"margin": {"weight": w, "target": m}}``: with ``w > 0`` the training loss is
            ``CE + w * mean_s [pred_s = y_s] * relu(m - d_min(s))``, a hinge on the exact
            feature-space margin of every correctly classified batch sample
            (:func:`fsl.geometry.differentiable_flip_distances`, in the model's feature domain,
            gradients to the features and the head); logged as ``train/margin_loss`` and
            ``train/margin_median``. Misclassified samples are left to the cross-entropy (their
            margin is the distance to the wrong class's boundary).
    """

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None,
                 data: dict | None = None, loss: dict | None = None):
        super().__init__()
        model, optimizer, scheduler, data, loss = (
            _plain(v) for v in (model, optimizer or {"name": "adam", "lr": 1e-3}, scheduler or {"name": "none"},
                                data or {}, loss or {}))
        margin = {"weight": 0.0, "target": 1.0, **(loss.get("margin") or {})}
        unknown = set(loss) - {"margin"} or set(margin) - {"weight", "target"}
        if unknown:
            raise ValueError(f"unknown loss keys {sorted(unknown)}; valid: loss.margin.weight, loss.margin.target")
        if not (float(margin["weight"]) >= 0 and float(margin["target"]) > 0):
            raise ValueError(f"loss.margin: weight must be >= 0 and target > 0, got {margin}")
        hp = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "data": data}
        if float(margin["weight"]) > 0:  # checkpoints of plain cross-entropy runs keep their old hyperparameters
            hp["loss"] = {"margin": margin}
        self.save_hyperparameters(hp)
        self.margin_weight, self.margin_target = float(margin["weight"]), float(margin["target"])
        self.net: FeatureClassifier = create_model(**model)
        n = self.net.num_classes
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.train_loss_mean = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _margin_hinge(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:func:`fsl.training.losses.margin_hinge` with this module's head and target; logs the median margin."""
        head, dom = self.net.head, self.net.feature_domain
        hinge, margins = margin_hinge(features, y, head.weight, head.bias, self.margin_target, dom.lower, dom.upper)
        if margins.numel():
            self.log("train/margin_median", margins.median(), on_step=False, on_epoch=True, batch_size=len(y))
        return hinge

    def _step(self, batch, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        if stage == "train" and self.margin_weight > 0:
            features = self.net.forward_features(x)
            logits = self.net.forward_head(features)
            hinge = self._margin_hinge(features, y)
            self.log("train/margin_loss", hinge, on_step=False, on_epoch=True, batch_size=len(y))
            loss = F.cross_entropy(logits, y) + self.margin_weight * hinge
        else:
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}/loss is {loss.item()}: training diverged; lower optimizer.lr "
                                     f"(now {self.hparams.optimizer.get('lr')}) or check the data")
        metric.update(logits.detach(), y)
        if stage == "train":  # per step; the epoch mean goes to train/loss_epoch
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
            self.train_loss_mean.update(loss.detach(), weight=len(y))
            self.log("train/loss_epoch", self.train_loss_mean, on_step=False, on_epoch=True)
        else:
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y),
                     sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        opt_cfg = dict(self.hparams.optimizer)
        name = opt_cfg.pop("name", "adam").lower()
        lr = float(opt_cfg.pop("lr", 1e-3))
        wd = float(opt_cfg.pop("weight_decay", 0.0))
        params = self.net.parameters()
        if name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(opt_cfg.pop("momentum", 0.9)),
                                  nesterov=bool(opt_cfg.pop("nesterov", False)))
        elif name in ("adam", "adamw"):
            cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            opt = cls(params, lr=lr, weight_decay=wd)
        else:
            raise ValueError(f"unknown optimizer.name {name!r}; valid: sgd, adam, adamw")
        if opt_cfg:
            raise ValueError(f"unknown optimizer keys {sorted(opt_cfg)} for {name}")

        sch_cfg = dict(self.hparams.scheduler)
        sname = sch_cfg.pop("name", "none").lower()
        epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer is not None else 1
        if sname == "none":
            return opt
        if sname == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=float(sch_cfg.pop("eta_min", 0.0)))
            interval = "epoch"
        elif sname == "multistep":
            milestones = [int(round(m * epochs)) if isinstance(m, float) and m < 1 else int(m)
                          for m in sch_cfg.pop("milestones", [0.5, 0.75])]
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=float(sch_cfg.pop("gamma", 0.1)))
            interval = "epoch"
        elif sname == "onecycle":
            steps = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1),
                                                        pct_start=float(sch_cfg.pop("pct_start", 0.25)))
            interval = "step"
        else:
            raise ValueError(f"unknown scheduler.name {sname!r}; valid: none, cosine, multistep, onecycle")
        if sch_cfg:
            raise ValueError(f"unknown scheduler keys {sorted(sch_cfg)} for {sname}")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}
