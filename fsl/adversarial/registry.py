"""The attack registry: ``@register_attack(name, defaults=...)`` on ``fn(model, images, labels, **params)``.

An attack is one file that decorates its function (see docs/extending.md); :func:`fsl.adversarial.run_attack`
runs any registered name with its defaults overridden by the suite's parameters
(``configs/attacks/<suite>.yaml``), and the analyses, the config check and the tests take the list
of attacks from :data:`ATTACKS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``fn(model, images, labels, **params) -> adv_images`` and its defaults.

    ``fn`` gets ``(B, C, H, W)`` images in [0, 1] on the model's device, ``(B,)`` long labels and every
    parameter of ``defaults`` (overridden by the caller); it returns ``(B, C, H, W)`` images. It runs
    with gradients on, the model in eval mode and its parameters frozen, under a seeded RNG
    (:func:`fsl.adversarial.run_attack` sets that up and decides success on the returned images).
    """

    fn: Callable[..., torch.Tensor]
    defaults: dict = field(default_factory=dict)
    norm: str = ""
    doc: str = ""


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, defaults: dict | None = None, norm: str = "", doc: str = ""):
    """Decorator registering ``fn`` as attack ``name`` with parameter ``defaults``."""
    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in ATTACKS and ATTACKS[name].fn is not fn:
            raise ValueError(f"attack {name!r} is registered twice ({ATTACKS[name].fn} and {fn}); pick another name")
        ATTACKS[name] = AttackSpec(fn, dict(defaults or {}), norm, doc or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def torchattacks_attack(cls_name: str) -> Callable[..., torch.Tensor]:
    """An attack function ``(model, images, labels, **params) -> images`` over a torchattacks class;
    ``alpha=None`` means Madry et al.'s ``2.5 * eps / steps`` (arXiv 1706.06083)."""
    def run(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **params) -> torch.Tensor:
        import torchattacks  # imported lazily: heavy, and only needed here

        if "alpha" in params and params["alpha"] is None:
            params = {**params, "alpha": 2.5 * float(params["eps"]) / max(int(params["steps"]), 1)}
        out = getattr(torchattacks, cls_name)(model, **params)(images, labels)
        if isinstance(out, (tuple, list)):  # older torchattacks DeepFool: (adv_images, target_labels)
            out = out[0]
        return out.detach()

    run.__name__ = f"torchattacks.{cls_name}"
    run.__doc__ = f"torchattacks' ``{cls_name}``."
    return run
