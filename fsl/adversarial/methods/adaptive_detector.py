"""The adaptive attack on any detector with a differentiable score: ``adaptive`` (run per detector as
``adaptive_<detector>`` by the adversarial analysis, :func:`fsl.adversarial.suites.adaptive_suite`).

A detection result counts only against an attack that knows the detector (Carlini & Wagner,
arXiv 1705.07263; Tramer, Carlini, Brendel and Madry, arXiv 2002.08347). With ``s(x)`` the detector's
differentiable score (:meth:`fsl.adversarial.detectors.Detector.torch_score`, the score itself or a
surrogate; higher = adversarial) standardised by its spread on the clean batch, and ``CE`` the
classification loss, each *variant* runs PGD in the attack's ball (L-inf or L2, random start):

* ``sum``: ascend ``CE(x) - lambda * s(x)``, once for every ``lambda`` of ``lambdas``;
* ``orthogonal`` (Bryniarski, Hingun, Pachuca, Wang and Carlini, arXiv 2106.15023): while ``x`` is
  classified correctly, step on the gradient of ``CE`` made orthogonal to that of ``s``; once it is
  misclassified, step down the gradient of ``s`` made orthogonal to that of ``CE``;
* ``selective`` (same paper): step on ``CE`` until misclassified, then down ``s``.

Every iterate of every run is a candidate; per sample the attack returns the successful one
(misclassified with a logit gap above float noise) with the lowest ``s``, and, for a sample no run
fooled, the iterate with the largest logit gap. The budget (``eps``, ``steps``, ``norm``) is the
suite's PGD's; ``alpha`` defaults to ``2.5 * eps / steps`` (Madry et al., arXiv 1706.06083).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fsl.adversarial.detectors.registry import has_torch_score, require_torch_score
from fsl.adversarial.methods.registry import register_attack
from fsl.adversarial.success import gap_tolerance, logit_gap
from fsl.errors import ConfigError

VARIANTS = ("sum", "orthogonal", "selective")


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x`` projected onto the ``norm`` ball of radius ``eps`` around ``x0``, then onto ``[0, 1]``."""
    if norm == "Linf":
        return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
    d = x - x0
    n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x0 + d * (eps / n).clamp(max=1.0)).clamp(0, 1)


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step of gradient ``g``: its sign (L-inf) or ``g / ||g||_2`` (L2)."""
    if norm == "Linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def _orthogonal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` minus its projection on ``b``, per sample."""
    af, bf = a.flatten(1), b.flatten(1)
    coef = (af * bf).sum(dim=1) / (bf * bf).sum(dim=1).clamp_min(1e-30)
    return (af - coef[:, None] * bf).view_as(a)


