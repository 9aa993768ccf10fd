"""Runtimes: where the pinned command runs (the host, or inside an image).

A runtime wraps the launcher's argv and environment and reports what it is for the
provenance. Each runtime is one module registered by name:

- ``host``: the command as it is.
- ``podman`` / ``docker``: ``podman run`` of an OCI image (kit.runtimes.oci).
- ``singularity`` / ``apptainer``: ``singularity exec`` of a SIF (kit.runtimes.singularity).
"""

from __future__ import annotations

from typing import Any

from kit.runtimes.base import _REGISTRY, Runtime

__all__ = ["Runtime", "get", "names"]


def get(name: str, image: str | None = None, **options: Any) -> Runtime:
    """The runtime ``name`` for ``image`` (KitError naming --runtime and the valid names when unknown)."""
    return _REGISTRY.get(name, image=image, **options)


names = _REGISTRY.names
