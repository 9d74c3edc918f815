"""Per-epoch adversarial detection on correctly classified validation samples."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from callbacks.common import is_due, log_scalars, subset_features, train_margins, wandb_experiments
from fsl.analysis.distributed import gather_cat, world


class AdversarialDetectionCallback(pl.Callback):
    """Attacks ``n_samples`` fixed validation samples with each attack of the suite (``attacks``:
    ``{name: {attack: <fsl.adversarial.ATTACKS key>, **params}}``, ``configs/attacks/<suite>.yaml``;
    ``None`` or empty: the suite of the data module's data set, ``fsl.adversarial.suite_for_data``;
    ``only``: the names of the suite to run, e.g. the cheap ones per epoch; ``analyze.py`` runs all),
    measures margin, hull distance and ambiguity of the adversarial features, and scores every
    detector of ``fsl.adversarial.SCORES`` on the same samples (AUROC, AUPR-in/out, FPR@95%TPR,
    TPR@5%FPR with bootstrap intervals, the train-margin rule). Logs ``adv/<name>/*`` and ROC curves.
    Works in ``fit``, ``validate`` and ``test`` (the attacks leave inference mode themselves) and
    under DDP: every rank attacks its shard, per-sample results are gathered, rank zero summarises.
    """

    def __init__(self, every_n_epochs: int = 1, n_samples: int = 200, n_train: int | None = 5000, seed: int = 0,
                 attacks: dict | None = None, only: list | None = None, batch_size: int = 256, n_boot: int = 1000,
                 knn_k: int = 50, log_media: bool = True, prefix: str = "adv"):
        from fsl.adversarial.suites import check_suite

        self.every_n_epochs, self.n_samples, self.n_train, self.seed = int(every_n_epochs), n_samples, n_train, int(seed)
        self.attacks = check_suite(attacks) if attacks else None  # None or {}: the data set's suite
        self.only = [str(a) for a in only] if only else None
        self.batch_size, self.n_boot, self.knn_k = int(batch_size), int(n_boot), int(knn_k)
        self.log_media, self.prefix = bool(log_media), prefix
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
        from fsl.adversarial.evaluate import per_sample_dtypes, Detectors, DistanceFunctions, evaluate_attack, \
            summarize_attack
        from fsl.geometry import flip_margins

        net = pl_module.net
        train, _ = subset_features(trainer, pl_module, "train", self.n_train, self.seed)
        evals, images = subset_features(trainer, pl_module, "val", self.n_samples, self.seed + 2)
        dom = net.feature_domain
        w, b = net.head.weight.detach().cpu(), net.head.bias.detach().cpu()
        geom = DistanceFunctions(
            margin_fn=lambda f: flip_margins(f.cpu(), w, b, dom.lower, dom.upper).margin,
            hull_fn=DistanceFunctions.from_model(net, train.features.double()).hull_fn)
        detectors = Detectors.fit(net, train.features, train.labels, geometry=geom, knn_k=self.knn_k,
                                  train_margins=train_margins(trainer, pl_module, train, self.n_train, self.seed))
        if self.attacks is None:
            from fsl.adversarial.suites import load_suite, suite_for_data

            self.attacks = load_suite(suite_for_data(trainer.datamodule.name))
        if self.only is not None:
            missing = sorted(set(self.only) - set(self.attacks))
            if missing:
                raise ValueError(f"adversarial callback: only={missing} are not in the attack suite "
                                 f"{sorted(self.attacks)}; pick names of the suite")
            self.attacks = {k: v for k, v in self.attacks.items() if k in self.only}
        # Chunks of the sample list, not single samples, are dealt out to the ranks, and each chunk's
        # attack is seeded by its position: random starts then do not depend on the world size.
        rank, size = world()
        chunks = list(torch.arange(len(evals)).split(max(self.batch_size, 1)))
        out = {}
        for name, params in self.attacks.items():
            params = dict(params)
            attack = params.pop("attack")
            parts, seconds = [], 0.0
            for k in range(rank, len(chunks), size):
                rows = chunks[k]
                ev = evaluate_attack(net, images[rows], evals.labels[rows], train.features, train.labels,
                                     attack=attack, detectors=detectors, batch_size=len(rows), seed=self.seed + k,
                                     summarize=False, **params)
                seconds += ev.metrics["seconds"]
                ps = dict(ev.per_sample)
                ps["index"] = rows[ps["index"]]
                parts.append(ps)
            # one dtype per key on every rank (an idle rank has no parts): collectives need equal sizes
            local = {key: torch.cat([p[key].cpu() for p in parts]).to(dt) if parts else torch.empty(0, dtype=dt)
                     for key, dt in per_sample_dtypes().items()}
            gathered = {k: gather_cat(v.cpu()) for k, v in local.items()}
            order = torch.argsort(gathered["index"])
            gathered = {k: v[order] for k, v in gathered.items()}
            metrics, roc = summarize_attack(gathered, detectors.train_margins, n_boot=self.n_boot, seed=self.seed)
            metrics["seconds"] = seconds  # the attack itself on this rank, as analyze.py logs it
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
