"""Runtimes: where the pinned command runs (the host, or inside an image).

A runtime wraps the launcher's argv and environment and reports what it is for the
provenance. Each runtime is one module registered by name:

- ``host``: the command as it is.
- ``podman`` / ``docker``: ``podman run`` of an OCI image (kit.runtimes.oci).
- ``singularity`` / ``apptainer``: ``singularity exec`` of a SIF (kit.runtimes.singularity).
"""

from __future__ import annotations

import importlib
from typing import Any

from kit.errors import KitError
from kit.runtimes.base import _REGISTRY, Runtime

__all__ = ["Runtime", "get", "names"]


def _load_builtin() -> None:
    """Import the built-in runtimes (each registers itself in kit.runtimes.base)."""
    for mod in ("host", "oci", "singularity"):
        importlib.import_module(f"kit.runtimes.{mod}")


def get(name: str, image: str | None = None, **options: Any) -> Runtime:
    _load_builtin()
    if name not in _REGISTRY:
        raise KitError(f"unknown runtime {name!r}", where="--runtime",
                       fix=f"use one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](image=image, **options)


def names() -> list[str]:
    get("host")
    return sorted(_REGISTRY)
