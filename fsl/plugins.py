"""Registration by file: importing a package's modules registers what they decorate."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Sequence


def import_modules(package: str, first: Sequence[str] = ()) -> None:
    """Import ``package.<m>`` for the modules ``first`` (in that order: the registration order of the
    built-ins), then every other module of the package, sorted by name (one new file = one new entry)."""
    pkg = importlib.import_module(package)
    others = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    for name in [*first, *[m for m in others if m not in first]]:
        importlib.import_module(f"{package}.{name}")