def _forward(model: nn.Module, detector, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, n)`` and the detector's differentiable score ``(B,)`` (zeros without a detector);
    a detector that reads the feature maps (``layers``) gets them."""
    if detector is not None and getattr(detector, "layers", False):
        maps = model.feature_maps(x)
        feats = list(maps.values())[-1]
        logits = model.forward_head(feats)
        return logits, detector.torch_score(feats, logits, maps=maps)
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
    return logits, detector.torch_score(feats, logits) if detector is not None else logits.new_zeros(len(x))


def clean_floor(model: nn.Module, detector, images: torch.Tensor, batch_size: int = 256) -> float:
    """The lowest ``detector.torch_score`` of the clean ``images`` ``(B, C, H, W)`` (no gradients, in
    batches): the ``floor_score`` below which :func:`adaptive` stops pushing a sample."""
    with torch.no_grad():
        lows = [_forward(model, detector, images[i:i + batch_size])[1].min()
                for i in range(0, len(images), max(int(batch_size), 1))]
    return float(torch.stack(lows).min()) if lows else float("-inf")


def with_clean_floor(model: nn.Module, attack: str, params: dict, images: torch.Tensor, batch_size: int = 256,
                     detector=None) -> dict:
    """``params`` of ``attack`` plus ``floor_score`` (:func:`clean_floor` of ``images``) when the attack
    takes one (``adaptive``), has a detector (``detector`` or ``params["detector"]``), stops early
    and has no floor yet; else ``params`` unchanged."""
    from fsl.adversarial.attacks import attack_context
    from fsl.adversarial.methods.registry import ATTACKS

    detector = detector if detector is not None else params.get("detector")
    if (detector is None or params.get("floor_score") is not None or not params.get("early_stop", True)
            or "floor_score" not in ATTACKS.defaults(attack)):
        return params
    with attack_context(model):
        return {**params, "floor_score": clean_floor(model, detector, images, batch_size)}


class _Best:
    """Per sample: the successful candidate with the lowest score, else the one with the largest gap."""

    def __init__(self, x0: torch.Tensor):
        n = x0.shape[0]
        self.x, self.found = x0.clone(), torch.zeros(n, dtype=torch.bool, device=x0.device)
        self.score = torch.full((n,), float("inf"), device=x0.device)
        self.gap = torch.full((n,), -float("inf"), device=x0.device)

    def offer(self, idx: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, score: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
        """Offer candidates ``x`` of the samples ``idx``; returns which of them are misclassified."""
        gap = logit_gap(logits, labels)
        ok = gap > gap_tolerance(logits)
        found, best_score = self.found[idx], self.score[idx]
        take = (ok & (~found | (score < best_score))) | (~ok & ~found & (gap > self.gap[idx]))
        self.x[idx] = torch.where(take.view(-1, *([1] * (x.dim() - 1))), x, self.x[idx])
        self.score[idx] = torch.where(take & ok, score.to(self.score.dtype), best_score)
        self.gap[idx] = torch.where(take, gap.to(self.gap.dtype), self.gap[idx])
        self.found[idx] = found | ok
        return ok

    def done(self, idx: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """Which samples of ``idx`` hold a successful candidate scored below ``floor``."""
        return self.found[idx] & (self.score[idx] < floor)


def _run(model, detector, x0, labels, variant: str, lam: float, scale: torch.Tensor, floor: torch.Tensor, eps: float,
         step: float, steps: int, norm: str, random_start: bool, best: _Best) -> None:
    """One PGD run of ``variant`` (``lam``: the weight of the score in ``sum``); offers every iterate.
    Runs on the samples not yet done (a successful candidate scored below ``floor``) and drops each
    sample once it is done."""
    idx = (~best.done(torch.arange(len(x0), device=x0.device), floor)).nonzero().flatten()
    if idx.numel() == 0:
        return
    x0, labels = x0[idx], labels[idx]
    x = x0.clone()
    if random_start:
        noise = torch.empty_like(x).uniform_(-eps, eps) if norm == "Linf" else \
            _project(x0 + torch.randn_like(x) * eps, x0, eps, "L2") - x0
        x = _project(x + noise, x0, eps, norm)
    for i in range(steps + 1):
        x = x.detach().requires_grad_(True)
        logits, s = _forward(model, detector, x)
        s = s / scale
        with torch.no_grad():
            wrong = best.offer(idx, x.detach(), logits.detach(), s.detach(), labels)
            keep = ~best.done(idx, floor)
        if i == steps or not bool(keep.any()):
            break
        ce = nn.functional.cross_entropy(logits, labels, reduction="none")
        if variant == "sum" or detector is None:
            (g,) = torch.autograd.grad((ce - lam * s).sum(), x)
        elif variant == "selective":  # samples are independent (eval mode): one backward pass for both kinds
            (g,) = torch.autograd.grad(torch.where(wrong, -s, ce).sum(), x)
        else:
            (g_ce,) = torch.autograd.grad(ce.sum(), x, retain_graph=True)
            (g_s,) = torch.autograd.grad(s.sum(), x)
            g = torch.where(wrong.view(-1, *([1] * (x.dim() - 1))), -_orthogonal(g_s, g_ce), _orthogonal(g_ce, g_s))
        with torch.no_grad():
            x = _project(x + step * _direction(g, norm), x0, eps, norm)
            if not bool(keep.all()):
                idx, x, x0, labels = idx[keep], x[keep], x0[keep], labels[keep]


@register_attack("adaptive", defaults={"target": None, "detector": None, "eps": 0.3, "alpha": None, "steps": 20,
                                       "norm": "Linf", "lambdas": (0.1, 1.0, 10.0), "variants": VARIANTS,
                                       "random_start": True, "early_stop": True,
                                       "floor_score": None},
                 norm="Linf", doc="fsl adaptive PGD against a detector (classification loss + lambda * score; "
                                  "orthogonal and selective PGD)")
def adaptive(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, target: str | None = None,
             detector=None, eps: float = 0.3, alpha: float | None = None, steps: int = 20, norm: str = "Linf",
             lambdas: Sequence[float] = (0.1, 1.0, 10.0), variants: Sequence[str] = VARIANTS,
             random_start: bool = True, early_stop: bool = True, floor_score: float | None = None) -> torch.Tensor:
    """Adaptive PGD against ``detector``; returns ``(B, C, H, W)`` images in ``[0, 1]``.

    Args:
        model: an fsl model (``forward_features``, ``forward_head``).
        target: the detector's registered name (the suite's entry ``adaptive_<target>``);
            :func:`fsl.adversarial.evaluate_attack` passes the fitted detector of that name.
        detector: a fitted :class:`fsl.adversarial.detectors.Detector` with ``torch_score``.
            ``None`` (and no ``target``): plain PGD on the classification loss, one run.
        eps, steps, norm: the budget, ``"Linf"`` or ``"L2"``; alpha: the step (default
            ``2.5 * eps / steps``).
        lambdas: the weights of the standardised score tried by the ``sum`` variant.
        variants: a subset of ``("sum", "orthogonal", "selective")``; the attack costs
            ``len(lambdas)`` (``sum``) plus one (each other variant) runs of ``steps`` steps, each
            step one forward and one backward pass (two for ``orthogonal``).
        random_start: start each run uniformly in the ball (torch's global RNG; ``run_attack``
            seeds it).
        early_stop: a sample is done, and left out of the remaining steps and runs, once it has a
            successful candidate whose score is below ``floor_score``: below every clean score, its
            rank among the clean samples, and with it every rank and threshold metric, cannot change
            (for a surrogate score: its rank in the surrogate). Most samples get there within a few
            steps of the first run, so this cuts the cost several times; ``False`` runs every step
            of every run on every sample.
        floor_score: the lowest clean score (unstandardised ``torch_score``) of all samples the
            detector is evaluated on (:func:`fsl.adversarial.evaluate_attack` passes it); ``None``:
            the lowest of this batch's clean images.
    """
    if detector is None and target is not None:
        raise ConfigError(f"adaptive attack on {target!r}: no fitted detector; run it through "
                          f"fsl.adversarial.evaluate_attack (which passes the fitted {target!r}) or pass detector=")
    if detector is not None and not has_torch_score(detector):
        require_torch_score(detector.name)  # raises, naming the method to add
    if norm not in ("Linf", "L2"):
        raise ConfigError(f"adaptive attack: norm must be 'Linf' or 'L2', got {norm!r}")
    bad = sorted(set(variants) - set(VARIANTS))
    if bad or not variants:
        raise ConfigError(f"adaptive attack: variants must be a non-empty subset of {list(VARIANTS)}, got "
                          f"{list(variants)}")
    if "sum" in variants and not lambdas:
        raise ConfigError("adaptive attack: the 'sum' variant needs at least one lambda")
    x0 = images.detach()
    eps, steps = float(eps), int(steps)
    step = float(alpha) if alpha is not None else 2.5 * eps / max(steps, 1)
    best = _Best(x0)
    scale = torch.ones((), device=x0.device)
    floor = torch.full((), -float("inf"), device=x0.device)
    if detector is not None:
        with torch.no_grad():
            s0 = _forward(model, detector, x0)[1]
            spread = s0.std() if len(s0) > 1 else s0.abs().mean()
            scale = spread if bool(torch.isfinite(spread)) and float(spread) > 0 else scale
            if early_stop:
                floor = (s0.min() if floor_score is None else torch.as_tensor(float(floor_score), device=x0.device)) / scale
    runs = [("sum", float(lam)) for lam in lambdas] if "sum" in variants else []
    runs += [(v, 0.0) for v in variants if v != "sum"]
    if detector is None:
        runs = [("sum", 0.0)]
    for variant, lam in runs:
        _run(model, detector, x0, labels, variant, lam, scale, floor, eps, step, steps, norm, bool(random_start), best)
    return best.x
