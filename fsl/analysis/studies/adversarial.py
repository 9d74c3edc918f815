"""Adversarial detection: each attack of the suite on the correctly classified evaluation samples,
the feature-space geometry of the adversarial examples and every registered detector scored on
the same samples (docs/adversarial.md)."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from fsl.analysis.base import Analysis, Figure, Result, register_analysis
from fsl.analysis.distributed import gather_cat
from fsl.analysis.report import fmt


def resolve_suite(attacks, only, data_name: str) -> dict[str, dict]:
    """The attacks to run: ``attacks`` (a suite dict) or, when empty, the data set's suite
    (``fsl.adversarial.suite_for_data``), restricted to the names in ``only``."""
    from fsl.adversarial.suites import check_suite, load_suite, suite_for_data

    suite = check_suite(attacks) if attacks else load_suite(suite_for_data(data_name))
    if only:
        only = [str(a) for a in only]
        missing = sorted(set(only) - set(suite))
        if missing:
            raise ValueError(f"adversarial analysis: only={missing} are not in the attack suite {sorted(suite)}; "
                             f"pick names of the suite")
        suite = {k: v for k, v in suite.items() if k in only}
    return suite


@register_analysis("adversarial")
class AdversarialAnalysis(Analysis):
    """Options (``configs/analysis/adversarial.yaml``): ``attacks`` (``{name: {attack: <ATTACKS key>,
    **params}}``; empty: the data set's suite, ``configs/attacks/``), ``only`` (names of the suite to
    run), ``n_train``, ``n_eval`` (subsets), ``n_samples`` (how many correctly classified evaluation
    samples are attacked: a seeded draw among them, stratified by class; 0 or null: all of them),
    ``batch_size``, ``n_boot``, ``knn_k``, ``hull``.

    Chunks of ``batch_size`` samples are dealt out to the DDP ranks and chunk k is seeded with
    ``seed + k``, so random starts do not depend on the world size; the per-sample results are
    gathered and summarised once. The training margins of the detectors' train-margin rule come from
    the geometry analysis when it ran on the same training subset.
    """

    prefix = "adv"
    sizes = Analysis.sizes + ("n_samples",)
    minimums = {**Analysis.minimums, "batch_size": 1, "knn_k": 1, "n_boot": 0}

    @classmethod
    def config_problems(cls, key: str, options: dict, data_name: str | None) -> list[str]:
        """The attacks of the suite are registered, and ``only`` names attacks of the suite."""
        from fsl.adversarial import ATTACKS
        from fsl.registry import closest

        p: list[str] = []
        attacks = options.get("attacks")
        for a, spec in (attacks or {}).items():
            attack = (spec or {}).get("attack", a)
            if attack not in ATTACKS:
                p.append(f"attacks.{a}: unknown attack {attack!r}" + closest(attack, ATTACKS))
        only = options.get("only")
        if only and (attacks or data_name):
            from fsl.adversarial.suites import load_suite, suite_for_data

            try:
                suite = attacks if attacks else load_suite(suite_for_data(data_name))
            except ValueError as exc:
                p.append(f"attacks: {exc}")
            else:
                p.extend(f"{key}.only: unknown name {n!r}" + closest(n, suite) for n in only if n not in suite)
        return p
    uses = ("geometry",)

    def compute(self, ctx) -> Result:
        from fsl.adversarial.evaluate import (Detectors, DistanceFunctions, evaluate_attack, per_sample_dtypes,
                                              summarize_attack)

        net = ctx.model
        train = ctx.train_features(self.n_train)
        evals = ctx.eval_features(self.n_eval)
        attacked = self._attacked(ctx, evals)  # positions in the evaluation subset
        n = len(attacked)
        images = ctx.eval_images(self.n_eval)[attacked]
        labels = evals.labels[attacked]
        geom = DistanceFunctions.from_model(net, train.features.double(), **dict(self.hull or {}))
        detectors = Detectors.fit(net, train.features, train.labels, geometry=geom, knn_k=int(self.knn_k),
                                  train_margins=self._train_margins(ctx, train))
        suite = resolve_suite(self.attacks, self.only, ctx.data_name)
        rank, size = ctx.world()
        chunks = list(torch.arange(n).split(max(int(self.batch_size), 1)))
        res = Result(data={})
        for name, params in tqdm(suite.items(), desc="attacks", disable=not ctx.progress, leave=False):
            params = dict(params)
            attack = params.pop("attack")
            parts, seconds = [], 0.0
            for k in range(rank, len(chunks), size):
                rows = chunks[k]
                ev = evaluate_attack(net, images[rows], labels[rows], train.features, train.labels, attack=attack,
                                     detectors=detectors, batch_size=len(rows), seed=ctx.seed + k, summarize=False,
                                     **params)
                seconds += ev.metrics["seconds"]
                ps = dict(ev.per_sample)
                ps["index"] = attacked[rows[ps["index"]]]
                parts.append(ps)
            # one dtype per key on every rank (an idle rank has no parts): collectives need equal sizes
            local = {key: torch.cat([p[key].cpu() for p in parts]).to(dt) if parts else torch.empty(0, dtype=dt)
                     for key, dt in per_sample_dtypes(detectors.names).items()}
            gathered = {k: gather_cat(v) for k, v in local.items()}
            order = torch.argsort(gathered["index"])
            gathered = {k: v[order] for k, v in gathered.items()}
            metrics, roc = summarize_attack(gathered, detectors.train_margins, n_boot=int(self.n_boot), seed=ctx.seed)
            metrics["seconds"] = seconds  # the attack itself on this rank
            res.metrics.update({f"{name}/{k}": v for k, v in metrics.items()})
            res.data[name] = {"metrics": metrics, "roc": roc, "per_sample": gathered}
            ok = gathered["success"].bool()
            for key in ("adv_margin", "clean_margin", "adv_hull", "clean_hull"):
                v = gathered[key][ok] if key.startswith("adv") else gathered[key]
                res.histograms[f"{name}/{key}_hist"] = v[torch.isfinite(v)]
            if ctx.want_figures:
                from fsl.plots.detection_figures import roc_figure

                when = "" if ctx.epoch is None else f" (epoch {ctx.epoch})"
                res.figures[f"{name}/roc"] = Figure(f"roc_{name}", roc_figure(roc, title=f"{name}: adversarial vs "
                                                                                         f"clean{when}"))
        res.report = report_lines(res.metrics, list(suite), detectors.names)
        return res

    def _attacked(self, ctx, evals):
        """Positions (in the evaluation subset) of the ``n_samples`` samples to attack: a seeded draw
        among the correctly classified ones, stratified by class, ascending (the evaluation subset's
        own order, which interleaves the classes)."""
        from fsl.data.subsets import stratified_subset

        correct = (evals.preds == evals.labels).nonzero().flatten()
        n = int(self.n_samples) if self.n_samples else len(correct)
        if n <= 0 or len(correct) == 0:
            return correct
        return correct[stratified_subset(evals.labels[correct], n, ctx.split_seed(ctx.eval_split)).sort().values]

    def _train_margins(self, ctx, train):
        geo = ctx.result("geometry")
        if geo is not None and torch.equal(geo.data.extras.get("train_index", torch.empty(0)), train.index):
            return geo.data.train_margin
        from fsl.geometry import flip_margins

        head = ctx.head
        return ctx.sharded(lambda rows: {"m": flip_margins(train.features[rows], head.weight, head.bias, head.lower,
                                                           head.upper).margin}, len(train))["m"]


def report_lines(m: dict, attacks: list[str], detectors) -> list[str]:
    """The attack table and the detection tables (attacks x detectors, with 95% bootstrap intervals);
    ``m`` keyed without the ``adv/`` prefix."""
    g = lambda a, k: fmt(m.get(f"{a}/{k}"))  # noqa: E731
    lines = ["## Adversarial detection", "",
             "Attacked: correctly classified evaluation samples. Success: misclassified with a logit gap above float "
             "noise. Norms and gap: medians over the successful examples.", "",
             "| attack | attacked | success | median L2 | median Linf | median logit gap | frac d_min < d_h | "
             "frac d_h shrank | train-margin rule caught | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in attacks:
        lines.append(f"| {a} | {g(a, 'n_attacked')} | {g(a, 'success_rate')} | {g(a, 'l2/median')} | "
                     f"{g(a, 'linf/median')} | {g(a, 'gap/median')} | {g(a, 'frac_margin_lt_hull')} | "
                     f"{g(a, 'frac_hull_shrank')} | {g(a, 'rule/train_margin_caught')} | {g(a, 'seconds')} |")

    def cell(a: str, s: str, key: str) -> str:
        v, lo, hi = (m.get(f"{a}/{k}/{s}") for k in (key, f"{key}_lo", f"{key}_hi"))
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and not math.isnan(lo) else f"{v:.3f}"

    detectors = list(detectors)
    for key, title in (("auroc", "AUROC"), ("fpr95", "FPR at 95% TPR"), ("tpr5", "TPR at 5% FPR")):
        lines += ["", f"### {title} (95% bootstrap interval), clean evaluation samples vs successful adversarial "
                      "examples", "", "| attack | " + " | ".join(detectors) + " |", "|---|" + "---|" * len(detectors)]
        lines += [f"| {a} | " + " | ".join(cell(a, s, key) for s in detectors) + " |" for a in attacks]
    return lines
