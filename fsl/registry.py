"""One registry class for every kind of plug-in: models, attacks, detectors, analyses, manipulations.

A plug-in is one file that decorates its class or function with ``<REGISTRY>.register(name)``
(or the package's alias, e.g. ``@register_model``); importing the package registers its built-ins
first (:func:`fsl.plugins.import_modules`), so lookups import them on first use. Every registry
answers the same way:

* ``get(name)`` -> the registered object; an unknown name raises :class:`fsl.errors.ConfigError`
  with the closest registered name and the full list.
* ``defaults(name)`` -> a fresh dict of its parameters' defaults: those given to ``register``,
  else read on every call from the source (the keyword defaults of the object's signature, or a
  loader such as the analysis yaml files) — never a snapshot taken at import time.
* ``create(name, *args, **params)`` -> ``obj(*args, **{**defaults, **params})``; a parameter the
  object does not take raises ConfigError naming the closest valid one.
* ``names()`` in registration order (built-ins first); ``name in registry``; ``entry(name).meta``
  for what a kind records beside the object (an attack's norm, a manipulation's kind).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from fsl.errors import ConfigError

__all__ = ["Registry", "Entry", "closest"]


def closest(name, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``valid`` to ``name``, else ``"; valid: a, b, ..."``."""
    valid = sorted(str(v) for v in valid)
    match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else f"; valid: {', '.join(valid) or 'none'}"


@dataclass(frozen=True)
class Entry:
    """One registered plug-in: its ``name``, the registered ``obj`` (class or function), the
    ``defaults`` given at registration (None: read from the registry's source on every call) and
    kind-specific ``meta``."""

    name: str
    obj: Any
    defaults: dict | None = None
    meta: dict = field(default_factory=dict)


def signature_defaults(obj: Callable) -> dict:
    """The keyword parameters of ``obj`` (a class: its ``__init__``) that have a default value."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _accepted(obj: Callable) -> set[str] | None:
    """The keyword names ``obj`` accepts, or None when it takes ``**kwargs`` (anything)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class Registry:
    """A named collection of plug-ins of one ``kind``.

    Args:
        kind: what is registered, singular ("model", "attack", ...): used in every message.
        load: a package imported before the first lookup (its modules register the built-ins).
        base: when given, a registered object must be a subclass of it.
        defaults: where the defaults of an entry registered without explicit ones come from:
            ``"signature"`` (its keyword defaults) or a callable ``name -> dict`` (e.g. a yaml file).
        where: where a user finds the valid names and options, appended to errors
            (e.g. ``"configs/model/"``).
    """

    def __init__(self, kind: str, *, load: str | None = None, base: type | None = None,
                 defaults: str | Callable[[str], dict] = "signature", where: str = ""):
        self.kind = kind
        self._load = load
        self._loaded = load is None
        self._base = base
        self._defaults = defaults
        self._where = where
        self._entries: dict[str, Entry] = {}

    # -- registration -----------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, defaults: dict | None = None, **meta):
        """Register ``obj`` as ``name`` (or, without ``obj``, return a decorator that does). A second,
        different object under one name raises (two files claiming one name)."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} names are non-empty strings, got {name!r}")

        def deco(o):
            if self._base is not None and not (isinstance(o, type) and issubclass(o, self._base)):
                raise TypeError(f"register {self.kind} {name!r}: {o!r} is not a subclass of "
                                f"{self._base.__module__}.{self._base.__qualname__}")
            old = self._entries.get(name)
            if old is not None and old.obj is not o:
                raise ConfigError(f"{self.kind} {name!r} is registered twice ({old.obj!r} and {o!r}); "
                                  f"pick another name")
            self._entries[name] = Entry(name, o, None if defaults is None else dict(defaults), dict(meta))
            return o

        return deco if obj is None else deco(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and notebooks that register temporary plug-ins)."""
        self._entries.pop(name, None)

    # -- lookup -------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._load)

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; ConfigError with the closest name and the valid ones."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f" (see {self._where})" if self._where else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{closest(name, self._entries)}{where}") from None

    def get(self, name: str) -> Any:
        """The object registered as ``name``."""
        return self.entry(name).obj

    def defaults(self, name: str) -> dict:
        """A fresh dict of ``name``'s parameter defaults (see the class docstring)."""
        e = self.entry(name)
        if e.defaults is not None:
            return dict(e.defaults)
        if callable(self._defaults):
            return dict(self._defaults(name))
        return signature_defaults(e.obj)

    def check_params(self, name: str, params: Iterable[str], extra: Iterable[str] = (), context: str = "") -> None:
        """ConfigError naming the first of ``params`` that ``name`` does not take (``extra``: also valid),
        prefixed by ``context`` (e.g. the call that got them)."""
        e = self.entry(name)
        valid = set(self.defaults(name)) | set(extra)
        if e.defaults is None and not callable(self._defaults):
            accepted = _accepted(e.obj)
            if accepted is None:
                return
            valid |= accepted
        unknown = sorted(set(params) - valid)
        if unknown:
            where = f" ({self._where} lists them)" if self._where else ""
            prefix = f"{context}: " if context else ""
            raise ConfigError(f"{prefix}{self.kind} {name!r} has no option {unknown[0]!r}{closest(unknown[0], valid)}"
                              f"{where}")

    def create(self, name: str, *args, **params) -> Any:
        """``obj(*args, **{**defaults(name), **params})`` after checking ``params``' names."""
        self.check_params(name, params)
        return self.get(name)(*args, **{**self.defaults(name), **params})

    # -- collection ---------------------------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        self._ensure_loaded()
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((n, self._entries[n].obj) for n in self.names())

    def __contains__(self, name) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
