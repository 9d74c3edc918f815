"""Adversarial attacks on fsl models: one registry, one entry point (:func:`run_attack`).

Plain functions on tensors; no Lightning. Models take inputs in [0, 1] of shape ``(B, C, H, W)`` and
normalise inside, which is what torchattacks expects.

==========================  ===========================================================  ======
name                        implementation                                               norm
==========================  ===========================================================  ======
``deepfool``                fsl, the paper's overshoot on the total (ART's algorithm)     L2
                            (:mod:`fsl.adversarial.methods.deepfool`)
``deepfool_torchattacks``   torchattacks' DeepFool: overshoot per step, clamped steps;   L2
                            **stalls** at a float32 tie on saturated pixels (MNIST)
``pgd``                     torchattacks ``PGD`` (Madry et al., arXiv 1706.06083)        L-inf
``pgd_l2``                  torchattacks ``PGDL2``                                       L2
``cw``                      fsl CW-L2 with confidence ``kappa`` (:mod:`fsl.adversarial.methods.cw`) L2
``margin_pgd``              fsl adaptive PGD against the margin detector                 L-inf
                            (:mod:`fsl.adversarial.methods.adaptive`)
``adaptive``                fsl adaptive PGD against any detector with ``torch_score``   L-inf
                            (``target``; lambda grid, orthogonal, selective; or L2)
                            (:mod:`fsl.adversarial.methods.adaptive_detector`)
==========================  ===========================================================  ======

Success is decided by one rule on the returned image: misclassified with a logit gap above float
noise (:func:`fsl.adversarial.success.is_adversarial`), never by a tie; the attacked samples are
those classified correctly by the mirrored rule (:func:`select_correct`).

Robustness notes (why attacks run through this module):

* **Inference mode.** Lightning's ``validate``/``test`` run under ``torch.inference_mode()``. Tensors
  created there are *inference tensors* and can never enter autograd, and grad mode is off. Every
  attack therefore runs inside ``torch.inference_mode(False)`` + ``torch.enable_grad()``, and the
  inputs are cloned there (a clone made outside inference mode is a normal tensor).
* **Model mode and parameters.** The model is put in ``eval()`` for the attack and every submodule's
  own ``training`` flag is restored afterwards (torchattacks only calls ``model.train()`` on the root,
  which would un-freeze e.g. a frozen BatchNorm). Parameters get ``requires_grad=False`` during the
  attack (no ``.grad`` left behind in the middle of a training epoch). Both are restored on exit,
  also on error.
* **Non-finite images.** An attack that returns NaN/inf for a sample (a 0/0 step) gives that sample
  its clean image back; it is reported as failed (``nonfinite``).
* **Determinism.** Random starts draw from torch's global RNG; ``seed`` runs the attack in a forked
  RNG state (the caller's RNG stream is left untouched).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

# importing the registry imports fsl.adversarial.methods, whose files register the attacks
# (one file per attack; order = the table above)
from fsl.adversarial.methods.registry import ATTACKS, check_attack_params
from fsl.adversarial.success import gap_tolerance, is_adversarial, logit_gap
from fsl.checks import check_labels, check_model_images, check_values


@dataclass
class AttackResult:
    """Output of :func:`run_attack` for ``B`` input samples (all tensors on the model's device).

    Attributes:
        adv_images: ``(B, C, H, W)`` adversarial images in [0, 1] (the clean image where the attack
            produced a non-finite image).
        success: ``(B,)`` bool, ``adv_images`` is adversarial for ``labels`` with a logit gap above
            float noise (:func:`fsl.adversarial.success.is_adversarial`).
        adv_pred: ``(B,)`` long, the model's prediction on ``adv_images``.
        gap: ``(B,)`` float, ``max_{k != y} z_k - z_y`` on ``adv_images``.
        l2: ``(B,)`` float, ``||adv - x||_2`` over all pixels of a sample.
        linf: ``(B,)`` float, ``max |adv - x|``.
        nonfinite: ``(B,)`` bool, the attack returned NaN/inf for this sample (counted as failed).
        name: attack name; params: the parameters it ran with; seconds: wall time of the attack.
    """

    adv_images: torch.Tensor
    success: torch.Tensor
    adv_pred: torch.Tensor
    gap: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    nonfinite: torch.Tensor
    name: str
    params: dict
    seconds: float = float("nan")

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def attack_context(model: nn.Module) -> Iterator[None]:
    """Gradients on, inference mode off, model in eval with frozen parameters; everything restored.

    Restores each submodule's ``training`` flag and each parameter's ``requires_grad`` on exit.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for p, _ in grads:
                p.requires_grad_(False)
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, rg in grads:
            p.requires_grad_(rg)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _normal_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A fresh, detached, non-inference copy (call only with inference mode disabled)."""
    return t.detach().to(device).clone()


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int | None = 512) -> torch.Tensor:
    """``(B, n)`` logits of ``images`` in batches (model mode untouched; use under eval)."""
    device = _model_device(model)
    n = images.shape[0]
    bs = n if not batch_size else int(batch_size)
    out = [model(images[i:i + bs].to(device)) for i in range(0, n, max(bs, 1))]
    return torch.cat(out) if out else torch.empty(0, 0, device=device)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int | None = 512) -> torch.Tensor:
    """``(B,)`` predicted classes of ``images`` (model mode untouched; use under eval)."""
    logits = _logits(model, images, batch_size)
    return logits.argmax(dim=1) if logits.numel() else torch.empty(0, dtype=torch.long, device=logits.device)


def select_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int | None = 512) -> torch.Tensor:
    """``(B,)`` bool mask of the samples the model (in eval mode) classifies correctly, by the margin
    of :func:`fsl.adversarial.success.is_adversarial` mirrored: the true logit beats every other by
    more than the tolerance (a clean sample at a float32 tie is neither attacked nor a negative).

    Works under ``torch.inference_mode()``; the model's mode is restored. ``images`` must be finite
    (B, C, H, W) in [0, 1] of the model's dtype, ``labels`` ``(B,)`` classes in ``[0, n)``
    (ValueError / TypeError otherwise); ``B = 0`` gives an empty mask.
    """
    check_model_images("select_correct images", model, images)
    check_labels("select_correct labels", labels, images.shape[0])
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        logits = _logits(model, images, batch_size)
    finally:
        for m, training in modes:
            m.training = training
    if logits.numel() == 0:
        return torch.zeros(images.shape[0], dtype=torch.bool, device=logits.device)
    return -logit_gap(logits, labels.to(logits.device)) > gap_tolerance(logits)


def perturbation_norms(adv_images: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(l2, linf)`` of ``adv_images - images`` over all pixels, each ``(B,)``.

    Both must have the same shape ``(B, ...)`` and be finite (ValueError otherwise)."""
    adv_images = check_values("perturbation_norms adv_images", adv_images, None, unit="image")
    images = check_values("perturbation_norms images", images, None, unit="image")
    if adv_images.shape != images.shape or adv_images.dim() == 0:
        raise ValueError(f"perturbation_norms: adv_images {tuple(adv_images.shape)} and images "
                         f"{tuple(images.shape)} must have the same (B, ...) shape")
    delta = (adv_images - images.to(adv_images.device)).flatten(1)
    if delta.shape[1] == 0:
        z = torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device)
        return z, z.clone()
    return delta.norm(p=2, dim=1), delta.abs().amax(dim=1)


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, name: str = "deepfool", *,
               batch_size: int | None = 256, seed: int | None = 0, **params) -> AttackResult:
    """Attack ``images`` (``(B, C, H, W)`` in [0, 1]) with true ``labels`` (``(B,)``).

    Args:
        model: an fsl model (inputs in [0, 1], normalisation inside); any ``nn.Module`` mapping
            images to logits works (``margin_pgd`` also needs its linear ``head``).
        name: a name of :data:`ATTACKS` (see the module's table); its defaults are
            ``ATTACKS.defaults(name)``.
        batch_size: samples per attack call (``None``: all at once).
        seed: seeds random starts in a forked RNG (``None``: use the global RNG as is).
        **params: override the attack's defaults; unknown keys raise ConfigError.

    Callers normally attack only correctly classified samples (:func:`select_correct`); a sample
    that is already adversarial counts as a success without being moved.

    Safe under ``torch.inference_mode()`` / ``torch.no_grad()``; the model's train/eval flags and
    parameters' ``requires_grad`` are restored. Returns an :class:`AttackResult` on the model's device
    (with empty tensors for ``B = 0``).

    Raises :class:`fsl.errors.ConfigError` (a ValueError) for an unknown attack or parameter name
    (naming the closest valid one), ValueError for images that are not finite (B, C, H, W) in
    [0, 1] or labels that are not ``B`` classes in ``[0, n)``, TypeError for images of another dtype
    than the model's or non-integer labels.
    """
    if name == "deepfool_batched":
        raise ValueError("attack 'deepfool_batched' was removed: it reproduced torchattacks' per-step overshoot, "
                         "which stalls on the boundary at a float32 tie. Use 'deepfool' (the paper's and ART's "
                         "algorithm) or 'deepfool_torchattacks' (torchattacks' own)")
    attack = ATTACKS.get(name)
    full = {**check_attack_params(f"run_attack({name!r})", name, params), **params}
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"run_attack: need images (B, C, H, W) and labels (B,), got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    check_model_images("run_attack images", model, images)
    check_labels("run_attack labels", labels, labels.shape[0])
    device = _model_device(model)
    n = images.shape[0]
    bs = n if not batch_size else int(batch_size)

    with attack_context(model), _seeded(seed, device):
        x_all = _normal_tensor(images, device)
        y_all = _normal_tensor(labels, device).long()
        if n == 0:  # nothing to attack: empty results of the right dtypes
            def empty(dtype):
                return torch.zeros(0, dtype=dtype, device=device)

            return AttackResult(adv_images=x_all.clone(), success=empty(torch.bool), adv_pred=empty(torch.long),
                                gap=empty(x_all.dtype), l2=empty(x_all.dtype), linf=empty(x_all.dtype),
                                nonfinite=empty(torch.bool), name=name, params=full, seconds=0.0)
        with torch.no_grad():  # the labels' range needs the number of classes: one sample's logits
            n_cls = _logits(model, x_all[:1], None).shape[1]
        check_labels("run_attack labels", y_all, n, n_cls)
        t0 = time.perf_counter()
        chunks = [attack(model, x_all[i:i + bs], y_all[i:i + bs], **full) for i in range(0, n, max(bs, 1))]
        seconds = time.perf_counter() - t0
        adv = torch.cat(chunks).detach() if chunks else x_all.clone()
        with torch.no_grad():
            nonfinite = ~torch.isfinite(adv.flatten(1)).all(dim=1)
            adv = torch.where(nonfinite.view(-1, 1, 1, 1), x_all, adv)
            logits = _logits(model, adv, bs)
            success = is_adversarial(logits, y_all) & ~nonfinite
            l2, linf = perturbation_norms(adv, x_all)
    return AttackResult(adv_images=adv, success=success, adv_pred=logits.argmax(dim=1), gap=logit_gap(logits, y_all),
                        l2=l2, linf=linf, nonfinite=nonfinite, name=name, params=full, seconds=seconds)
