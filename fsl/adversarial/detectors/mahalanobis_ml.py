"""Multi-layer Mahalanobis confidence with input preprocessing (Lee, Lee, Lee and Shin, arXiv 1807.03888)."""
from __future__ import annotations

from typing import Mapping

import torch

from fsl.adversarial.detectors._layers import SupervisedLayerDetector, pool
from fsl.adversarial.detectors.mahalanobis import Mahalanobis, fit_mahalanobis
from fsl.adversarial.detectors.registry import register_detector

Tensor = torch.Tensor


@register_detector("mahalanobis_ml", defaults={"noise": 0.0, "reg": 1e-6, "C": 1.0})
class MultiLayerMahalanobis(SupervisedLayerDetector):
    """At every layer of ``model.feature_maps`` (spatially mean-pooled): class-conditional Gaussians
    with a tied covariance (:func:`fsl.adversarial.detectors.mahalanobis.fit_mahalanobis`, fitted on the
    clean fit samples with their labels) and the layer feature ``min_c (z - mu_c)^T S^-1 (z - mu_c)``
    (minus Lee et al.'s confidence ``M(x)``; higher = adversarial); a logistic regression over the
    layers. ``noise`` > 0: Lee et al.'s input preprocessing, per layer ``x - noise * sign(grad_x)`` of
    that layer's distance (one backward pass per layer), scored at the moved input; the adaptive
    attack's surrogate scores the unmoved input."""

    def __init__(self, noise: float = 0.0, reg: float = 1e-6, C: float = 1.0):
        super().__init__(C)
        self.noise, self.reg = float(noise), float(reg)

    def prepare(self, maps: Mapping[str, Tensor], labels: Tensor) -> None:
        n = int(labels.max()) + 1 if len(labels) else 0
        self.gaussians: dict[str, Mahalanobis] = {name: fit_mahalanobis(m, labels, num_classes=n, reg=self.reg)
                                                  for name, m in maps.items()}

    def _layer(self, name: str, z: Tensor) -> Tensor:
        return self.gaussians[name].torch_distances(z).amin(dim=1).pow(2)

    def layer_features(self, maps: Mapping[str, Tensor], exclude_self: bool = False) -> Tensor:
        """``(B, L)`` squared Mahalanobis distance to the closest class mean at every layer."""
        return torch.stack([self._layer(name, maps[name]) for name in self.gaussians], dim=1)

    def maps_of(self, images: Tensor) -> dict[str, Tensor]:
        if self.noise <= 0:
            return super().maps_of(images)
        out: dict[str, list[Tensor]] = {name: [] for name in self.gaussians}
        device = next(iter(self.model.parameters())).device
        with torch.enable_grad(), torch.inference_mode(False):
            for i in range(0, images.shape[0], self.batch_size):
                x = images[i:i + self.batch_size].to(device).detach().clone()
                for name in self.gaussians:
                    x_ = x.clone().requires_grad_(True)
                    (g,) = torch.autograd.grad(self._layer(name, pool(self.model.feature_maps(x_))[name]).sum(), x_)
                    with torch.no_grad():
                        moved = (x - self.noise * g.sign()).clamp(0, 1)
                        out[name].append(pool(self.model.feature_maps(moved))[name].to("cpu", torch.float64))
        return {name: torch.cat(v) for name, v in out.items()}
