"""A registry of implementations by name: the schedulers, launchers and runtimes each keep one.

A package makes a ``Registry`` naming what it holds (``scheduler``), the command-line option
that picks one (``--launcher``) and the modules of its built-in implementations; each of
those modules registers its class with ``@registry.register("name", ...)``. ``get`` imports
the built-ins on first use and makes an instance; an unknown name is a ``KitError`` (one line,
exit 2) naming the option and the valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from kit.errors import KitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one kind, by name, with their built-in modules loaded on demand."""

    def __init__(self, kind: str, option: str, builtin: Sequence[str]):
        self.kind = kind
        self.option = option
        self.builtin = tuple(builtin)
        self._classes: dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[type], type]:
        """Class decorator: register the class under each of ``names``; the first becomes its ``name``."""
        def deco(cls: type) -> type:
            cls.name = names[0]
            for name in names:
                self._classes[name] = cls
            return cls
        return deco

    def _load_builtin(self) -> None:
        for module in self.builtin:
            importlib.import_module(module)

    def names(self) -> list[str]:
        self._load_builtin()
        return sorted(self._classes)

    def get(self, name: str, *args: Any, **kwargs: Any) -> T:
        """A new instance of the implementation registered as ``name`` (arguments passed on)."""
        self._load_builtin()
        if name not in self._classes:
            raise KitError(f"unknown {self.kind} {name!r}", where=self.option, fix=f"use one of: {', '.join(self.names())}")
        return self._classes[name](*args, **kwargs)
