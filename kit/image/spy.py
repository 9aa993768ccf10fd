"""Singularity/Apptainer command lines, as plain argv lists built in one place.

``singularity build --force [options] IMAGE RECIPE`` and ``singularity exec [options]
IMAGE CMD...``: exactly the command lines spython's ``Client.build`` / ``Client.execute``
compose (tests/test_image_recipe.py checks each against spython's), without running them
through spython, which would both compose and run them: the kit runs the command itself,
under its own launcher and monitor, and records it. The binary is the engine found on PATH
(``apptainer`` or ``singularity``; SingularityPRO installs as ``singularity``).
"""

from __future__ import annotations

import shutil

from kit.engines import SIF_ENGINES
from kit.errors import KitError


def find_engine(preferred: str | None = None) -> str:
    """The Singularity-family binary to use, or a KitError that says what to install."""
    names = (preferred,) if preferred else SIF_ENGINES
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    raise KitError(
        f"no {' or '.join(names)} binary on PATH",
        where="singularity engine",
        fix=("install Apptainer/SingularityCE (on Fugaku: SingularityPRO, /usr/bin/singularity on the compute "
             "nodes), or use --engine podman / --runtime podman"),
    )


def build_argv(engine_path: str, *, recipe: str, image: str, options: list[str]) -> list[str]:
    """``singularity build --force [options] IMAGE RECIPE``."""
    return [engine_path, "build", "--force", *options, image, recipe]


def exec_argv(engine_path: str, *, image: str, command: list[str], options: list[str]) -> list[str]:
    """``singularity exec [options] IMAGE CMD...``; binds go in ``options`` as ``--bind SRC:DST``."""
    return [engine_path, "exec", *options, image, *command]
