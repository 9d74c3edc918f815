"""Per-solver options of :func:`fsl.inversion.invert_to_features` (docs/inversion.md).

One small frozen dataclass per ``method``, as ``scipy.optimize.minimize`` takes ``options``:

* ``"lm"`` (default): :class:`LMOptions` -- continuation Levenberg-Marquardt (:mod:`fsl.inversion.lm`),
  with its restarts from a pool of images (:class:`PoolOptions`) and its ``"al+sqp"`` fallback
  (:class:`ALSQPOptions`);
* ``"al+sqp"``: :class:`ALSQPOptions` -- augmented Lagrangian, then SQP (:mod:`fsl.inversion.al`);
* ``"sqp"``: :class:`SQPOptions` -- two-phase SQP (:mod:`fsl.inversion.sqp`);
* ``"al"``: :class:`ALOptions` -- augmented Lagrangian with projected Adam (:mod:`fsl.inversion.al`).

``options`` may be the dataclass or a plain dict of its fields (the fields left out keep their
defaults); an unknown key raises :class:`fsl.errors.ConfigError` naming the closest valid one.
The nested ``LMOptions.pool`` and ``LMOptions.fallback`` take a dict of their fields too.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch

from fsl.errors import ConfigError
from fsl.registry import closest


@dataclass(frozen=True)
class SQPOptions:
    """``method="sqp"``: the two-phase SQP from the references (:func:`fsl.inversion.sqp.solve_sqp`).

    Attributes:
        max_iter: outer iterations (one Jacobian of the constraint each).
        mu_rel: relative Levenberg-Marquardt regularisation of ``J J^T`` (float64 solve).
        step_tol: a feasible sample stops when ``||dt|| <= step_tol ||x - x_r||`` (stationary).
    """

    max_iter: int = 60
    mu_rel: float = 1e-6
    step_tol: float = 1e-4


@dataclass(frozen=True)
class ALOptions:
    """``method="al"``: augmented Lagrangian with a projected Adam inner solver, then Gauss-Newton
    feasibility steps (:func:`fsl.inversion.al.solve_al`).

    Attributes:
        max_iter: outer (multiplier) iterations.
        inner_steps: projected Adam steps per outer iteration.
        lr: Adam learning rate.
        mu0: initial penalty weight ``mu`` (multiplied by 4 when ``||c||`` stalls).
        polish: Gauss-Newton feasibility steps (distance-blind) for the samples still infeasible.
        mu_rel: relative Levenberg-Marquardt regularisation of those steps.
    """

    max_iter: int = 30
    inner_steps: int = 40
    lr: float = 0.01
    mu0: float = 1.0
    polish: int = 20
    mu_rel: float = 1e-6


@dataclass(frozen=True)
class ALSQPOptions:
    """``method="al+sqp"`` (and the fallback of ``"lm"``): ``al_iter`` augmented-Lagrangian iterations
    (no feasibility polish), then ``max_iter`` SQP iterations (:func:`fsl.inversion.al.solve_al_sqp`).

    Attributes:
        al_iter: outer iterations of the augmented-Lagrangian phase.
        inner_steps, lr, mu0: its projected Adam steps per outer iteration, learning rate and
            initial penalty weight (as in :class:`ALOptions`).
        max_iter: iterations of the SQP phase.
        mu_rel, step_tol: of the SQP phase (as in :class:`SQPOptions`).
    """

    al_iter: int = 15
    inner_steps: int = 40
    lr: float = 0.01
    mu0: float = 1.0
    max_iter: int = 60
    mu_rel: float = 1e-6
    step_tol: float = 1e-4

    @property
    def al(self) -> ALOptions:
        """The augmented-Lagrangian phase as :class:`ALOptions` (``polish=0``)."""
        return ALOptions(max_iter=self.al_iter, inner_steps=self.inner_steps, lr=self.lr, mu0=self.mu0, polish=0,
                         mu_rel=self.mu_rel)

    @property
    def sqp(self) -> SQPOptions:
        """The SQP phase as :class:`SQPOptions`."""
        return SQPOptions(max_iter=self.max_iter, mu_rel=self.mu_rel, step_tol=self.step_tol)


@dataclass(frozen=True, eq=False)
class PoolOptions:
    """Restarts of ``method="lm"`` from a pool of images (:func:`fsl.inversion.lm.pool_restarts`).

    A point target the path misses from the reference is tracked again from the ``k`` pool images
    with the nearest features, each followed by ``polish`` SQP iterations towards the reference;
    the closest hit is kept (``InversionResult.extra["pool"]``). Point mode only.

    Attributes:
        images: (N, C, H, W) images in [0, 1] (e.g. training images).
        features: their (N, f) features, computed when None.
        k: pool images tried per missed target.
        polish: SQP iterations after each restart.
    """

    images: torch.Tensor
    features: torch.Tensor | None = None
    k: int = 3
    polish: int = 10


@dataclass(frozen=True)
class LMOptions:
    """``method="lm"`` (default): continuation Levenberg-Marquardt along the feature segment
    (:func:`fsl.inversion.lm.solve_lm`, :func:`fsl.inversion.continuation.continuation_lm`).

    Attributes:
        max_iter: trial points per sample (each one forward pass).
        max_jac: exact Jacobians per sample.
        broyden: how J is kept between exact Jacobians: False (exact after every accepted step),
            True (Broyden's rank-one updates), "chord" (frozen until a step is rejected).
        polish: SQP iterations after the path that decrease ``||x - x_r||`` on the constraint.
        mu_rel, step_tol: of those SQP iterations and of the pool restarts' (as in :class:`SQPOptions`).
        pool: restarts from a pool of images: :class:`PoolOptions`, a dict of its fields, or the
            (N, C, H, W) images alone; None (default): no restarts. Before the fallback.
        fallback: the samples still outside ``tol`` are solved again by "al+sqp" from the
            reference with these :class:`ALSQPOptions` (or a dict of its fields) and the better
            answer kept (``InversionResult.extra["fallback"]``); None (or False): no fallback, True:
            the default ``ALSQPOptions()``.
    """

    max_iter: int = 80
    max_jac: int = 80
    broyden: bool | str = False
    polish: int = 0
    mu_rel: float = 1e-6
    step_tol: float = 1e-4
    pool: PoolOptions | None = None
    fallback: ALSQPOptions | None = ALSQPOptions()

    def __post_init__(self):
        if isinstance(self.pool, torch.Tensor):
            object.__setattr__(self, "pool", PoolOptions(images=self.pool))
        elif self.pool is not None:
            object.__setattr__(self, "pool", as_options(PoolOptions, self.pool, "LMOptions pool"))
        if isinstance(self.fallback, bool):
            object.__setattr__(self, "fallback", ALSQPOptions() if self.fallback else None)
        elif self.fallback is not None:
            object.__setattr__(self, "fallback", as_options(ALSQPOptions, self.fallback, "LMOptions fallback"))


OPTIONS: dict[str, type] = {"lm": LMOptions, "al+sqp": ALSQPOptions, "sqp": SQPOptions, "al": ALOptions}


def as_options(cls: type, value: Any, where: str):
    """``value`` as an instance of the options dataclass ``cls``: None gives the defaults, a dict its
    fields (the others keep their defaults). ConfigError for an unknown key (naming the closest
    valid one), a missing required field or another type."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = [f.name for f in fields(cls)]
        for key in value:
            if key not in names:
                raise ConfigError(f"{where}: unknown option {key!r} of {cls.__name__}{closest(key, names)}")
        missing = [f.name for f in fields(cls)
                   if f.name not in value and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ConfigError(f"{where}: {cls.__name__} needs {', '.join(repr(n) for n in missing)}")
        return cls(**value)
    raise ConfigError(f"{where}: expected {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def options_for(method: str, options: Any):
    """The options dataclass of ``method`` (one of :data:`OPTIONS`) from ``options`` (None, the
    dataclass or a dict of its fields); ConfigError naming the expected class otherwise."""
    cls = OPTIONS[method]
    if options is not None and not isinstance(options, (cls, Mapping)):
        raise ConfigError(f"invert_to_features options: method {method!r} takes {cls.__name__} or a dict of its "
                          f"fields, got {type(options).__name__}")
    return as_options(cls, options, f"invert_to_features options (method {method!r})")


__all__ = ["SQPOptions", "ALOptions", "ALSQPOptions", "PoolOptions", "LMOptions", "OPTIONS", "as_options",
           "options_for"]
