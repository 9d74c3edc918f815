"""``FeatInvModule``: trains a FeatInv decoder for one layer of a frozen fsl classifier with
Lightning (checkpoints, W&B, progress bar). The checkpoint is self-contained: the classifier's
spec and weights (``net.*``, so :func:`fsl.training.load_model` reads the classifier from it) and
the decoder's (``decoder.*``), with plain hyperparameters only."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric

from fsl.featinv.decoders import ConvDecoder, featinv_loss, reencoding_cosine
from fsl.featinv.flow import FlowDecoder
from fsl.models import create_model
from fsl.training.module import _plain


class FeatInvModule(pl.LightningModule):
    """Decoder from ``model.feature_maps(x)[layer]`` back to ``x``.

    Args:
        model: the classifier's :func:`fsl.models.create_model` spec (from its checkpoint).
        featinv: ``{"layer": <feature_maps key>, "decoder": "conv" | "flow", ...}``; for "conv"
            (deterministic, :class:`ConvDecoder`) ``width``, ``depth``, ``mse_weight``, ``cos_weight``,
            ``ssim_weight``; for "flow" (probabilistic, :class:`FlowDecoder`) ``channels``,
            ``hint_channels``, ``cond_dropout``, ``steps``, ``guidance`` and ``eval_samples`` (validation/test
            images sampled for the logged ssim/cosine/top-1: an equal share from every batch, drawn
            stratified by class, so that they cover the whole evaluation set);
            ``lr`` for both (Adam, cosine decay over the epochs).
        data: the data spec (kept so the data can be rebuilt from the checkpoint).
        classifier_state: the classifier's weights (only when building from a classifier
            checkpoint; a FeatInv checkpoint restores them with the decoder's).
    """

    def __init__(self, model: dict, featinv: dict, data: dict | None = None, classifier_state: dict | None = None):
        super().__init__()
        model, featinv, data = _plain(model), _plain(featinv), _plain(data or {})
        self.save_hyperparameters({"model": model, "featinv": featinv, "data": data})
        self.net = create_model(**model)
        if classifier_state is not None:
            self.net.load_state_dict(classifier_state)
        self.net.eval().requires_grad_(False)
        self.layer = str(featinv["layer"])
        shape = tuple(self.net.input_shape)
        with torch.no_grad():
            maps = self.net.feature_maps(torch.zeros(1, *shape))
        if self.layer not in maps:
            raise ValueError(f"featinv.layer={self.layer!r}: {model['name']} has the layers {list(maps)}")
        self.kind = str(featinv.get("decoder", "conv"))
        in_shape = maps[self.layer].shape[1:]
        if self.kind == "conv":
            self.decoder = ConvDecoder(in_shape, shape, width=int(featinv.get("width", 64)),
                                       depth=int(featinv.get("depth", 2)))
        elif self.kind == "flow":
            self.decoder = FlowDecoder(in_shape, shape, channels=tuple(featinv.get("channels", (16, 32, 64))),
                                       hint_channels=int(featinv.get("hint_channels", 16)),
                                       cond_dropout=float(featinv.get("cond_dropout", 0.15)))
        else:
            raise ValueError(f"featinv.decoder={self.kind!r}: use 'conv' (deterministic) or 'flow' (probabilistic)")
        self.train_loss_mean = MeanMetric()

    def train(self, mode: bool = True):  # the classifier stays in eval mode (BatchNorm statistics frozen)
        super().train(mode)
        self.net.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.feature_maps(x)[self.layer]

    def forward(self, features: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Reconstructions ``(B, C, H, W)``: the conv decoder's output, or one flow sample
        (``featinv.steps`` Euler steps, guidance ``featinv.guidance``, noise from ``seed``)."""
        if self.kind == "conv":
            return self.decoder(features)
        return self.sample(features, 1, seed)[:, 0]

    def sample(self, features: torch.Tensor, n_samples: int = 4, seed: int = 0, steps: int | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """``(B, n_samples, C, H, W)`` flow samples (flow decoder only)."""
        if self.kind != "flow":
            raise ValueError("sample(): this FeatInv decoder is deterministic (featinv.decoder=conv); use forward()")
        hp = self.hparams.featinv
        return self.decoder.sample(features, n_samples, steps=int(steps or hp.get("steps", 25)),
                                   guidance=float(hp.get("guidance", 1.75) if guidance is None else guidance),
                                   seed=seed)

    def _step(self, batch, stage: str, batch_idx: int = 0):
        if self.kind == "flow":
            return self._flow_step(batch, stage, batch_idx)
        x, y = batch
        with torch.no_grad():
            z = self.encode(x)
        rec = self.decoder(z)
        f_rec = self.encode(rec)
        hp = self.hparams.featinv
        loss = featinv_loss(rec, x, f_rec, z, float(hp.get("mse_weight", 1.0)), float(hp.get("cos_weight", 1.0)),
                            float(hp.get("ssim_weight", 0.0)))
        if self._log_loss(loss, stage, len(y)):
            return loss
        from torchmetrics.functional.image import structural_similarity_index_measure

        with torch.no_grad():
            agree = (self.net(rec).argmax(1) == self.net(x).argmax(1)).float().mean()
            cos = reencoding_cosine(f_rec, z).mean()
            ssim = structural_similarity_index_measure(rec, x, data_range=1.0)
        kw = dict(on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/loss", loss, prog_bar=True, **kw)
        self.log(f"{stage}/ssim", ssim, prog_bar=True, **kw)
        self.log(f"{stage}/cosine", cos, **kw)
        self.log(f"{stage}/top1_agree", agree, **kw)
        return loss

    def _log_loss(self, loss: torch.Tensor, stage: str, n: int) -> bool:
        """Check and log the training loss; True on training steps (nothing else to log)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}/loss is {loss.item()}: lower featinv.lr")
        if stage != "train":
            return False
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.train_loss_mean.update(loss.detach(), weight=n)
        self.log("train/loss_epoch", self.train_loss_mean, on_step=False, on_epoch=True)
        return True

    def _flow_step(self, batch, stage: str, batch_idx: int):
        x, y = batch
        with torch.no_grad():
            z = self.encode(x)
        # evaluation draws noise, noise levels and condition dropout from a fixed seed per batch
        gen = None if stage == "train" else torch.Generator().manual_seed(int(batch_idx))
        loss = self.decoder.loss(x, z, gen)
        if self._log_loss(loss, stage, len(y)):
            return loss
        kw = dict(on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/loss", loss, prog_bar=True, **kw)
        rows = self._scored_rows(y, stage, int(self.hparams.featinv.get("eval_samples", 100)), batch_idx)
        if len(rows):
            from fsl.featinv.metrics import reconstruction_metrics

            xs = x[rows]
            rec = self(z[rows], seed=int(batch_idx))
            summary, _ = reconstruction_metrics(self.net, self.layer, xs, rec, encode=self.encode)
            kw = dict(on_step=False, on_epoch=True, batch_size=len(xs), sync_dist=True)
            self.log(f"{stage}/ssim", summary["ssim"], prog_bar=True, **kw)
            self.log(f"{stage}/cosine", summary["cosine_median"], **kw)
            self.log(f"{stage}/top1_agree", summary["top1_pred"], **kw)
        return loss

    def _scored_rows(self, y: torch.Tensor, stage: str, n: int, batch_idx: int) -> torch.Tensor:
        """Rows of this evaluation batch that are sampled and scored: ``ceil(n / batches)`` of them,
        a seeded draw stratified by class (evaluation sets may be stored sorted by class, so the
        first rows of the first batch would hold a single class)."""
        from fsl.data.subsets import stratified_subset

        if n <= 0:
            return torch.empty(0, dtype=torch.long)
        t = self._trainer
        batches = None
        if t is not None:
            batches = t.num_test_batches if stage == "test" else \
                (t.num_sanity_val_batches if t.sanity_checking else t.num_val_batches)
            batches = batches[0] if isinstance(batches, (list, tuple)) and batches else batches
        if not isinstance(batches, (int, float)) or not math.isfinite(batches) or batches < 1:
            batches = 1
        k = min(len(y), math.ceil(n / int(batches)))
        return stratified_subset(y, k, int(batch_idx)).to(y.device)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test", batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.decoder.parameters(), lr=float(self.hparams.featinv.get("lr", 2e-3)))
        max_epochs = self.trainer.max_epochs if self.trainer is not None and self.trainer.max_epochs else 1
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)}


def featinv_module(featinv: dict, data: dict | None = None) -> FeatInvModule:
    """A :class:`FeatInvModule` over the classifier checkpoint ``featinv["classifier"]``."""
    from fsl.training.checkpoint import load_model

    path = featinv.get("classifier")
    if not path:
        raise ValueError("featinv.classifier is not set: pass featinv.classifier=outputs/train/<run>/checkpoints/"
                         "<ckpt>.ckpt (a trained classifier)")
    net, hp = load_model(path)
    return FeatInvModule(hp["model"], featinv, data=data if data is not None else hp["data"],
                         classifier_state=net.state_dict())


def load_featinv(path, map_location="cpu") -> FeatInvModule:
    """Rebuild a :class:`FeatInvModule` from its checkpoint (``weights_only=True``)."""
    from fsl.training.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    if "featinv" not in hp:
        raise ValueError(f"{path} is not a FeatInv checkpoint (no featinv hyperparameters); it holds a "
                         f"{hp.get('model', {}).get('name', '?')!r} classifier")
    module = FeatInvModule(hp["model"], hp["featinv"], hp.get("data"))
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module.to(map_location).eval()
