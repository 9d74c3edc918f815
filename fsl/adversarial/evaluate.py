"""One call per attack: attack, feature-space geometry, detection scores and metrics (DESIGN B1-B3).

The callbacks and ``analyze.py`` call :func:`evaluate_attack`; everything here is plain torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from fsl.adversarial.attacks import attack_context, run_attack, select_correct
from fsl.adversarial.detection import (Mahalanobis, ambiguity_score, detection_table, feature_space_summary,
                                       fit_mahalanobis, margin_score, msp_score, train_margin_rule)

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
        head = model.head
        dom = getattr(model, "feature_domain", None)
        lower = getattr(dom, "lower", None)
        upper = getattr(dom, "upper", None)

        def margin_fn(features: Tensor) -> Tensor:
            from fsl.geometry import flip_margins
            return flip_margins(features, head.weight, head.bias, lower, upper).margin

        def hull_fn(features: Tensor) -> Tensor:
            from fsl.geometry import hull_distances
            return hull_distances(features, train_features.to(features.device), **hull_kwargs).distance

        return cls(margin_fn=margin_fn, hull_fn=hull_fn)


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


def evaluate_attack(model: nn.Module, images: Tensor, labels: Tensor, train_features: Tensor,
                    train_labels: Tensor, attack: str = "deepfool", geometry: DistanceFunctions | None = None, *,
                    train_margins: Tensor | None = None, mahalanobis: Mahalanobis | None = None,
                    only_correct: bool = True, batch_size: int | None = 256, seed: int | None = 0,
                    fpr: float = 0.05, **attack_params) -> AttackEvaluation:
    """Attack the (correctly classified) samples and measure everything of DESIGN B for them.

    Args:
        model: fsl model (``forward_features``, ``forward_head``, ``head``, ``feature_domain``).
        images: ``(B, C, H, W)`` in [0, 1]; labels: ``(B,)`` true classes.
        train_features: ``(N, f)`` clean training features (Mahalanobis fit; default hull set).
        train_labels: ``(N,)``.
        attack: ``"deepfool"`` | ``"deepfool_batched"`` | ``"pgd"``; ``**attack_params`` override
            its defaults (see :func:`fsl.adversarial.attacks.run_attack`).
        geometry: margin and hull-distance functions; default ``DistanceFunctions.from_model``.
        train_margins: ``(N,)`` margins of the clean training samples for the rule (computed with
            ``geometry.margin_fn(train_features)`` when omitted: pass them to reuse across attacks).
        mahalanobis: a fitted :class:`Mahalanobis` (fitted on the training features when omitted).
        only_correct: attack only samples the model classifies correctly (the design's setting).
        fpr: the false-positive budget of the ``tpr5/*`` metrics.

    Sets: the *attacked* samples are the correctly classified ones (``A`` of them); the clean
    negatives of every detector are all ``A`` clean originals, the positives the ``S`` successful
    adversarial examples. Success is the model's prediction on the adversarial features
    (``argmax forward_head(forward_features(adv))``) differing from the label.

    Returns :class:`AttackEvaluation` ``(metrics, per_sample, roc)``:

    * ``metrics``: Python floats, keys without prefix: ``success_rate``, ``n_attacked``,
      ``n_success``, ``n_nonfinite``, ``l2/mean|median``, ``linf/mean|median`` (successful examples),
      ``frac_margin_lt_hull``, ``frac_hull_shrank``, ``margin|hull|ambiguity/mean|median`` (adversarial),
      ``clean_margin|clean_hull/mean|median`` (their clean originals), ``auroc/<score>``,
      ``tpr5/<score>``, ``threshold/<score>`` for ``margin, ambiguity, msp, mahalanobis``,
      ``rule/train_margin_caught``, ``rule/train_margin_threshold``, ``rule/train_margin_fpr``
      (clean attacked samples the rule flags).
    * ``per_sample``: CPU tensors of length ``A``: ``index`` (into ``images``), ``label``,
      ``success``, ``adv_pred``, ``l2``, ``linf``, and for ``clean``/``adv``: ``*_margin``,
      ``*_hull``, ``*_ambiguity`` (``margin - hull``), ``*_msp`` (max softmax probability),
      ``*_mahalanobis``.
    * ``roc``: ``{score: {"fpr", "tpr", "thresholds", "auroc", ...}}`` numpy arrays.
    """
    if geometry is None:
        geometry = DistanceFunctions.from_model(model, train_features)
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
    res = run_attack(model, x, y, attack, batch_size=batch_size, seed=seed, **attack_params)

    with attack_context(model), torch.no_grad():
        f_clean = _features(model, x, batch_size)
        f_adv = _features(model, res.adv_images, batch_size)
        logits_clean = model.forward_head(f_clean)
        logits_adv = model.forward_head(f_adv)
        y_dev = y.to(logits_adv.device)
        success = (logits_adv.argmax(dim=1) == y_dev).logical_not() & ~res.nonfinite.to(y_dev.device)
        adv_pred = logits_adv.argmax(dim=1)

        m_clean = _cpu64(geometry.margin_fn(f_clean))
        m_adv = _cpu64(geometry.margin_fn(f_adv))
        h_clean = _cpu64(geometry.hull_fn(f_clean))
        h_adv = _cpu64(geometry.hull_fn(f_adv))
        if train_margins is None:
            train_margins = geometry.margin_fn(torch.as_tensor(train_features).to(f_clean.device))
        if mahalanobis is None:
            mahalanobis = fit_mahalanobis(train_features, train_labels, num_classes=logits_clean.shape[1])
        maha = mahalanobis.to(f_clean.device)
        maha_clean = _cpu64(maha.score(f_clean))
        maha_adv = _cpu64(maha.score(f_adv))
        msp_clean = _cpu64(-msp_score(logits_clean))
        msp_adv = _cpu64(-msp_score(logits_adv))

    per_sample = {
        "index": index.cpu(), "label": y.cpu(), "success": success.cpu(), "adv_pred": adv_pred.cpu(),
        "l2": res.l2.cpu(), "linf": res.linf.cpu(), "nonfinite": res.nonfinite.cpu(),
        "clean_margin": m_clean, "adv_margin": m_adv, "clean_hull": h_clean, "adv_hull": h_adv,
        "clean_ambiguity": m_clean - h_clean, "adv_ambiguity": m_adv - h_adv,
        "clean_msp": msp_clean, "adv_msp": msp_adv,
        "clean_mahalanobis": maha_clean, "adv_mahalanobis": maha_adv,
    }
    metrics, roc = summarize_attack(per_sample, train_margins, fpr=fpr)
    return AttackEvaluation(metrics=metrics, per_sample=per_sample, roc=roc)


def summarize_attack(per_sample: dict[str, Tensor], train_margins: Tensor, fpr: float = 0.05
                     ) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """The metrics and ROC curves of :func:`evaluate_attack` from its ``per_sample`` tensors.

    Separate so that per-sample results computed on several processes (DDP shards) can be gathered
    first and summarised once. Returns ``(metrics, roc)``.
    """
    ps = {k: torch.as_tensor(v).cpu() for k, v in per_sample.items()}
    s = ps["success"].bool()
    m_clean, m_adv, h_clean, h_adv = ps["clean_margin"], ps["adv_margin"], ps["clean_hull"], ps["adv_hull"]
    scores_clean = {"margin": margin_score(m_clean), "ambiguity": ambiguity_score(m_clean, h_clean),
                    "msp": -ps["clean_msp"], "mahalanobis": ps["clean_mahalanobis"]}
    scores_adv = {"margin": margin_score(m_adv[s]), "ambiguity": ambiguity_score(m_adv[s], h_adv[s]),
                  "msp": -ps["adv_msp"][s], "mahalanobis": ps["adv_mahalanobis"][s]}
    metrics = feature_space_summary(m_adv[s], h_adv[s], m_clean[s], h_clean[s], success=s,
                                    l2=ps["l2"][s], linf=ps["linf"][s])
    metrics["n_nonfinite"] = float(ps["nonfinite"].sum()) if "nonfinite" in ps else 0.0
    table_in = {}
    for name in scores_clean:
        c, a = scores_clean[name], scores_adv[name]
        bad = int(torch.isnan(c).sum() + torch.isnan(a).sum())
        if bad:
            metrics[f"n_nan/{name}"] = float(bad)
        table_in[name] = (c[~torch.isnan(c)], a[~torch.isnan(a)])
    flat, roc = detection_table(table_in, fpr=fpr)
    metrics.update(flat)
    rule = train_margin_rule(m_adv[s], torch.as_tensor(train_margins).cpu(), m_clean)
    metrics["rule/train_margin_caught"] = rule["caught"]
    metrics["rule/train_margin_threshold"] = rule["threshold"]
    metrics["rule/train_margin_fpr"] = rule["false_positive"]
    return metrics, roc
