"""An adaptive attack on the feature-space margin detector: L-inf PGD that, besides crossing the
boundary, pushes the adversarial features deep into the wrong decision region.

The margin detector flags features close to a decision boundary (small ``d_min``). An attacker who
knows it maximises, within ``||x - x0||_inf <= eps``,

    s(x) = min_{k != j} (z_j - z_k) / ||w_j - w_k||,     j = argmax_{k != y} z_k

(``z = W f(x) + b`` the logits, ``w_k`` the rows of the head): ``s < 0`` while ``x`` is still
classified ``y``, and once it is classified ``j``, ``s`` is the distance of its features to the closest
boundary of ``j``'s region when the feature domain is ignored, the closed-form lower bound of the
exact margin ``d_min`` that the detector scores. Maximising it is the detector's own score turned
into the attack's loss, the adaptive-attack recipe of Tramer, Carlini, Brendel, Madry ("On Adaptive
Attacks to Adversarial Example Defenses", NeurIPS 2020, arXiv 2002.08347). Sign-gradient ascent
with a random start (Madry et al., arXiv 1706.06083); the iterate with the largest ``s`` is returned.
"""
from __future__ import annotations

import torch
from torch import nn

from fsl.adversarial.vectors import region_distance, weight_gaps
from fsl.adversarial.methods.registry import register_attack


def normalized_margin(logits: torch.Tensor, labels: torch.Tensor, pair_norms: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``s`` above, from logits ``(B, n)`` and ``pair_norms[j, k] = ||w_j - w_k||`` ``(n, n)``."""
    ar = torch.arange(logits.shape[0], device=logits.device)
    wrong = logits.detach().clone()
    wrong[ar, labels] = -float("inf")
    return region_distance(logits, pair_norms, wrong.argmax(dim=1))


@register_attack("margin_pgd", defaults={"eps": 0.3, "alpha": None, "steps": 40, "random_start": True},
                 norm="Linf", doc="fsl adaptive PGD against the margin detector")
def margin_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float = 0.3,
               alpha: float | None = None, steps: int = 40, random_start: bool = True) -> torch.Tensor:
    """Adaptive L-inf PGD against the margin detector; returns ``(B, C, H, W)`` images in ``[0, 1]``.

    ``model`` must have a linear ``head`` (``weight (n, f)``) after ``forward_features``, as every fsl
    model does. ``alpha`` defaults to ``2.5 * eps / steps``. Random start: uniform in the eps-ball
    (torch's global RNG; ``run_attack`` seeds it).
    """
    x0 = images.detach()
    weight = model.head.weight.detach()
    norms = weight_gaps(weight.double(), "margin_pgd").to(weight.dtype)
    norms = norms + torch.eye(norms.shape[0], dtype=norms.dtype, device=norms.device)  # diagonal is masked
    step = float(alpha) if alpha is not None else 2.5 * float(eps) / max(int(steps), 1)
    x = x0.clone()
    if random_start:
        x = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    best, best_s = x0.clone(), torch.full((x0.shape[0],), -float("inf"), device=x0.device)
    for i in range(int(steps) + 1):
        x = x.detach().requires_grad_(True)
        s = normalized_margin(model(x), labels, norms)
        with torch.no_grad():
            better = s.detach() > best_s
            best_s = torch.where(better, s.detach(), best_s)
            best = torch.where(better.view(-1, *([1] * (x0.dim() - 1))), x.detach(), best)
        if i == int(steps):
            break
        (g,) = torch.autograd.grad(s.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + step * g.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    return best
