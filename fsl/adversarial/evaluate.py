"""One call per attack: attack, feature-space geometry, detection scores and metrics.

The callbacks and ``analyze.py`` call :func:`evaluate_attack`; everything here is plain torch. The
detectors are fitted once on the clean training features (:class:`Detectors`) and scored on the
same clean and adversarial samples for every attack of a suite; :func:`summarize_attack` turns the
per-sample results into the feature-space statistics (:func:`feature_space_summary`), the ranking
metrics of every detector (:mod:`fsl.adversarial.metrics`) and the paper's margin rule.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from fsl.adversarial.attacks import attack_context, run_attack, select_correct
from fsl.adversarial.methods.adaptive_detector import with_clean_floor
from fsl.adversarial.detectors import DETECTORS, Detector, FitData, build_detector, train_margin_rule
from fsl.adversarial.metrics import detection_table
from fsl.adversarial.robust import robust_accuracy
from fsl.adversarial.success import is_adversarial, logit_gap
from fsl.errors import ConfigError
from fsl.models.base import LinearHead

Tensor = torch.Tensor


@dataclass
class DistanceFunctions:
    """The two feature-space distances the detection needs, as functions of ``(B, f)`` features.

    Attributes:
        margin_fn: features ``(B, f)`` -> ``(B,)`` margin ``d_min`` (distance to the closest
            decision boundary of the predicted class).
        hull_fn: features ``(B, f)`` -> ``(B,)`` distance ``d_h`` to the training set's convex hull.

    Use :meth:`from_model` for the real thing (``fsl.geometry``); tests and callers may pass any
    functions (for example closed forms, or cached results).
    """

    margin_fn: Callable[[Tensor], Tensor]
    hull_fn: Callable[[Tensor], Tensor]

    @classmethod
    def from_model(cls, model: nn.Module, train_features: Tensor, **hull_kwargs) -> "DistanceFunctions":
        """``fsl.geometry.flip_margins`` with the model's head and feature domain, and
        ``fsl.geometry.hull_distances`` against ``train_features`` (imported when first called)."""
        head = LinearHead.from_model(model)

        def margin_fn(features: Tensor) -> Tensor:
            from fsl.geometry import flip_margins
            return flip_margins(features, head.weight.to(features.device), head.bias.to(features.device),
                                head.lower, head.upper).margin

        def hull_fn(features: Tensor) -> Tensor:
            from fsl.geometry import hull_distances
            return hull_distances(features, train_features.to(features.device), **hull_kwargs).distance

        return cls(margin_fn=margin_fn, hull_fn=hull_fn)


@dataclass
class Detectors:
    """Every registered detector (:data:`fsl.adversarial.detectors.DETECTORS`, in the order of
    ``DETECTORS.names()``), fitted once on the clean training features, plus the two feature-space
    distances they may use.

    Attributes:
        geometry: margin ``d_min`` and hull distance ``d_h`` functions.
        fitted: ``{name: Detector}`` in registration order.
        train_margins: ``(N,)`` margins of the clean training features (the paper's rule).
    """

    geometry: DistanceFunctions
    fitted: dict[str, Detector]
    train_margins: Tensor
    #: the clean samples' per-sample values, keyed by a digest of their features: every attack of a
    #: suite scores the same clean samples, so their margins, hull distances and scores are computed once
    clean_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, model: nn.Module, train_features: Tensor, train_labels: Tensor,
            geometry: DistanceFunctions | None = None, train_margins: Tensor | None = None,
            params: Mapping[str, Mapping] | None = None, knn_k: int | None = None,
            names: Sequence[str] | None = None) -> "Detectors":
        """Fit on ``train_features`` ``(N, f)`` / ``train_labels`` ``(N,)``.

        ``geometry`` defaults to :meth:`DistanceFunctions.from_model`, ``train_margins`` to
        ``geometry.margin_fn(train_features)``; ``params``: ``{detector: {param: value}}`` over the
        registered defaults (``knn_k`` is short for ``params={"knn": {"k": knn_k}}``); ``names``: the
        detectors to fit (default: every registered one that is not ``supervised``; those are added by
        :func:`fsl.adversarial.supervised.fit_supervised_detectors`)."""
        feats = torch.as_tensor(train_features)
        geometry = geometry or DistanceFunctions.from_model(model, feats)
        if train_margins is None:
            train_margins = geometry.margin_fn(feats)
        params = {k: dict(v or {}) for k, v in (params or {}).items()}
        if knn_k is not None:
            params.setdefault("knn", {})["k"] = int(knn_k)
        for name in sorted(params):
            DETECTORS.entry(name)  # an unknown name: ConfigError with the closest registered one
        head = LinearHead.from_model(model)
        data = FitData(train_features=_cpu64(feats), train_labels=torch.as_tensor(train_labels).cpu().long(),
                       weight=head.weight.double(), bias=head.bias.double(), num_classes=int(head.weight.shape[0]))
        chosen = list(names) if names is not None else \
            [n for n, c in DETECTORS.items() if not getattr(c, "supervised", False)]
        fitted = {name: build_detector(name, **params.get(name, {})).fit(data) for name in chosen}
        return cls(geometry=geometry, fitted=fitted, train_margins=_cpu64(train_margins))

    def __getitem__(self, name: str) -> Detector:
        return self.fitted[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fitted)

    def per_sample(self, features: Tensor, logits: Tensor, images: Tensor | None = None) -> dict[str, Tensor]:
        """``{margin, hull, <every detector's value>}`` of ``(B, f)`` features and their ``(B, n)``
        logits, CPU float64 (``msp`` is the probability itself, ``ambiguity`` ``d_min - d_h``; see
        each detector's ``value``); a detector that reads the feature maps (``layers``) is scored on
        the ``images`` ``(B, C, H, W)`` they come from. Non-finite features or logits raise ``ValueError``."""
        m, h = _cpu64(self.geometry.margin_fn(features)), _cpu64(self.geometry.hull_fn(features))
        f64, z64 = _cpu64(features), _cpu64(logits)
        out = {"margin": m, "hull": h}
        for name, det in self.fitted.items():
            if getattr(det, "layers", False) and images is not None:
                out[name] = _cpu64(det.value_images(images, f64, z64))
            else:
                out[name] = _cpu64(det.value(f64, z64, m, h))
        return out

    def scores(self, ps: dict[str, Tensor], kind: str) -> dict[str, Tensor]:
        """The detection scores (higher = adversarial) of the ``kind`` = ``clean`` / ``adv`` columns of
        ``evaluate_attack``'s per-sample dict, one per fitted detector."""
        return detector_scores(ps, kind, self.names)


def detector_scores(ps: dict[str, Tensor], kind: str, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The detection scores (higher = adversarial) of the ``kind`` = ``clean`` / ``adv`` columns of
    ``evaluate_attack``'s per-sample dict, one per detector of ``names`` (default: those with a
    column), through each registered detector's ``score`` (a function of the value alone)."""
    if names is None:
        names = [n for n, cls in DETECTORS.items() if all(f"{kind}_{c}" in ps for c in cls.needs or (n,))]
    cols = {k[len(kind) + 1:]: v for k, v in ps.items() if k.startswith(f"{kind}_")}
    return {n: build_detector(n).score(cols) for n in names}


def per_sample_dtypes(names: Sequence[str] | None = None) -> dict[str, torch.dtype]:
    """dtypes of evaluate_attack's per-sample columns for the detectors ``names`` (default: every
    registered one); collectives need one dtype per key on every rank."""
    names = list(DETECTORS) if names is None else list(names)
    cols = ["margin", "hull", *[n for n in names if n not in ("margin", "hull")]]
    return {"index": torch.long, "label": torch.long, "adv_pred": torch.long, "success": torch.bool,
            "nonfinite": torch.bool, "gap": torch.float64, "l2": torch.float64, "linf": torch.float64,
            **{f"{kind}_{k}": torch.float64 for kind in ("clean", "adv") for k in cols}}


class AttackEvaluation(NamedTuple):
    """``(metrics, per_sample, roc)`` returned by :func:`evaluate_attack`."""

    metrics: dict[str, float]
    per_sample: dict[str, Tensor]
    roc: dict[str, dict[str, np.ndarray]]


@torch.no_grad()
def _features(model: nn.Module, images: Tensor, batch_size: int | None) -> Tensor:
    n = images.shape[0]
    bs = n if not batch_size else int(batch_size)
    device = next(iter(model.parameters())).device
    out = [model.forward_features(images[i:i + bs].to(device)) for i in range(0, n, max(bs, 1))]
    if not out:
        return torch.empty(0, model.head.in_features, device=device)
    return torch.cat(out)


def _cpu64(t: Tensor) -> Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float64)


def _cpu64_1d(t) -> Tensor:
    return _cpu64(t).flatten()


def evaluate_attack(model: nn.Module, images: Tensor, labels: Tensor, train_features: Tensor,
                    train_labels: Tensor, attack: str = "deepfool", detectors: Detectors | None = None, *,
                    only_correct: bool = True, batch_size: int | None = 256, seed: int | None = 0,
                    fpr: float = 0.05, n_boot: int = 1000, summarize: bool = True,
                    **attack_params) -> AttackEvaluation:
    """Attack the (correctly classified) samples, score every detector on them, summarise.

    Args:
        model: fsl model (``forward_features``, ``forward_head``, ``head``, ``feature_domain``).
        images: ``(B, C, H, W)`` in [0, 1]; labels: ``(B,)`` true classes.
        train_features: ``(N, f)`` clean training features; train_labels: ``(N,)`` (used to fit the
            detectors when ``detectors`` is omitted).
        attack: a name of :data:`fsl.adversarial.ATTACKS`; ``**attack_params`` override its defaults.
            An attack with a ``target`` detector name (``adaptive``) gets the fitted detector of that
            name as ``detector``.
        detectors: fitted :class:`Detectors` (fit once and pass them to reuse across attacks).
        only_correct: attack only samples the model classifies correctly (the design's setting).
        fpr: the false-positive budget of the ``tpr5/*`` metrics; n_boot: bootstrap replicates of
            the confidence intervals (0: none).
        summarize: ``False`` skips the metrics (``metrics`` then holds only ``seconds``), for callers
            that gather per-sample results first (DDP) and call :func:`summarize_attack` once.

    Sets: the *attacked* samples are the correctly classified ones (``A`` of them); the clean
    negatives of every detector are all ``A`` clean originals, the positives the ``S`` successful
    adversarial examples. Success: the logits of the adversarial features
    (``forward_head(forward_features(adv))``) are adversarial with a gap above float noise
    (:func:`fsl.adversarial.success.is_adversarial`).

    Returns :class:`AttackEvaluation` ``(metrics, per_sample, roc)``:

    * ``metrics``: Python floats, keys without prefix (see :func:`summarize_attack`), plus
      ``seconds`` (wall time of the attack itself).
    * ``per_sample``: CPU tensors of length ``A`` with the keys of :func:`per_sample_dtypes`:
      ``index`` (into ``images``), ``label``, ``success``, ``adv_pred``, ``gap`` (logit gap on the
      adversarial image), ``l2``, ``linf``, ``nonfinite`` and, for ``clean``/``adv``, every column of
      :meth:`Detectors.per_sample`.
    * ``roc``: ``{score: {"fpr", "tpr", "thresholds", "auroc", ...}}`` numpy arrays.
    """
    if detectors is None:
        detectors = Detectors.fit(model, train_features, train_labels)
    target = attack_params.get("target")
    if target is not None and attack_params.get("detector") is None:  # an adaptive attack: the fitted detector
        if target not in detectors.fitted:
            raise ConfigError(f"evaluate_attack({attack!r}): target detector {target!r} is not among the fitted "
                              f"ones {list(detectors.names)}")
        attack_params = {**attack_params, "detector": detectors[target]}
    labels = torch.as_tensor(labels)
    with attack_context(model):  # eval mode, grads available; restored on exit
        with torch.no_grad():
            if only_correct:
                mask = select_correct(model, images, labels, batch_size)
            else:
                mask = torch.ones(images.shape[0], dtype=torch.bool, device=labels.device)
            index = mask.nonzero().flatten().to(labels.device)
            x = images[index.to(images.device)]
            y = labels[index]
    attack_params = with_clean_floor(model, attack, attack_params, x, batch_size)
    res = run_attack(model, x, y, attack, batch_size=batch_size, seed=seed, **attack_params)

    with attack_context(model), torch.no_grad():
        f_clean = _features(model, x, batch_size)
        f_adv = _features(model, res.adv_images, batch_size)
        logits_clean = model.forward_head(f_clean)
        logits_adv = model.forward_head(f_adv)
        y_dev = y.to(logits_adv.device)
        success = is_adversarial(logits_adv, y_dev) & ~res.nonfinite.to(y_dev.device)
        key = (hashlib.sha1(_cpu64(f_clean).numpy().tobytes()).hexdigest(), detectors.names)
        if key not in detectors.clean_cache:
            detectors.clean_cache[key] = detectors.per_sample(f_clean, logits_clean, x)
        clean = detectors.clean_cache[key]
        adv = detectors.per_sample(f_adv, logits_adv, res.adv_images)

    per_sample = {
        "index": index.cpu(), "label": y.cpu(), "success": success.cpu(), "adv_pred": logits_adv.argmax(1).cpu(),
        "gap": _cpu64(logit_gap(logits_adv, y_dev)), "l2": _cpu64(res.l2), "linf": _cpu64(res.linf),
        "nonfinite": res.nonfinite.cpu(),
        **{f"clean_{k}": v for k, v in clean.items()}, **{f"adv_{k}": v for k, v in adv.items()},
    }
    metrics, roc = summarize_attack(per_sample, detectors.train_margins, fpr=fpr, n_boot=n_boot, seed=seed or 0) \
        if summarize else ({}, {})
    metrics["seconds"] = res.seconds
    return AttackEvaluation(metrics=metrics, per_sample=per_sample, roc=roc)


def _mean_median(prefix: str, v: torch.Tensor | None) -> dict[str, float]:
    if v is None:
        return {}
    v = _cpu64_1d(v)
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return {f"{prefix}/mean": float("nan"), f"{prefix}/median": float("nan")}
    # numpy's median averages the two middle values (torch.median returns the lower one)
    return {f"{prefix}/mean": float(v.mean()), f"{prefix}/median": float(np.median(v.numpy()))}


def feature_space_summary(adv_margin, adv_hull, clean_margin=None, clean_hull=None, success=None,
                          l2=None, linf=None) -> dict[str, float]:
    """Feature-space statistics of successful adversarial examples (docs/adversarial.md), as Python floats.

    Args:
        adv_margin, adv_hull: ``(S,)`` margin ``d_min`` and hull distance ``d_h`` of the successful
            adversarial examples.
        clean_margin, clean_hull: ``(S,)`` the same of their clean originals (paired, same order).
        success: ``(N,)`` bool over all attacked samples (gives ``success_rate``).
        l2, linf: ``(S,)`` perturbation norms of the successful examples.

    Keys (no prefix; callers add ``adv/<attack>/``): ``n_success``, ``frac_margin_lt_hull``
    (``d_min < d_h``), ``margin/*``, ``hull/*``, ``ambiguity/*`` (``d_min - d_h``) with ``*`` =
    ``mean``/``median``; with clean values: ``frac_hull_shrank`` (``d_h(adv) < d_h(clean)``),
    ``clean_margin/*``, ``clean_hull/*``; with ``success``: ``success_rate``, ``n_attacked``;
    with norms: ``l2/*``, ``linf/*``. Fractions are NaN when there are no successful examples.
    """
    m = _cpu64_1d(adv_margin)
    h = _cpu64_1d(adv_hull)
    if m.shape != h.shape:
        raise ValueError(f"feature_space_summary: adv_margin {tuple(m.shape)} vs adv_hull {tuple(h.shape)}")
    s = m.numel()
    nan = float("nan")
    out: dict[str, float] = {"n_success": float(s)}
    out["frac_margin_lt_hull"] = float((m < h).double().mean()) if s else nan
    out.update(_mean_median("margin", m))
    out.update(_mean_median("hull", h))
    out.update(_mean_median("ambiguity", m - h))
    if clean_hull is not None:
        ch = _cpu64_1d(clean_hull)
        if ch.shape != h.shape:
            raise ValueError("feature_space_summary: clean_hull must pair with adv_hull")
        out["frac_hull_shrank"] = float((h < ch).double().mean()) if s else nan
        out.update(_mean_median("clean_hull", ch))
    if clean_margin is not None:
        cm = _cpu64_1d(clean_margin)
        if cm.shape != m.shape:
            raise ValueError("feature_space_summary: clean_margin must pair with adv_margin")
        out.update(_mean_median("clean_margin", cm))
    if success is not None:
        sc = torch.as_tensor(success).detach().cpu().bool().flatten()
        out["n_attacked"] = float(sc.numel())
        out["success_rate"] = float(sc.double().mean()) if sc.numel() else nan
    out.update(_mean_median("l2", l2))
    out.update(_mean_median("linf", linf))
    return out


def summarize_attack(per_sample: dict[str, Tensor], train_margins: Tensor, fpr: float = 0.05, n_boot: int = 1000,
                     seed: int = 0) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """The metrics and ROC curves of :func:`evaluate_attack` from its ``per_sample`` tensors.

    Separate so that per-sample results computed on several processes (DDP shards) can be gathered
    first and summarised once. Returns ``(metrics, roc)``; ``metrics`` has every key of
    :func:`feature_space_summary`, ``n_nonfinite``, ``gap/median`` (logit gap of the successful
    examples), the :func:`fsl.adversarial.metrics.detection_table` keys
    (``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95``, ``tpr5``, ``threshold``, and with ``n_boot > 0``
    their ``*_lo``/``*_hi`` bootstrap bounds) for every detector with a per-sample column,
    ``rule/train_margin_caught|threshold|fpr``, ``n_nan/clean``, ``n_nan/adv`` (samples dropped
    from every detector because one of their scores is NaN) and, per detector,
    ``robust_acc_at_5fpr`` and ``clean_acc_lost_at_5fpr`` (:func:`fsl.adversarial.robust.robust_accuracy`;
    ``5`` is ``100 * fpr``): the threshold flags ``fpr`` of the clean scores of the rows where
    ``per_sample["calib"]`` is true and both are measured on the other rows; without a ``calib``
    column (or with all rows on one side) on every row, in-sample.
    """
    ps = {k: torch.as_tensor(v).cpu() for k, v in per_sample.items()}
    s = ps["success"].bool()
    m_clean, m_adv, h_clean, h_adv = ps["clean_margin"], ps["adv_margin"], ps["clean_hull"], ps["adv_hull"]
    metrics = feature_space_summary(m_adv[s], h_adv[s], m_clean[s], h_clean[s], success=s,
                                    l2=ps["l2"][s], linf=ps["linf"][s])
    metrics["n_nonfinite"] = float(ps["nonfinite"].sum())
    metrics["gap/median"] = float(np.median(ps["gap"][s].numpy())) if bool(s.any()) else float("nan")
    scores_clean, scores_adv = detector_scores(ps, "clean"), detector_scores(ps, "adv")
    # one set of negatives and one of positives for every detector: a sample with any NaN score
    # (e.g. a hull distance that could not be computed) is dropped from all of them, and counted
    ok_clean = torch.stack([~torch.isnan(v) for v in scores_clean.values()]).all(dim=0)
    ok_adv = torch.stack([~torch.isnan(v) for v in scores_adv.values()]).all(dim=0) & s
    metrics["n_nan/clean"] = float((~ok_clean).sum())
    metrics["n_nan/adv"] = float((s & ~ok_adv).sum())
    table_in = {name: (scores_clean[name][ok_clean], scores_adv[name][ok_adv]) for name in scores_clean}
    flat, roc = detection_table(table_in, fpr=fpr, n_boot=n_boot, seed=seed)
    metrics.update(flat)
    calib = ps.get("calib", torch.ones_like(s)).bool()
    test = ~calib if bool(calib.any()) and bool((~calib).any()) else torch.ones_like(s)
    at = f"at_{fpr * 100:g}fpr"
    for name in scores_clean:
        r = robust_accuracy(scores_clean[name][calib], scores_clean[name][test], scores_adv[name][test], s[test], fpr)
        metrics[f"robust_acc_{at}/{name}"] = r["robust_acc"]
        metrics[f"clean_acc_lost_{at}/{name}"] = r["clean_acc_lost"]
    rule = train_margin_rule(m_adv[s], torch.as_tensor(train_margins).cpu(), m_clean)
    metrics["rule/train_margin_caught"] = rule["caught"]
    metrics["rule/train_margin_threshold"] = rule["threshold"]
    metrics["rule/train_margin_fpr"] = rule["false_positive"]
    return metrics, roc
