"""Fitting the supervised detectors (``supervised = True``: ``lid``, ``mahalanobis_ml``) on a fit split.

Ma et al. (arXiv 1801.02613) and Lee et al. (arXiv 1807.03888) fit their detectors on clean, noisy
and adversarial examples and score them on other samples. Here the fit split is a set of
correctly classified evaluation samples disjoint from the ones the attacks are scored on
(:func:`split_fit_rows`); its adversarial examples come from one attack of the suite (the one the
report names; every other attack is a transfer), its noisy examples are the clean images plus
Gaussian noise of the same L2 norm as each sample's adversarial perturbation (Ma et al.).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from fsl.adversarial.attacks import run_attack
from fsl.adversarial.detectors import DETECTORS, build_detector
from fsl.adversarial.evaluate import Detectors

Tensor = torch.Tensor


def supervised_names() -> list[str]:
    """The registered detectors that are fitted on adversarial examples (``supervised``)."""
    return [n for n, c in DETECTORS.items() if getattr(c, "supervised", False)]


def split_fit_rows(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(fit, score)``: disjoint ascending positions in ``range(n)``, a seeded draw of
    ``round(fraction * n)`` fit rows (at least 2 and at most ``n - 2`` when ``fraction > 0``)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"supervised.fit_fraction must be in [0, 1), got {fraction}")
    k = min(max(int(round(fraction * n)), 2), n - 2) if fraction > 0 and n >= 4 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[:k].sort().values, perm[k:].sort().values


def noisy_like(images: Tensor, adv_images: Tensor, seed: int) -> Tensor:
    """``images`` plus Gaussian noise with, per sample, the L2 norm of ``adv_images - images``, in [0, 1]."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(images.shape, generator=g, dtype=images.dtype).to(images.device)
    norm = (adv_images - images).flatten(1).norm(dim=1)
    noise = noise * (norm / noise.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (images.dim() - 1)))
    return (images + noise).clamp(0, 1)


def fit_supervised_detectors(detectors: Detectors, model: nn.Module, images: Tensor, labels: Tensor, attack: str,
                             attack_params: Mapping | None = None, names: Sequence[str] | None = None,
                             params: Mapping[str, Mapping] | None = None, seed: int = 0,
                             batch_size: int = 256) -> dict:
    """Fit the supervised detectors ``names`` (default: all registered) on the fit split ``images``
    ``(B, C, H, W)`` / ``labels`` ``(B,)`` (correctly classified samples, none of which may be scored
    later) and add them to ``detectors.fitted``.

    ``attack`` (a name of ``ATTACKS``) with ``attack_params`` makes the adversarial examples; only its
    successful ones are used (the clean and noisy examples of every fit sample are). Returns
    ``{"attack", "n_fit", "n_adv", "seconds"}``."""
    names = supervised_names() if names is None else list(names)
    if not names:
        return {}
    res = run_attack(model, images, labels, attack, batch_size=batch_size, seed=seed, **dict(attack_params or {}))
    ok = res.success
    if int(ok.sum()) < 2:
        raise ValueError(f"supervised detectors {names}: the fit attack {attack!r} fooled {int(ok.sum())} of "
                         f"{len(ok)} fit samples; pick a stronger attack (supervised.attack) or more fit samples")
    x = images.to(res.adv_images.device)
    noisy = noisy_like(x, res.adv_images, seed)
    params = {k: dict(v or {}) for k, v in (params or {}).items()}
    detectors.clean_cache.clear()  # the clean values of a re-fitted detector change
    for name in names:
        det = build_detector(name, **params.get(name, {}))
        detectors.fitted[name] = det.fit_supervised(model, x, noisy, res.adv_images[ok], labels, batch_size)
    return {"attack": attack, "n_fit": int(len(images)), "n_adv": int(ok.sum()), "seconds": res.seconds}
