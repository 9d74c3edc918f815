"""What the supervised multi-layer detectors (``lid``, ``mahalanobis_ml``) share: the model's feature
maps spatially mean-pooled, a float64 logistic regression, and their base class.

Both follow the protocol of their papers (Ma et al., arXiv 1801.02613; Lee et al., arXiv 1807.03888):
per layer one number per sample (its *layer features*), standardised, then a logistic regression
fitted on clean and noisy (label 0) against adversarial (label 1) examples of a fit split
(:meth:`SupervisedLayerDetector.fit_supervised`); the score is the regression's logit.
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import nn

from fsl.adversarial.detectors.registry import Detector, FitData

Tensor = torch.Tensor


def pool(maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{layer: (B, c)}``: spatial maps ``(B, c, H, W)`` mean-pooled over ``H, W``, vectors flattened."""
    return {k: v.mean(dim=(2, 3)) if v.dim() == 4 else v.flatten(1) for k, v in maps.items()}


@torch.no_grad()
def pooled_maps(model: nn.Module, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
    """:func:`pool` of ``model.feature_maps(images)`` (``(B, C, H, W)`` in [0, 1]) in batches, float64 CPU."""
    parts: dict[str, list[Tensor]] = {}
    device = next(iter(model.parameters())).device
    for i in range(0, images.shape[0], max(int(batch_size), 1)):
        for k, v in pool(model.feature_maps(images[i:i + batch_size].to(device))).items():
            parts.setdefault(k, []).append(v.detach().to("cpu", torch.float64))
    return {k: torch.cat(v) for k, v in parts.items()}


class LogisticRegression:
    """Binary logistic regression with an L2 penalty on the weights (not the intercept), fitted in
    float64 by L-BFGS: minimises ``0.5 ||w||^2 + C sum_i log(1 + exp(-t_i (w . z_i + b)))``,
    ``t_i = +-1``: scikit-learn's ``LogisticRegression(C=C)`` objective.

    Attributes (after :meth:`fit`): ``weight`` ``(d,)``, ``bias`` (a 0-d tensor), float64.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 500):
        self.C, self.max_iter = float(C), int(max_iter)

    def fit(self, z: Tensor, y: Tensor) -> "LogisticRegression":
        """``z`` ``(N, d)``, ``y`` ``(N,)`` in {0, 1} (both classes present)."""
        z = torch.as_tensor(z).detach().to("cpu", torch.float64)
        t = torch.as_tensor(y).detach().cpu().double() * 2 - 1
        if not (bool((t > 0).any()) and bool((t < 0).any())):
            raise ValueError("LogisticRegression.fit: need samples of both classes")
        params = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([params], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-10,
                                tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            w, b = params[:-1], params[-1]
            loss = 0.5 * (w * w).sum() + self.C * nn.functional.softplus(-t * (z @ w + b)).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = params[:-1].detach().clone(), params[-1].detach().clone()
        return self

    def decision(self, z: Tensor) -> Tensor:
        """``(B,)`` logit ``w . z + b`` (differentiable in ``z``; in ``z``'s dtype)."""
        return z @ self.weight.to(z.device, z.dtype) + self.bias.to(z.device, z.dtype)


class SupervisedLayerDetector(Detector):
    """Base of ``lid`` and ``mahalanobis_ml``: subclasses define :meth:`prepare` (fit what the layer
    features need on clean fit samples) and :meth:`layer_features` (``(B, L)``, higher = adversarial
    per layer, a differentiable torch function of the pooled maps).

    Without :meth:`fit_supervised` (:meth:`fit` alone, e.g. the registry's contract test) the detector
    is its one-layer version on the penultimate features, prepared on the training features, and
    its value is that layer feature (no regression)."""

    supervised: ClassVar[bool] = True
    #: reads the model's feature maps (evaluate_attack passes the images, the adaptive attack the maps)
    layers: ClassVar[bool] = True

    def __init__(self, C: float = 1.0):
        self.C = float(C)
        self.regression: LogisticRegression | None = None
        self.fit_info: dict = {}

    def prepare(self, maps: Mapping[str, Tensor], labels: Tensor) -> None:
        raise NotImplementedError

    def layer_features(self, maps: Mapping[str, Tensor], exclude_self: bool = False) -> Tensor:
        raise NotImplementedError

    def fit(self, data: FitData) -> "SupervisedLayerDetector":
        self.model, self.regression = None, None
        self.prepare({"features": data.train_features}, data.train_labels)
        return self

    def fit_supervised(self, model: nn.Module, clean: Tensor, noisy: Tensor, adv: Tensor, labels: Tensor,
                       batch_size: int = 256) -> "SupervisedLayerDetector":
        """Fit on the clean, noisy (label 0) and adversarial (label 1) images ``(B, C, H, W)`` of the fit
        split with the clean samples' ``labels`` ``(B,)``; nothing else is seen."""
        self.model, self.batch_size = model, int(batch_size)
        maps_clean = pooled_maps(model, clean, batch_size)
        self.prepare(maps_clean, torch.as_tensor(labels).cpu().long())
        z = torch.cat([self.layer_features(maps_clean, exclude_self=True),
                       self.layer_features(pooled_maps(model, noisy, batch_size)),
                       self.layer_features(pooled_maps(model, adv, batch_size))])
        y = torch.cat([torch.zeros(len(clean) + len(noisy)), torch.ones(len(adv))])
        self.mean, self.std = z.mean(dim=0), z.std(dim=0).clamp_min(1e-12)
        self.regression = LogisticRegression(self.C).fit((z - self.mean) / self.std, y)
        self.fit_info = {"n_fit": int(len(clean)), "layers": list(maps_clean)}
        return self

    def _score(self, z: Tensor) -> Tensor:
        if self.regression is None:
            return z[:, 0]
        return self.regression.decision((z - self.mean.to(z.device, z.dtype)) / self.std.to(z.device, z.dtype))

    def value(self, features, logits, margin, hull):
        if self.regression is not None:
            raise ValueError(f"detector {self.name!r} was fitted on feature maps: score it with value_images "
                             f"(fsl.adversarial.evaluate_attack passes the images)")
        return self._score(self.layer_features({"features": features.to("cpu", torch.float64)}))

    def value_images(self, images: Tensor, features: Tensor, logits: Tensor) -> Tensor:
        """``(B,)`` float64 score of ``images`` (the regression's logit after :meth:`fit_supervised`)."""
        if self.regression is None:
            return self.value(features, logits, None, None)
        return self._score(self.layer_features(self.maps_of(images))).to("cpu", torch.float64)

    def maps_of(self, images: Tensor) -> dict[str, Tensor]:
        """The pooled maps the detector scores (subclasses may preprocess the input first)."""
        return pooled_maps(self.model, images, self.batch_size)

    def torch_score(self, features, logits, maps=None):
        """The score itself on ``maps`` (the model's feature maps of the attacked images, passed by the
        adaptive attack; without input preprocessing): a torch function of them."""
        if self.regression is None:
            maps = {"features": features}
        return self._score(self.layer_features(pool(maps)))
