"""Adversarial detection: each attack of the suite on the correctly classified evaluation samples,
the feature-space geometry of the adversarial examples and every registered detector scored on
the same samples (docs/adversarial.md)."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from fsl.analysis.base import Analysis, Figure, Result, register_analysis
from fsl.analysis.distributed import gather_cat
from fsl.analysis.metric_docs import FEATURE_L2, FRACTION, PIXEL_L2, MetricDoc
from fsl.analysis.report import fmt

#: the ranking metrics of every detector (fsl.adversarial.metrics.detection_table): meaning, unit
RANKING = {
    "auroc": ("area under the exact ROC curve of the detector's score (higher = adversarial), successful "
              "adversarial examples (positives) against all attacked clean samples (negatives); 0.5 = chance",
              FRACTION),
    "aupr_out": ("average precision (exact, step-wise) with the adversarial examples as the positive class",
                 FRACTION),
    "aupr_in": ("average precision with the clean samples as the positive class (scores negated)",
                FRACTION),
    "fpr95": ("false-positive rate at 95% true-positive rate: the smallest fraction of clean samples flagged over "
              "the ROC points that flag at least 95% of the adversarial examples", FRACTION),
    "tpr5": ("true-positive rate at 5% false-positive rate: fraction of the adversarial examples above the "
             "threshold `threshold/<detector>`", FRACTION),
}


def _mean_median(key: str, what: str, unit: str = FEATURE_L2) -> tuple[MetricDoc, ...]:
    """The ``mean`` and ``median`` keys of :func:`fsl.adversarial.evaluate.feature_space_summary`."""
    return (MetricDoc(f"<attack>/{key}/mean", f"mean of {what}, over its finite values", unit),
            MetricDoc(f"<attack>/{key}/median", f"median of {what}, over its finite values (NumPy: the mean of the "
                      "two middle values for an even count)", unit))


def adversarial_docs() -> tuple[MetricDoc, ...]:
    """The keys of one attack, ``adv/<attack>/...`` (:func:`fsl.adversarial.evaluate.summarize_attack`)."""
    succ = "the successful adversarial examples'"
    return (
        MetricDoc("<attack>/n_attacked", "correctly classified evaluation samples attacked (`n_samples` of them, a "
                  "seeded draw stratified by class; 0 or null: all), less the fit split of the supervised detectors "
                  "(`supervised.fit_fraction`)", "count"),
        MetricDoc("<attack>/n_success", "successful adversarial examples: misclassified, with a logit gap above float "
                  "noise, and finite", "count"),
        MetricDoc("<attack>/success_rate", "`n_success / n_attacked`", FRACTION),
        MetricDoc("<attack>/n_nonfinite", "attacked samples whose adversarial image is not finite (never successes)",
                  "count"),
        *_mean_median("l2", f"{succ} perturbation norm `‖x_adv - x‖_2`", PIXEL_L2),
        *_mean_median("linf", f"{succ} perturbation `max |x_adv - x|`", "pixel Linf"),
        MetricDoc("<attack>/gap/median", f"median of {succ} logit gap `max_(k != y) z_k - z_y` on the adversarial "
                  "image (NumPy median)", "logits"),
        *_mean_median("margin", f"{succ} margin `d_min`"),
        *_mean_median("hull", f"{succ} distance `d_h` to the training features' hull"),
        *_mean_median("ambiguity", f"{succ} ambiguity `d_min - d_h`", "feature-space L2 distance, signed"),
        *_mean_median("clean_margin", "the margin `d_min` of the clean originals of the successful examples"),
        *_mean_median("clean_hull", "the hull distance `d_h` of the clean originals of the successful examples"),
        MetricDoc("<attack>/frac_margin_lt_hull", "fraction of the successful adversarial examples closer to a "
                  "decision boundary than to the training hull (`d_min < d_h`; NaN without successes)",
                  FRACTION),
        MetricDoc("<attack>/frac_hull_shrank", "fraction of the successful adversarial examples closer to the training "
                  "hull than their clean original (`d_h(adv) < d_h(clean)`; NaN without successes)",
                  FRACTION),
        MetricDoc("<attack>/n_nan/clean", "attacked clean samples left out of every detector's metrics because one of "
                  "their scores is NaN", "count"),
        MetricDoc("<attack>/n_nan/adv", "successful adversarial examples left out of every detector's metrics because "
                  "one of their scores is NaN", "count"),
        *(MetricDoc(f"<attack>/{key}/<detector>", meaning, unit) for key, (meaning, unit) in RANKING.items()),
        *(MetricDoc(f"<attack>/{key}_<bound>/<detector>", f"the `<bound>` end of the 95% percentile "
                  f"bootstrap interval of `{key}/<detector>` (with `n_boot > 0`)", unit)
          for key, (_, unit) in RANKING.items()),
        MetricDoc("<attack>/threshold/<detector>", "the threshold `tau` of `tpr5`: the lowest score such that flagging "
                  "`score > tau` flags at most 5% of the clean samples", "the detector's score (higher = adversarial; "
                  "e.g. `-d_min` for `margin`, `d_h - d_min` for `ambiguity`)"),
        MetricDoc("<attack>/rule/train_margin_threshold", "the margin rule of Yousefzadeh (arXiv 2202.04052, section "
                  "7.2): the smallest margin `d_min` of the clean training samples", FEATURE_L2),
        MetricDoc("<attack>/rule/train_margin_caught", "fraction of the successful adversarial examples whose margin "
                  "is below `rule/train_margin_threshold`", FRACTION),
        MetricDoc("<attack>/rule/train_margin_fpr", "fraction of the attacked clean samples whose margin is below "
                  "`rule/train_margin_threshold` (the rule's false positives)", FRACTION),
        MetricDoc("<attack>/robust_acc_at_5fpr/<detector>", "robust accuracy of the classifier guarded by the "
                  "detector: fraction of the attacked samples that are flagged (score above the 5%-FPR threshold set on "
                  "clean scores) or still correctly classified; `threshold_split: half` sets the threshold on every other "
                  "attacked sample and measures on the rest", FRACTION),
        MetricDoc("<attack>/clean_acc_lost_at_5fpr/<detector>", "fraction of the attacked (correctly classified) "
                  "clean samples the detector rejects at that threshold: the clean accuracy its rejections cost "
                  "(relative to the correct predictions)", FRACTION),
        MetricDoc("<attack>/seconds", "wall time of the attack itself (summed over this process' chunks)", "seconds"),
    )


#: the options of the supervised detectors' fit (the ``supervised`` node)
SUPERVISED_OPTIONS = {"enabled": True, "fit_fraction": 0.3, "attack": None}


def supervised_fit_attack(suite: dict, options: dict) -> str:
    """The entry of ``suite`` the supervised detectors are fitted on, from the analysis' ``options``:
    ``supervised.attack``, else the PGD whose budget the adaptive attacks take
    (:func:`fsl.adversarial.suites.budget_entry` with ``adaptive.like``)."""
    from fsl.adversarial.suites import budget_entry

    return (options.get("supervised") or {}).get("attack") or \
        budget_entry(suite, (options.get("adaptive") or {}).get("like"))


def fit_supervised(analysis, ctx, detectors, images, labels, attacked) -> tuple[torch.Tensor, list[str]]:
    """Fit the supervised detectors (``lid``, ``mahalanobis_ml``) on a seeded fraction
    (``supervised.fit_fraction``) of the samples to attack, with the adversarial examples of the suite's
    entry ``supervised.attack`` (null: the PGD whose budget the adaptive attacks take) and noisy copies
    (``fsl.adversarial.supervised``). Returns the remaining positions, the only ones the attacks
    score (every detector on the same samples), and the report's lines naming the fit attack."""
    from fsl.adversarial.suites import base_suite
    from fsl.adversarial.supervised import fit_supervised_detectors, split_fit_rows, supervised_names

    opts = {**SUPERVISED_OPTIONS, **dict(analysis.options.get("supervised") or {})}
    names = supervised_names() if opts["enabled"] else []
    if not names:
        return attacked, []
    base = base_suite(analysis.attacks, ctx.data_name)
    fit_name = supervised_fit_attack(base, analysis.options)
    fit_rows, score_rows = split_fit_rows(len(attacked), float(opts["fit_fraction"]), ctx.seed)
    if len(fit_rows) == 0:
        return attacked, []
    params = dict(base[fit_name])
    fit = attacked[fit_rows]
    try:
        info = fit_supervised_detectors(detectors, ctx.model, images[fit], labels[fit], params.pop("attack"), params,
                                        names=names, seed=ctx.seed, batch_size=int(analysis.batch_size))
    except ValueError as exc:  # e.g. the fit attack fooled almost no fit sample: no supervised detector
        return attacked, ["", f"Supervised detectors ({', '.join(names)}) not fitted: {exc}"]
    note = ["", f"Supervised detectors ({', '.join(names)}): fitted on the clean, noisy and `{fit_name}` adversarial "
                f"examples of {info['n_fit']} correctly classified evaluation samples ({info['n_adv']} fooled; the "
                f"fit attack took {info['seconds']:.1f} s), "
                f"disjoint from the {len(score_rows)} samples every attack is scored on; on every other attack they "
                f"are scored in transfer. Their 5%-FPR thresholds come from clean scored samples (`threshold_split`)."]
    return attacked[score_rows], note


