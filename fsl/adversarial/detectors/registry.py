"""The detector registry: ``@register_detector(name, defaults=...)`` on a :class:`Detector` subclass.

A detector is one file (see docs/extending.md): it is fitted once on the clean training features,
records one value per sample (a per-sample column ``clean_<name>`` / ``adv_<name>`` of
:func:`fsl.adversarial.evaluate_attack`) and turns it into a score, **higher = more likely
adversarial**. Every registered detector is scored for every attack (AUROC, AUPR, FPR@95%TPR,
TPR@5%FPR with bootstrap intervals: ``adv/<attack>/<metric>/<detector>``) and gets a column in
the report's tables.

:data:`DETECTORS` is a :class:`fsl.registry.Registry`: ``DETECTORS.names()`` in registration order
(the built-ins first, in the order of :mod:`fsl.adversarial.detectors`), ``DETECTORS.get(name)``
(the class), ``DETECTORS.defaults(name)`` (a fresh dict of its constructor parameters).

A detector that defines :meth:`Detector.torch_score` (its score, or a differentiable surrogate, as a
torch function of the features and logits) gets an adaptive attack ``adaptive_<name>`` without new
code (:mod:`fsl.adversarial.methods.adaptive_detector`); :func:`require_torch_score` refuses one
without it, naming the method to add.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from fsl.registry import Registry

Tensor = torch.Tensor


@dataclass
class FitData:
    """What a detector is fitted on.

    Attributes:
        train_features: ``(N, f)`` clean training features, float64 on the CPU.
        train_labels: ``(N,)`` long.
        weight, bias: the linear head, ``(n, f)`` and ``(n,)`` float64 on the CPU.
        num_classes: ``n``.
    """

    train_features: Tensor
    train_labels: Tensor
    weight: Tensor
    bias: Tensor
    num_classes: int


class Detector:
    """Base class. Subclasses set their parameters in ``__init__(**params)`` (the registered
    ``defaults`` overridden by ``Detectors.fit(params={name: {...}})``), may override :meth:`fit`
    and :meth:`score`, and define :meth:`value`."""

    name: ClassVar[str] = ""
    #: True when a *small* value is suspicious (a margin, a probability): ``score = -value``
    negate: ClassVar[bool] = False
    #: the per-sample columns :meth:`score` reads (empty: its own value, ``name``)
    needs: ClassVar[tuple[str, ...]] = ()

    def fit(self, data: FitData) -> "Detector":
        return self

    def value(self, features: Tensor, logits: Tensor, margin: Tensor, hull: Tensor) -> Tensor:
        """``(B,)`` float64 per-sample value of ``features`` ``(B, f)``, ``logits`` ``(B, n)``, margins
        ``d_min`` ``(B,)`` and hull distances ``d_h`` ``(B,)`` (CPU float64)."""
        raise NotImplementedError

    def score(self, columns: Mapping[str, Tensor]) -> Tensor:
        """``(B,)`` detection score, higher = adversarial, from one kind's per-sample columns
        (``margin``, ``hull`` and every detector's value under its name); by default this detector's
        own value, negated when ``negate``. A function of the columns alone (no fitted state)."""
        value = columns[self.name]
        return -value if self.negate else value

    def torch_score(self, features: Tensor, logits: Tensor) -> Tensor:
        """``(B,)`` differentiable score (higher = adversarial) of ``features`` ``(B, f)`` and their
        ``logits`` ``(B, n)``, in their dtype and on their device, for the adaptive attack
        ``adaptive_<name>`` (:mod:`fsl.adversarial.methods.adaptive_detector`): the detector's own
        score where it is a torch function of the features, else a differentiable surrogate that
        tracks it (documented by the subclass). A detector without it gets no adaptive attack."""
        raise NotImplementedError


def has_torch_score(detector: "Detector | type") -> bool:
    """Whether a detector (class or instance) defines :meth:`Detector.torch_score`."""
    cls = detector if isinstance(detector, type) else type(detector)
    return cls.torch_score is not Detector.torch_score


def require_torch_score(name: str) -> type:
    """The registered class of detector ``name`` if it has a differentiable score (an adaptive
    attack can be built for it); ConfigError naming what to add otherwise."""
    from fsl.errors import ConfigError

    cls = DETECTORS.get(name)
    if not has_torch_score(cls):
        raise ConfigError(
            f"detector {name!r} has no differentiable score, so it gets no adaptive attack 'adaptive_{name}': define "
            f"`torch_score(self, features, logits)` on {cls.__qualname__} (a torch function of the (B, f) features "
            f"and (B, n) logits, higher = adversarial: its score, or a differentiable surrogate of it), or leave it "
            f"out of the adversarial analysis' `adaptive.detectors`")
    return cls


DETECTORS = Registry("detector", load="fsl.adversarial.detectors", base=Detector,
                     where="fsl/adversarial/detectors/")


def register_detector(name: str, defaults: dict | None = None):
    """Class decorator registering a :class:`Detector` subclass as ``name`` with constructor
    ``defaults`` (the only parameters :func:`build_detector` accepts) and setting ``cls.name``."""
    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise TypeError(f"register_detector({name!r}): {cls!r} is not a fsl.adversarial.detectors.Detector subclass")
        DETECTORS.register(name, cls, defaults=dict(defaults or {}))
        cls.name = name
        return cls

    return deco


def build_detector(name: str, **params) -> Detector:
    """An unfitted detector ``name`` with its defaults overridden by ``params``; ConfigError naming
    the closest registered name for an unknown ``name``, the closest parameter for an unknown key."""
    return DETECTORS.create(name, **params)
