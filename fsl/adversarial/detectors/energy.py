"""Free energy of the logits (Liu, Wang, Owens and Li, arXiv 2010.03759)."""
from __future__ import annotations

import torch

from fsl.adversarial.detectors.registry import Detector, register_detector
from fsl.checks import check_matrix


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T * logsumexp(z / T)`` (``(B,)`` float64) of logits ``z`` ``(B, n)``.

    Liu, Wang, Owens and Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020
    (arXiv 2010.03759). Confident (in-distribution) logits have a low energy, so the energy itself
    already follows the convention higher = more adversarial. Computed in float64.
    """
    if not temperature > 0:
        raise ValueError(f"energy_score: temperature must be > 0, got {temperature}")
    z = check_matrix("energy_score(logits)", logits)
    return -temperature * torch.logsumexp(z / temperature, dim=1)


@register_detector("energy", defaults={"temperature": 1.0})
class EnergyDetector(Detector):
    """score ``-T logsumexp(z / T)``: high free energy is suspicious."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = float(temperature)

    def value(self, features, logits, margin, hull):
        return energy_score(logits.to("cpu", torch.float64), self.temperature)

    def torch_score(self, features, logits):
        return -self.temperature * torch.logsumexp(logits / self.temperature, dim=1)
