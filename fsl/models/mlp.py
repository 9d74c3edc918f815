"""Fully connected nets of Pattichis & Pattichis, SSIAI 2024: the one-layer FCNN and the five-layer SELU FCNN."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsl.models.base import SELU_LOWER, FeatureClassifier, FeatureDomain, Normalize, unknown_layer
from fsl.models.registry import register_model


def _lecun_normal_(layer: nn.Linear) -> None:
    # SELU's self-normalisation assumes LeCun-normal weights and zero bias.
    nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    nn.init.zeros_(layer.bias)


@register_model("fcnn1")
class FCNN1(FeatureClassifier):
    """One linear layer ``784 -> 10``; the features are the normalised, flattened pixels.

    With ``selu_output=True`` the logits pass through SELU (Pattichis & Pattichis, SSIAI 2024's invertible variant);
    SELU is increasing, so predictions and decision boundaries are those of ``head``.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 mean: Sequence[float] = (0.1307,), std: Sequence[float] = (0.3081,),
                 selu_output: bool = False):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.normalize = Normalize(mean, std)
        in_features = int(torch.tensor(self.input_shape).prod())
        self.head = nn.Linear(in_features, num_classes)
        self.selu_output = bool(selu_output)
        # normalised pixels: (0 - mean)/std <= y <= (1 - mean)/std; one bound for all channels
        lows = [(0.0 - m) / s for m, s in zip(mean, std)]
        highs = [(1.0 - m) / s for m, s in zip(mean, std)]
        self.feature_domain = FeatureDomain(min(lows), max(highs))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x).flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.head(features)
        return F.selu(logits) if self.selu_output else logits

    @property
    def invertible_selu(self) -> bool:
        return self.selu_output

    def selu_stack(self, start: str = "logits") -> list[tuple[str, nn.Linear, bool]]:
        if not self.selu_output:
            raise ValueError("FCNN1 is invertible through SELU only with selu_output=True")
        return [("head", self.head, True)]


@register_model("selu_mlp")
class SeluMLP(FeatureClassifier):
    """Five-layer SELU FCNN ``784-256-256-128-32-10``; features = the 32-d layer after its SELU."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 hidden: Sequence[int] = (256, 256, 128, 32),
                 mean: Sequence[float] = (0.1307,), std: Sequence[float] = (0.3081,)):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.normalize = Normalize(mean, std)
        sizes = [int(torch.tensor(self.input_shape).prod()), *[int(h) for h in hidden]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)
        for layer in [*self.layers, self.head]:
            _lecun_normal_(layer)
        self.feature_domain = FeatureDomain(SELU_LOWER, None)

    invertible_selu = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalize(x).flatten(1)
        for layer in self.layers:
            h = F.selu(layer(h))
        return h

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of every hidden layer after its SELU, ``layers.0`` ... ``layers.<k-1>`` (the last
        one is ``forward_features``)."""
        h = self.normalize(x).flatten(1)
        maps = {}
        for i, layer in enumerate(self.layers):
            h = F.selu(layer(h))
            maps[f"layers.{i}"] = h
        return maps

    def forward_from(self, layer: str, representation: torch.Tensor) -> torch.Tensor:
        """Logits from the output of hidden layer ``layers.<i>``: the layers after it, then the head."""
        names = [f"layers.{i}" for i in range(len(self.layers))]
        if layer not in names:
            raise unknown_layer(self, layer, names)
        h = representation
        for lin in self.layers[names.index(layer) + 1:]:
            h = F.selu(lin(h))
        return self.forward_head(h)

    def selu_stack(self, start: str = "features") -> list[tuple[str, nn.Linear, bool]]:
        stack = [(f"layers.{i}", layer, True) for i, layer in enumerate(self.layers)]
        if start == "logits":
            return [*stack, ("head", self.head, False)]
        if start != "features":
            raise ValueError(f"start must be 'features' or 'logits' for {type(self).__name__}")
        return stack
