"""Model registry: ``create_model(name, **kwargs)``.

Every model takes inputs in [0, 1] of shape ``(B, C, H, W)`` and exposes ``forward_features``,
``forward_head``, ``head`` (the final ``nn.Linear``) and ``feature_domain``.
"""
from __future__ import annotations

from typing import Callable

from fsl.models.base import SELU_LOWER, FeatureClassifier, FeatureDomain, Normalize
from fsl.models.mlp import FCNN1, SeluMLP
from fsl.models.resnet import CifarResNet

MODELS: dict[str, Callable[..., FeatureClassifier]] = {
    "resnet20": lambda **kw: CifarResNet(depth=20, **kw),
    "fcnn1": FCNN1,
    "selu_mlp": SeluMLP,
}


def create_model(name: str, **kwargs) -> FeatureClassifier:
    """Build a registered model by name; unknown names raise with the list of valid ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = ["create_model", "MODELS", "FeatureClassifier", "FeatureDomain", "Normalize", "SELU_LOWER",
           "FCNN1", "SeluMLP", "CifarResNet"]
