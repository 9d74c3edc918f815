"""The model registry: ``@register_model(name)`` on a class or factory, ``create_model(name, **kwargs)``.

A model is one file: a :class:`fsl.models.base.FeatureClassifier` subclass decorated with
``@register_model("<name>")``, imported in ``fsl/models/__init__.py`` (see docs/extending.md). The
config ``configs/model/<name>.yaml`` holds ``name: <name>`` and its constructor's keyword arguments;
input shape, class count and normalisation come from the data module.
"""
from __future__ import annotations

from typing import Callable, TypeVar

MODELS: dict[str, Callable] = {}

F = TypeVar("F", bound=Callable)


def register_model(name: str) -> Callable[[F], F]:
    """Class or factory decorator: ``create_model(name, **kwargs)`` calls it with ``kwargs``.

    A second registration of the same name raises (two files claiming one config name)."""
    def deco(factory: F) -> F:
        if name in MODELS and MODELS[name] is not factory:
            raise ValueError(f"model {name!r} is registered twice ({MODELS[name]} and {factory}); pick another name")
        MODELS[name] = factory
        return factory

    return deco


def create_model(name: str, **kwargs):
    """Build a registered model by name; unknown names raise with the list of valid ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)
