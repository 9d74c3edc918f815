"""Per-epoch adversarial detection (DESIGN B) on correctly classified validation samples."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from callbacks.common import is_due, log_scalars, subset_features, train_margins, wandb_experiments
from fsl.analysis.distributed import gather_cat, world

ATTACK_KEYS = ("index", "label", "success", "adv_pred", "l2", "linf", "nonfinite", "clean_margin", "adv_margin",
               "clean_hull", "adv_hull", "clean_ambiguity", "adv_ambiguity", "clean_msp", "adv_msp",
               "clean_mahalanobis", "adv_mahalanobis")



def _dtype(key: str) -> torch.dtype:
    if key in ("success", "nonfinite"):
        return torch.bool
    return torch.long if key in ("index", "label", "adv_pred") else torch.float64


class AdversarialDetectionCallback(pl.Callback):
    """Attacks ``n_samples`` fixed validation samples with each configured attack (torchattacks
    DeepFool / PGD by default), measures margin, hull distance and ambiguity of the adversarial
    features, and scores detection (margin, ambiguity, MSP, Mahalanobis: AUROC, TPR at 5% FPR, the
    train-margin rule). Logs ``adv/<attack>/*`` and ROC curves. Works in ``fit``, ``validate`` and
    ``test`` (the attacks leave inference mode themselves) and under DDP: every rank attacks its
    shard, per-sample results are gathered, rank zero logs.
    """

    def __init__(self, every_n_epochs: int = 1, n_samples: int = 200, n_train: int | None = 5000, seed: int = 0,
                 attacks: dict | None = None, batch_size: int = 256, log_media: bool = True, prefix: str = "adv"):
        self.every_n_epochs, self.n_samples, self.n_train, self.seed = int(every_n_epochs), n_samples, n_train, int(seed)
        self.attacks = dict(attacks if attacks is not None else
                            {"deepfool": {"steps": 50, "overshoot": 0.02},
                             "pgd": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10}})
        self.batch_size, self.log_media, self.prefix = int(batch_size), bool(log_media), prefix
        self.last: dict = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_due(trainer, self.every_n_epochs):
            return
        t0 = time.perf_counter()
        self.last = self.compute(trainer, pl_module)
        flat = {f"{self.prefix}/{name}/{k}": v for name, res in self.last.items() for k, v in res["metrics"].items()}
        flat[f"{self.prefix}/seconds"] = time.perf_counter() - t0
        log_scalars(trainer, flat)
        if self.log_media:
            self._log_media(trainer)

    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        from fsl.adversarial.evaluate import DistanceFunctions, evaluate_attack, summarize_attack
        from fsl.adversarial.detection import fit_mahalanobis
        from fsl.geometry import flip_margins

        net = pl_module.net
        train, _ = subset_features(trainer, pl_module, "train", self.n_train, self.seed)
        evals, images = subset_features(trainer, pl_module, "val", self.n_samples, self.seed + 2)
        dom = net.feature_domain
        w, b = net.head.weight.detach().cpu(), net.head.bias.detach().cpu()
        geom = DistanceFunctions(
            margin_fn=lambda f: flip_margins(f.cpu(), w, b, dom.lower, dom.upper).margin,
            hull_fn=DistanceFunctions.from_model(net, train.features.double()).hull_fn)
        train_margin = train_margins(trainer, pl_module, train, self.n_train, self.seed)
        maha = fit_mahalanobis(train.features, train.labels, num_classes=net.num_classes)
        # Chunks of the sample list, not single samples, are dealt out to the ranks, and each chunk's
        # attack is seeded by its position: PGD's random start then does not depend on the world size.
        rank, size = world()
        chunks = list(torch.arange(len(evals)).split(max(self.batch_size, 1)))
        out = {}
        for name, params in self.attacks.items():
            params = dict(params or {})
            attack = params.pop("attack", name)
            parts = []
            for k in range(rank, len(chunks), size):
                rows = chunks[k]
                ev = evaluate_attack(net, images[rows], evals.labels[rows], train.features, train.labels,
                                     attack=attack, geometry=geom, train_margins=train_margin, mahalanobis=maha,
                                     batch_size=len(rows), seed=self.seed + k, **params)
                ps = dict(ev.per_sample)
                ps["index"] = rows[ps["index"]]
                parts.append(ps)
            # one dtype per key on every rank (an idle rank has no parts): collectives need equal sizes
            local = {key: torch.cat([p[key].cpu() for p in parts]).to(_dtype(key)) if parts
                     else torch.empty(0, dtype=_dtype(key)) for key in ATTACK_KEYS}
            gathered = {k: gather_cat(v.cpu()) for k, v in local.items()}
            order = torch.argsort(gathered["index"])
            gathered = {k: v[order] for k, v in gathered.items()}
            metrics, roc = summarize_attack(gathered, train_margin)
            out[name] = {"metrics": metrics, "roc": roc, "per_sample": gathered}
        return out

    def _log_media(self, trainer: pl.Trainer) -> None:
        runs = wandb_experiments(trainer)
        if not runs:
            return
        import matplotlib.pyplot as plt
        import wandb

        from fsl.plots.detection_figures import roc_figure

        media = {}
        for name, res in self.last.items():
            fig = roc_figure(res["roc"], title=f"{name}: adversarial vs clean (epoch {trainer.current_epoch})")
            media[f"{self.prefix}/{name}/roc"] = wandb.Image(fig)
            plt.close(fig)
            ps = res["per_sample"]
            ok = ps["success"].bool()
            for key in ("adv_margin", "clean_margin", "adv_hull", "clean_hull"):
                v = ps[key][ok] if key.startswith("adv") else ps[key]
                v = v[torch.isfinite(v)]
                if len(v):
                    media[f"{self.prefix}/{name}/{key}_hist"] = wandb.Histogram(v.numpy())
        for run in runs:
            run.log({**media, "trainer/global_step": trainer.global_step})
