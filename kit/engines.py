"""Container engines: which exist, in the kit's order of preference, and the first on PATH.

Singularity-family engines (SIF images) come first where installed, as on HPC systems;
OCI engines (podman, docker) otherwise.
"""

from __future__ import annotations

import shutil

SIF_ENGINES = ("apptainer", "singularity")
OCI_ENGINES = ("podman", "docker")
ENGINES = (*SIF_ENGINES, *OCI_ENGINES)


def first_on_path(names: tuple[str, ...] = ENGINES) -> str | None:
    """The first of ``names`` found on PATH, or None."""
    return next((n for n in names if shutil.which(n)), None)