def resolve_suite(attacks, only, data_name: str, adaptive=None, detectors=()) -> dict[str, dict]:
    """The attacks to run: ``attacks`` (a suite dict) or, when empty, the data set's suite
    (``fsl.adversarial.suite_for_data``), plus ``adaptive_<detector>`` for the ``detectors`` under the
    ``adaptive`` options (``fsl.adversarial.suites.adaptive_suite``), restricted to the names in ``only``."""
    from fsl.adversarial.suites import adaptive_suite, base_suite

    suite = base_suite(attacks, data_name)
    suite = adaptive_suite(suite, list(detectors), adaptive) if detectors else suite
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
    ``batch_size``, ``n_boot``, ``knn_k``, ``hull``, ``adaptive`` (the adaptive attack
    ``adaptive_<detector>`` of every fitted detector, ``fsl.adversarial.suites.adaptive_suite``:
    ``enabled``, ``detectors``, ``like``, ``lambdas``, ``variants``), ``supervised`` (:func:`fit_supervised`:
    ``enabled``, ``fit_fraction``, ``attack``) and ``threshold_split``
    (``half``: the thresholds of ``robust_acc_at_5fpr`` are set on the clean scores of every other
    attacked sample, in the order of the evaluation subset, and the robust accuracy is measured on the
    rest; ``same``: on all of them, in-sample).

    Chunks of ``batch_size`` samples are dealt out to the DDP ranks and chunk k is seeded with
    ``seed + k``, so random starts do not depend on the world size; the per-sample results are
    gathered and summarised once. The training margins of the detectors' train-margin rule come from
    the geometry analysis when it ran on the same training subset.
    """

    prefix = "adv"
    sizes = Analysis.sizes + ("n_samples",)
    metric_docs = adversarial_docs()
    minimums = {**Analysis.minimums, "batch_size": 1, "knn_k": 1, "n_boot": 0}

    @classmethod
    def config_problems(cls, key: str, options: dict, data_name: str | None) -> list[str]:
        """The attacks of the suite are registered, ``only`` names attacks of the suite (or an
        ``adaptive_<detector>``), the ``adaptive`` and ``supervised`` nodes have known keys."""
        from fsl.adversarial import ATTACKS
        from fsl.adversarial.suites import ADAPTIVE_OPTIONS
        from fsl.registry import closest

        p: list[str] = []
        for node, valid in (("adaptive", ADAPTIVE_OPTIONS), ("supervised", SUPERVISED_OPTIONS)):
            p.extend(f"{key}.{node}.{k}: unknown option" + closest(k, valid)
                     for k in (options.get(node) or {}) if k not in valid)
        if options.get("threshold_split", "half") not in ("half", "same"):
            p.append(f"{key}.threshold_split: {options.get('threshold_split')!r} must be 'half' or 'same'")
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
                from fsl.adversarial import DETECTORS

                if (options.get("adaptive") or {}).get("enabled", True):
                    suite = {**suite, **{f"adaptive_{d}": {} for d in DETECTORS.names()}}
                p.extend(f"{key}.only: unknown name {n!r}" + closest(n, suite) for n in only if n not in suite)
        return p
    uses = ("geometry",)

    def compute(self, ctx) -> Result:
        from fsl.adversarial.evaluate import (Detectors, DistanceFunctions, evaluate_attack, per_sample_dtypes,
                                              summarize_attack)
        from fsl.adversarial.methods.adaptive_detector import with_clean_floor

        net = ctx.model
        train = ctx.train_features(self.n_train)
        evals = ctx.eval_features(self.n_eval)
        attacked = self._attacked(ctx, evals)  # positions in the evaluation subset
        geom = DistanceFunctions.from_model(net, train.features.double(), **dict(self.hull or {}))
        detectors = Detectors.fit(net, train.features, train.labels, geometry=geom, knn_k=int(self.knn_k),
                                  train_margins=self._train_margins(ctx, train))
        all_images = ctx.eval_images(self.n_eval)
        attacked, fit_note = fit_supervised(self, ctx, detectors, all_images, evals.labels, attacked)
        n = len(attacked)
        images = all_images[attacked]
        labels = evals.labels[attacked]
        suite = resolve_suite(self.attacks, self.only, ctx.data_name, self.options.get("adaptive"),
                              detectors.names)
        rank, size = ctx.world()
        chunks = list(torch.arange(n).split(max(int(self.batch_size), 1)))
        res = Result(data={})
        for name, params in tqdm(suite.items(), desc="attacks", disable=not ctx.progress, leave=False):
            params = dict(params)
            attack = params.pop("attack")
            if params.get("target") in detectors.fitted:
                # the lowest clean score of every scored sample (not of one chunk): the same on every rank
                params = with_clean_floor(net, attack, params, images, int(self.batch_size),
                                          detectors[params["target"]])
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
            if self.options.get("threshold_split", "half") == "half":  # every other attacked sample sets the 5%-FPR threshold
                gathered["calib"] = torch.arange(len(order)) % 2 == 0
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
        res.report = report_lines(res.metrics, list(suite), detectors.names) + fit_note
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
    lines += ["", "### Robust accuracy of classifier + detector at 5% FPR (clean accuracy lost to the rejections)", "",
              "An attacked sample is handled when it is flagged or still correctly classified. `adaptive_<d>` is the "
              "attack that knows detector `<d>`.", "", "| attack | " + " | ".join(detectors) + " |",
              "|---|" + "---|" * len(detectors)]
    lines += [f"| {a} | " + " | ".join(f"{g(a, f'robust_acc_at_5fpr/{s}')} ({g(a, f'clean_acc_lost_at_5fpr/{s}')})"
                                       for s in detectors) + " |" for a in attacks]
    return lines
