"""The model registry: ``@register_model(name)`` on a class or factory, ``create_model(name, **kwargs)``.

A model is one file: a :class:`fsl.models.base.FeatureClassifier` subclass decorated with
``@register_model("<name>")``, imported in ``fsl/models/__init__.py`` (see docs/extending.md). The
config ``configs/model/<name>.yaml`` holds ``name: <name>`` and its constructor's keyword arguments;
input shape, class count and normalisation come from the data module.

:data:`MODELS` is a :class:`fsl.registry.Registry`: an unknown name or constructor argument raises
:class:`fsl.errors.ConfigError` naming the closest valid one.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from fsl.registry import Registry

MODELS = Registry("model", load="fsl.models", where="configs/model/")

F = TypeVar("F", bound=Callable)


def register_model(name: str) -> Callable[[F], F]:
    """Class or factory decorator: ``create_model(name, **kwargs)`` calls it with ``kwargs``.

    A second registration of the same name raises (two files claiming one config name)."""
    return MODELS.register(name)


def create_model(name: str, **kwargs):
    """Build a registered model by name with its keyword defaults overridden by ``kwargs``; an unknown
    name or keyword raises ConfigError with the closest valid one."""
    return MODELS.create(name, **kwargs)
