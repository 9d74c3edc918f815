"""Ideal-output input images per class (Pattichis & Pattichis, SSIAI 2024, section 2.4 and Figure 3).

The ideal output of class ``c`` takes, over a (training) set, the maximum of output ``c`` and the
minimum of every other output. Three training-set images start the search: *avg-img* (the class
mean), *min-img* (the image whose output is closest to the ideal, over the whole set) and
*avg-min-img* (the mean of the images within the lowest ``percentile`` of distances, whole set);
each is then refined by projected Adam steps on the input (weights frozen, ``x`` kept in
[0, 1]) on ``||model(x) - ideal_c||^2``. Distances are Euclidean in output (logit) space.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fsl.checks import check_count, check_images, check_labels, check_values
from fsl.inversion.jacobian import frozen_eval

INITS = ("avg-img", "min-img", "avg-min-img")


def _outputs(model, images, batch_size=512):
    with torch.no_grad():
        return torch.cat([model(images[s:s + batch_size]) for s in range(0, images.shape[0], batch_size)])


def ideal_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(n, n) ideal outputs: row c = per-output minima over ``images`` with entry c = the maximum.

    ``images``: at least one finite floating-point (N, C, H, W) image in [0, 1] (ValueError /
    TypeError otherwise; minima and maxima over no image are undefined)."""
    check_images("ideal_outputs images", images, ndim=4)
    check_count("ideal_outputs images", images.shape[0])
    with frozen_eval(model):
        out = _outputs(model, images, batch_size).double()
    mx, mn = out.max(0).values, out.min(0).values
    ideal = mn.unsqueeze(0).repeat(out.shape[1], 1)
    idx = torch.arange(out.shape[1], device=out.device)
    ideal[idx, idx] = mx
    return ideal


@dataclass
class IdealInputs:
    """Images per class and init, before and after refinement.

    Attributes:
        ideal: (n, n) ideal outputs (row = class).
        initial: {init: (n, C, H, W)} the training-set images (avg-img, min-img, avg-min-img).
        refined: {init: (n, C, H, W)} after ``steps`` projected Adam steps.
        distance_before / distance_after: {init: (n,) float64 ``||model(x) - ideal_c||``}.
        best_init: (n,) index into INITS of the init with the smallest refined distance.
    """

    ideal: torch.Tensor
    initial: dict
    refined: dict
    distance_before: dict
    distance_after: dict
    best_init: torch.Tensor


def refine_to_outputs(model: nn.Module, x0: torch.Tensor, goal: torch.Tensor, steps: int = 200,
                      lr: float = 0.01) -> torch.Tensor:
    """Projected Adam on the inputs (B, C, H, W) minimising ``||model(x) - goal||^2`` (B, n).

    ``x0``: finite floating-point images in [0, 1]; ``goal``: finite (B, n) (ValueError /
    TypeError otherwise). ``B = 0`` returns an empty copy of ``x0``."""
    check_images("refine_to_outputs x0", x0, ndim=4)
    goal = check_values("refine_to_outputs goal", goal, 2, what="(B, n)")
    if goal.shape[0] != x0.shape[0]:
        raise ValueError(f"refine_to_outputs goal: {goal.shape[0]} rows for {x0.shape[0]} images")
    if x0.shape[0] == 0:
        return x0.detach().clone()
    with frozen_eval(model):
        x = x0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        g = goal.to(x.dtype)
        best = x0.detach().clone()
        best_d = (_outputs(model, best).double() - goal.double()).norm(dim=1)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = (model(x) - g).pow(2).sum()
                loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
                d = (model(x).double() - goal.double()).norm(dim=1)
                better = d < best_d
                best[better] = x[better]
                best_d = torch.where(better, d, best_d)
    return best


def ideal_inputs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 200,
                 lr: float = 0.01, percentile: float = 25.0, batch_size: int = 512) -> IdealInputs:
    """Pattichis & Pattichis' (SSIAI 2024) ideal-input images for every class present in ``labels``.

    Args:
        images: (N, C, H, W) training images in [0, 1]; labels: (N,).
        steps, lr: refinement (the best iterate is kept, so ``distance_after <= distance_before``).
        percentile: in [0, 100].

    At least one image is needed; images must be finite, floating-point and in [0, 1], labels
    integers in ``[0, n)``, one per image (ValueError / TypeError otherwise).
    """
    check_images("ideal_inputs images", images, ndim=4)
    check_count("ideal_inputs images", images.shape[0])
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"ideal_inputs: percentile must be in [0, 100], got {percentile}")
    with frozen_eval(model):
        out = _outputs(model, images, batch_size).double()
    n = out.shape[1]
    check_labels("ideal_inputs labels", labels, images.shape[0], n)
    ideal = ideal_outputs(model, images, batch_size).to(out.device)
    D = torch.cdist(out, ideal)  # (N, n)
    lab = labels.to(images.device)
    initial = {k: torch.empty(n, *images.shape[1:], dtype=images.dtype, device=images.device) for k in INITS}
    for c in range(n):
        members = images[lab == c]
        initial["avg-img"][c] = members.mean(0) if members.shape[0] else images.mean(0)
        initial["min-img"][c] = images[D[:, c].argmin()]
        q = torch.quantile(D[:, c], percentile / 100.0)
        initial["avg-min-img"][c] = images[D[:, c] <= q].mean(0)
    before, after, refined = {}, {}, {}
    for k in INITS:
        with frozen_eval(model):
            before[k] = (_outputs(model, initial[k]).double() - ideal).norm(dim=1)
        refined[k] = refine_to_outputs(model, initial[k], ideal, steps, lr)
        with frozen_eval(model):
            after[k] = (_outputs(model, refined[k]).double() - ideal).norm(dim=1)
    best = torch.stack([after[k] for k in INITS], 1).argmin(1)
    return IdealInputs(ideal, initial, refined, before, after, best)
