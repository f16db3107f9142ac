"""One registry of calibrators by short name, as timm has for models: ``make_calibrator("ts")``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

__all__ = ["list_calibrators", "make_calibrator", "register_calibrator"]

_REGISTRY: dict[str, Callable] = {}
_ALIASES: dict[str, str] = {}


def register_calibrator(name: str, *aliases: str):
    """Class decorator: register a :class:`~segcal_lib.calibrators.base.Calibrator` under ``name`` (and aliases)."""

    def wrap(cls):
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"calibrator name {key!r} is already registered")
        _REGISTRY[name] = cls
        _ALIASES.update({a: name for a in aliases})
        cls.registry_name = name
        return cls

    return wrap


def list_calibrators(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (aliases not listed), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def make_calibrator(name: str, **options):
    """Create an unfitted calibrator by name; ``options`` override its defaults (see each class's docstring).

    >>> make_calibrator("ts").registry_name
    'ts'
    """
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown calibrator {name!r}; choose one of {list_calibrators()} "
                         f"(aliases: {sorted(_ALIASES)})")
    return _REGISTRY[key](**options)
