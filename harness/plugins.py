"""Registries that find their entries: the object a module of a package defines under one
attribute (``DATASET``, ``TASK``), added to a name -> object table.

A registry imports its implementations (it walks the package once); an implementation never
imports its registry. ``add`` is also how a plug-in or a test's toy entry joins, under the same
check: a second, different object under a taken name is refused.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")


def add(table: dict[str, T], name: str, entry: T, kind: str) -> T:
    """``table[name] = entry``; a different entry already under ``name`` is refused."""
    if table.get(name, entry) is not entry:
        raise ValueError(f"{kind} {name!r} is registered twice")
    table[name] = entry
    return entry


def discover(package: ModuleType, attribute: str, cls: type[T]) -> list[T]:
    """Every ``module.<attribute>`` that is a ``cls``, over the package's modules in name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        entry = getattr(module, attribute, None)
        if isinstance(entry, cls):
            found.append(entry)
    return found
