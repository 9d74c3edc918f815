"""Carlini-Wagner L2 with confidence (Carlini & Wagner, "Towards Evaluating the Robustness of Neural
Networks", IEEE S&P 2017, arXiv 1608.04644), batched, untargeted.

    minimise_w  ||x(w) - x0||_2^2 + c * max(z_y(x(w)) - max_{k != y} z_k(x(w)), -kappa),
    x(w) = (tanh(w) + 1) / 2  in [0, 1]

with Adam on ``w``, a binary search over ``c`` per sample and the early abort of a stalled loss
(checked every tenth of the steps on the batch's loss, so the number of steps depends on the
batch), as in the authors' code. An iterate
counts as found only when its logit gap ``max_{k != y} z_k - z_y`` reaches ``kappa`` (the authors'
``compare`` with confidence); the smallest-L2 such iterate is returned. With ``kappa > 0`` the
examples lie *inside* the wrong region, at a logit gap of at least ``kappa``: the honest test for
detectors that look for samples near a decision boundary.

torchattacks 3.5.1's ``CW`` differs in three ways that matter here, which is why fsl has its own:
its best iterate is the smallest-L2 *misclassified* one, whatever its gap (so ``kappa`` does not
reach the returned image: it is the first crossing, at the boundary); the "largest other logit"
is taken over ``(1 - onehot) * z``, which is 0 instead of the true maximum when every other logit is
negative; and it has no search over ``c``.
"""
from __future__ import annotations

import torch
from torch import nn

from fsl.adversarial.methods.registry import register_attack
from fsl.adversarial.success import is_adversarial, logit_gap


def _to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))


@register_attack("cw", defaults={"kappa": 5.0, "c": 1.0, "steps": 100, "lr": 0.1, "binary_steps": 5}, norm="L2",
                 doc="fsl CW-L2 with confidence kappa")
def cw_l2(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, kappa: float = 5.0, c: float = 1.0,
          steps: int = 100, lr: float = 0.1, binary_steps: int = 5) -> torch.Tensor:
    """Untargeted CW-L2; returns ``(B, C, H, W)`` images in ``[0, 1]``.

    Args:
        images: ``(B, C, H, W)`` in ``[0, 1]``; labels: ``(B,)`` true classes.
        kappa: confidence, in logit units: an example is found when ``max_{k != y} z_k - z_y >= kappa``.
        c: initial trade-off constant (per sample: halved towards the last success, multiplied by 10
            while none is found, as in the authors' binary search).
        steps: Adam steps per value of ``c``; lr: Adam's learning rate in tanh space (0.1: with
            torchattacks' 0.01, 100 steps barely move the pixels near 0 and 1, where tanh is flat,
            and on MNIST a third of the samples reach kappa=5).
        binary_steps: values of ``c`` tried per sample.

    A sample for which no example reaches ``kappa`` gets its clean image back (and fails).
    """
    x0 = images.detach()
    n = x0.shape[0]
    dev = x0.device
    lo = torch.zeros(n, dtype=torch.float64, device=dev)
    hi = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
    const = torch.full((n,), float(c), dtype=torch.float64, device=dev)
    best_l2 = torch.full((n,), float("inf"), device=dev)
    best = x0.clone()
    w0 = _to_tanh_space(x0)
    shape = (-1, *([1] * (x0.dim() - 1)))
    for _ in range(int(binary_steps)):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=float(lr))
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        cc = const.to(x0.dtype)
        prev = float("inf")
        for it in range(int(steps)):
            x = (torch.tanh(w) + 1) / 2
            logits = model(x)
            gap = logit_gap(logits, labels)
            l2sq = (x - x0).flatten(1).pow(2).sum(dim=1)
            # the authors' loss1 = max(z_y - max_other + kappa, 0): >= 0, so a stall can be detected
            loss = (l2sq + cc * torch.clamp(float(kappa) - gap, min=0)).sum()
            with torch.no_grad():
                ok = (gap.detach() >= float(kappa)) & is_adversarial(logits.detach(), labels)
                better = ok & (l2sq.detach() < best_l2)
                best_l2 = torch.where(better, l2sq.detach(), best_l2)
                best = torch.where(better.view(shape), x.detach(), best)
                found |= ok
            # the authors' abort_early: every tenth of the steps, stop when the loss has stalled
            if it % max(int(steps) // 10, 1) == 0:
                if float(loss.detach()) > 0.9999 * prev:
                    break
                prev = float(loss.detach())
            (w.grad,) = torch.autograd.grad(loss, w)  # the model's parameters get no .grad
            opt.step()
        # binary search on c (per sample): success -> smaller c, failure -> larger c
        hi = torch.where(found, torch.minimum(hi, const), hi)
        lo = torch.where(found, lo, torch.maximum(lo, const))
        const = torch.where(torch.isfinite(hi), (lo + hi) / 2, const * 10)
    return best
