"""Adversarial attacks on fsl models through torchattacks (DESIGN B1).

Plain functions on tensors; no Lightning. Models take inputs in [0, 1] of shape ``(B, C, H, W)`` and
normalise inside, which is what torchattacks expects.

Robustness notes (why this module wraps torchattacks instead of calling it directly):

* **Inference mode.** Lightning's ``validate``/``test`` run under ``torch.inference_mode()``. Tensors
  created there are *inference tensors* and can never enter autograd, and grad mode is off. Every
  attack therefore runs inside ``torch.inference_mode(False)`` + ``torch.enable_grad()``, and the
  inputs are cloned there (a clone made outside inference mode is a normal tensor).
* **Model mode and parameters.** The model is put in ``eval()`` for the attack and every submodule's
  own ``training`` flag is restored afterwards (torchattacks only calls ``model.train()`` on the root,
  which would un-freeze e.g. a frozen BatchNorm). Parameters get ``requires_grad=False`` during the
  attack: torchattacks' DeepFool calls ``.backward()``, which would otherwise accumulate into the
  parameters' ``.grad`` in the middle of a training epoch. Both are restored on exit, also on error.
* **DeepFool quirks (torchattacks 3.5.1).** ``DeepFool.forward`` returns the images only, but older
  releases returned ``(adv_images, target_labels)``; both are accepted. It loops over samples one at
  a time (one forward and ``n_classes`` backward passes per sample and step), so it is slow; the
  ``"deepfool_batched"`` attack below is the same algorithm on the whole batch (same update, same
  per-step overshoot, same clamp, same per-sample early stop). The overshoot is applied to every
  step's increment, not to the accumulated perturbation as in the DeepFool paper. The last step's
  image is returned without a final check, so "success" is always measured by us, never assumed.
  A zero gradient difference gives a 0/0 step (NaN image); such samples keep their clean image and
  are reported as failed (``nonfinite``).
* **Determinism.** PGD's random start draws from torch's global RNG; ``seed`` runs the attack in a
  forked RNG state (the caller's RNG stream is left untouched).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

ATTACKS = ("deepfool", "deepfool_batched", "pgd")

DEFAULT_PARAMS: dict[str, dict[str, float | int | bool]] = {
    "deepfool": {"steps": 50, "overshoot": 0.02},
    "deepfool_batched": {"steps": 50, "overshoot": 0.02, "box_aware": False},
    "pgd": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": True},
}


@dataclass
class AttackResult:
    """Output of :func:`run_attack` for ``B`` input samples (all tensors on the model's device).

    Attributes:
        adv_images: ``(B, C, H, W)`` adversarial images in [0, 1] (the clean image where the attack
            produced a non-finite image).
        success: ``(B,)`` bool, the model's prediction on ``adv_images`` differs from ``labels``.
        adv_pred: ``(B,)`` long, the model's prediction on ``adv_images``.
        l2: ``(B,)`` float, ``||adv - x||_2`` over all pixels of a sample.
        linf: ``(B,)`` float, ``max |adv - x|``.
        nonfinite: ``(B,)`` bool, the attack returned NaN/inf for this sample (counted as failed).
        name: attack name; params: the parameters it ran with.
    """

    adv_images: torch.Tensor
    success: torch.Tensor
    adv_pred: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    nonfinite: torch.Tensor
    name: str
    params: dict

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
def predict(model: nn.Module, images: torch.Tensor, batch_size: int | None = 512) -> torch.Tensor:
    """``(B,)`` predicted classes of ``images`` (model mode untouched; use under eval)."""
    device = _model_device(model)
    n = images.shape[0]
    bs = n if not batch_size else int(batch_size)
    out = [model(images[i:i + bs].to(device)).argmax(dim=1) for i in range(0, n, max(bs, 1))]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=device)


def select_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int | None = 512) -> torch.Tensor:
    """``(B,)`` bool mask of the samples the model (in eval mode) classifies correctly.

    Works under ``torch.inference_mode()``; the model's mode is restored.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        pred = predict(model, images, batch_size)
    finally:
        for m, training in modes:
            m.training = training
    return pred == labels.to(pred.device)


def perturbation_norms(adv_images: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(l2, linf)`` of ``adv_images - images`` over all pixels, each ``(B,)``."""
    delta = (adv_images - images.to(adv_images.device)).flatten(1)
    if delta.shape[1] == 0:
        z = torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device)
        return z, z.clone()
    return delta.norm(p=2, dim=1), delta.abs().amax(dim=1)


def _deepfool_batched(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      steps: int = 50, overshoot: float = 0.02, box_aware: bool = False) -> torch.Tensor:
    """torchattacks' DeepFool, batched over samples (same update, overshoot, clamp and stopping).

    Per step, for the samples still classified as ``labels``: the gradient of every logit (one
    backward pass per class for the whole active batch; samples are independent in eval mode), the
    linearised distance ``|f_k - f_y| / ||w_k - w_y||`` to every other class, and a step of
    ``(1 + overshoot)`` times the minimal one, clamped to [0, 1]. A sample stops at the first step
    that finds it misclassified.

    ``box_aware=True`` (not in torchattacks) fixes DeepFool on images with saturated pixels (MNIST
    background): the plain step points partly out of [0, 1], the clamp removes that part, and the
    iterates approach the boundary from one side without crossing it (the logit gap shrinks
    geometrically to float precision). With ``box_aware`` the gradient components that would push a
    pixel already at 0 below 0 (or at 1 above 1) are zeroed before the distance and step are
    computed, i.e. DeepFool's linearisation on the face of the box the image sits on.
    """
    adv = images.clone()
    active = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    for _ in range(int(steps)):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        x = adv[idx].clone().requires_grad_(True)
        logits = model(x)  # (A, n)
        y = labels[idx]
        pred = logits.argmax(dim=1)
        flipped = pred != y
        n_cls = logits.shape[1]
        grads = []
        for k in range(n_cls):
            (g,) = torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k + 1 < n_cls)
            grads.append(g)
        with torch.no_grad():
            ws = torch.stack(grads, dim=1)  # (A, n, C, H, W)
            ar = torch.arange(idx.numel(), device=x.device)
            f0 = logits[ar, y]
            w0 = ws[ar, y]
            f_prime = logits - f0[:, None]  # (A, n); zero at y
            w_prime = ws - w0[:, None]
            if box_aware:
                xd = x.detach()[:, None]
                blocked = ((xd <= 0) & (w_prime < 0)) | ((xd >= 1) & (w_prime > 0))
                w_prime = w_prime.masked_fill(blocked, 0.0)
            norms = w_prime.flatten(2).norm(dim=2)  # (A, n)
            value = f_prime.abs() / norms
            value[ar, y] = float("inf")
            # torch.min over NaN picks NaN like torchattacks; a NaN step is caught by the caller
            hat = value.argmin(dim=1)
            fp = f_prime[ar, hat].abs()
            wp = w_prime[ar, hat]
            wn2 = norms[ar, hat] ** 2
            delta = (fp / wn2).view(-1, *([1] * (wp.dim() - 1))) * wp
            new = torch.clamp(x.detach() + (1 + overshoot) * delta, 0, 1)
            keep = flipped.view(-1, *([1] * (new.dim() - 1)))
            adv[idx] = torch.where(keep, x.detach(), new)
            active[idx[flipped]] = False
    return adv


def _make_torchattack(name: str, model: nn.Module, params: dict):
    import torchattacks  # imported lazily: heavy, and only needed here

    if name == "deepfool":
        return torchattacks.DeepFool(model, steps=int(params["steps"]), overshoot=float(params["overshoot"]))
    if name == "pgd":
        return torchattacks.PGD(model, eps=float(params["eps"]), alpha=float(params["alpha"]),
                                steps=int(params["steps"]), random_start=bool(params["random_start"]))
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


def _attack_chunk(name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  params: dict) -> torch.Tensor:
    if name == "deepfool_batched":
        return _deepfool_batched(model, images, labels, steps=int(params["steps"]),
                                 overshoot=float(params["overshoot"]), box_aware=bool(params["box_aware"]))
    atk = _make_torchattack(name, model, params)
    out = atk(images, labels)
    if isinstance(out, (tuple, list)):  # older torchattacks DeepFool: (adv_images, target_labels)
        out = out[0]
    return out.detach()


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, name: str = "deepfool", *,
               batch_size: int | None = 256, seed: int | None = 0, **params) -> AttackResult:
    """Attack ``images`` (``(B, C, H, W)`` in [0, 1]) with true ``labels`` (``(B,)``).

    Args:
        model: an fsl model (inputs in [0, 1], normalisation inside); any ``nn.Module`` mapping
            images to logits works.
        name: ``"deepfool"`` (torchattacks, defaults ``steps=50, overshoot=0.02``),
            ``"deepfool_batched"`` (the same algorithm over the whole batch, much faster; extra
            option ``box_aware=False``, see :func:`_deepfool_batched`), or
            ``"pgd"`` (torchattacks, Linf, defaults ``eps=8/255, alpha=2/255, steps=10,
            random_start=True``).
        batch_size: samples per attack call (``None``: all at once).
        seed: seeds PGD's random start in a forked RNG (``None``: use the global RNG as is).
        **params: override the attack's defaults; unknown keys raise.

    Callers normally attack only correctly classified samples (:func:`select_correct`); samples
    already misclassified count as "successful" here without being moved.

    Safe under ``torch.inference_mode()`` / ``torch.no_grad()``; the model's train/eval flags and
    parameters' ``requires_grad`` are restored. Returns an :class:`AttackResult` on the model's device.
    """
    if name not in DEFAULT_PARAMS:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    unknown = set(params) - set(DEFAULT_PARAMS[name])
    if unknown:
        raise TypeError(f"run_attack({name!r}): unknown parameters {sorted(unknown)}; "
                        f"valid: {sorted(DEFAULT_PARAMS[name])}")
    full = {**DEFAULT_PARAMS[name], **params}
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"run_attack: need images (B, C, H, W) and labels (B,), got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    device = _model_device(model)
    n = images.shape[0]
    bs = n if not batch_size else int(batch_size)

    with attack_context(model), _seeded(seed, device):
        x_all = _normal_tensor(images, device)
        y_all = _normal_tensor(labels, device).long()
        if x_all.numel() and (x_all.min() < 0 or x_all.max() > 1):
            raise ValueError("run_attack: images must lie in [0, 1] (models normalise inside)")
        chunks = []
        for i in range(0, n, max(bs, 1)):
            chunks.append(_attack_chunk(name, model, x_all[i:i + bs], y_all[i:i + bs], full))
        adv = torch.cat(chunks) if chunks else x_all.clone()
        with torch.no_grad():
            nonfinite = ~torch.isfinite(adv.flatten(1)).all(dim=1) if n else torch.zeros(0, dtype=torch.bool,
                                                                                       device=device)
            adv = torch.where(nonfinite.view(-1, 1, 1, 1), x_all, adv)
            adv_pred = predict(model, adv, bs)
            success = (adv_pred != y_all) & ~nonfinite
            l2, linf = perturbation_norms(adv, x_all)
    return AttackResult(adv_images=adv, success=success, adv_pred=adv_pred, l2=l2, linf=linf,
                        nonfinite=nonfinite, name=name, params=full)
