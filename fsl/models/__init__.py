"""Model registry: ``create_model(name, **kwargs)``; a model registers itself with ``@register_model``.

Every model takes inputs in [0, 1] of shape ``(B, C, H, W)`` and exposes ``forward_features``,
``forward_head``, ``head`` (the final ``nn.Linear``) and ``feature_domain``; capabilities that some
analyses need are attributes (``invertible_selu``: an invertible SELU stack, see
:meth:`fsl.models.base.FeatureClassifier.selu_stack`).
"""
from __future__ import annotations

from fsl.models.base import SELU_LOWER, FeatureClassifier, FeatureDomain, LinearHead, Normalize
from fsl.models.registry import MODELS, create_model, register_model
# importing a model's module registers it
from fsl.models.mlp import FCNN1, SeluMLP  # noqa: E402
from fsl.models.resnet import CifarResNet, resnet20  # noqa: E402
from fsl.plugins import import_modules  # noqa: E402

import_modules(__name__)  # a new file in fsl/models/ registers its models on import

__all__ = ["create_model", "register_model", "MODELS", "FeatureClassifier", "FeatureDomain", "LinearHead",
           "Normalize", "SELU_LOWER", "FCNN1", "SeluMLP", "CifarResNet", "resnet20"]
