"""The attack registry: ``@register_attack(name, defaults=...)`` on ``fn(model, images, labels, **params)``.

An attack is one file of this folder that decorates its function (see docs/extending.md);
:func:`fsl.adversarial.run_attack` runs any registered name with its defaults overridden by the
suite's parameters (``configs/attacks/<suite>.yaml``), and the analyses, the config check and the
tests take the list of attacks from :data:`ATTACKS`, a :class:`fsl.registry.Registry`:
``ATTACKS.names()``, ``ATTACKS.get(name)`` (the function), ``ATTACKS.defaults(name)`` (a fresh
dict of its parameters), ``ATTACKS.entry(name).meta`` (``norm``, ``doc``).

The registered function gets ``(B, C, H, W)`` images in [0, 1] on the model's device, ``(B,)`` long
labels and every parameter of its defaults (overridden by the caller); it returns ``(B, C, H, W)``
images. It runs with gradients on, the model in eval mode and its parameters frozen, under a
seeded RNG (:func:`fsl.adversarial.run_attack` sets that up and decides success on the returned
images).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from fsl.registry import Registry

__all__ = ["ATTACKS", "register_attack", "check_attack_params", "torchattacks_attack"]

ATTACKS = Registry("attack", load="fsl.adversarial.methods", where="fsl/adversarial/methods/")


def register_attack(name: str, defaults: dict | None = None, norm: str = "", doc: str = ""):
    """Decorator registering ``fn`` as attack ``name`` with parameter ``defaults`` (the only valid
    parameters), its ``norm`` ("L2", "Linf") and a one-line ``doc`` (default: the first line of
    ``fn``'s docstring), both kept in ``ATTACKS.entry(name).meta``."""
    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return ATTACKS.register(name, fn, defaults=dict(defaults or {}), norm=norm,
                                doc=doc or (fn.__doc__ or "").strip().split("\n")[0])

    return deco


def check_attack_params(context: str, name: str, params: Iterable[str]) -> dict:
    """The defaults of attack ``name`` (a fresh dict) after checking that every key of ``params`` is
    one of them; ConfigError otherwise, prefixed by ``context`` and naming the closest valid key.
    An unknown ``name`` raises ConfigError with the closest registered name."""
    ATTACKS.check_params(name, params, context=context)
    return ATTACKS.defaults(name)


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
