"""Common interface of every fsl classifier: ``logits = forward_head(forward_features(x))``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

# SELU's constants: selu(z) > -lambda * alpha for every z.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_LOWER = -SELU_ALPHA * SELU_LAMBDA  # ≈ -1.7581


@dataclass(frozen=True)
class FeatureDomain:
    """Box ``lower <= y <= upper`` that the last hidden activation allows (``None`` = unbounded)."""

    lower: float | None = None
    upper: float | None = None

    def contains(self, features: torch.Tensor, atol: float = 1e-6) -> bool:
        ok = True
        if self.lower is not None:
            ok = ok and bool((features >= self.lower - atol).all())
        if self.upper is not None:
            ok = ok and bool((features <= self.upper + atol).all())
        return ok


@dataclass(frozen=True)
class LinearHead:
    """A model's linear head and feature domain as plain tensors: ``logits = features @ weight.T + bias``
    on features in ``lower <= y <= upper``. ``weight`` (n, f), ``bias`` (n,), detached, on the CPU.

    One value instead of unpacking ``model.head.weight``, ``.bias`` and ``model.feature_domain``
    wherever the geometry is called: ``LinearHead.from_model(net)``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    lower: float | None = None
    upper: float | None = None

    @classmethod
    def from_model(cls, model: nn.Module) -> "LinearHead":
        dom = getattr(model, "feature_domain", None) or FeatureDomain()
        return cls(model.head.weight.detach().cpu(), model.head.bias.detach().cpu(), dom.lower, dom.upper)

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        return self.lower, self.upper


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on inputs in [0, 1]; lives inside the model for torchattacks."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureClassifier(nn.Module):
    """Base class: subclasses define ``forward_features`` and set ``self.head`` (an ``nn.Linear``).

    Attributes:
        head: the final ``nn.Linear(feature_dim, num_classes)``.
        feature_domain: :class:`FeatureDomain` of the features that ``forward_features`` returns.
        input_shape: ``(C, H, W)`` the model expects, inputs in [0, 1].
    """

    head: nn.Linear
    feature_domain: FeatureDomain
    input_shape: tuple[int, int, int]
    #: capability: features (and logits) come from a stack of invertible ``SELU(W h + b)`` layers,
    #: listed by :meth:`selu_stack` (the layer-wise SELU inversion of Pattichis & Pattichis, SSIAI 2024 needs it)
    invertible_selu: bool = False

    def selu_stack(self, start: str = "features") -> list[tuple[str, nn.Linear, bool]]:
        """``[(name, linear, followed_by_selu)]`` from the input side up to ``start`` ("features" or
        "logits"); only for models with ``invertible_selu``."""
        raise TypeError(f"{type(self).__name__} has no invertible SELU stack (invertible_selu is False)")

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, f)
        raise NotImplementedError

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every named intermediate representation of ``x`` (B, C, H, W) in [0, 1], input side first;
        the last entry is ``forward_features(x)`` (B, f). Spatial maps are (B, C', H', W'). Models
        with intermediate stages override this (ResNet stages, SELU MLP hidden layers)."""
        return {"features": self.forward_features(x)}

    def forward_from(self, layer: str, representation: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n)`` from ``representation``, the output of ``layer`` (a key of
        :meth:`feature_maps`, same shape): the rest of the network after that layer, so that
        ``forward_from(k, feature_maps(x)[k]) == forward(x)`` for every ``k``. Models with
        intermediate layers override it."""
        if layer != "features":
            raise unknown_layer(self, layer, ["features"])
        return self.forward_head(representation)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:  # (B, f) -> (B, n)
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> (B, n) logits
        return self.forward_head(self.forward_features(x))


def unknown_layer(model: nn.Module, layer: str, names: Sequence[str]) -> ValueError:
    """The error for a layer name that ``model.feature_maps`` does not have."""
    return ValueError(f"{type(model).__name__} has no layer {layer!r}; its layers (keys of feature_maps): "
                      f"{list(names)}")
