"""Singularity/Apptainer command lines, composed by spython's client.

spython's ``Client.build`` / ``Client.execute`` both compose and run a command; the kit
needs the command itself (to run it under its own launcher and monitor, and to record it),
so it asks spython's client to compose it with the run step captured. spython always
names the binary ``singularity``; the kit puts the engine it found (``apptainer`` or
``singularity``) in its place.
"""

from __future__ import annotations

import shutil
from typing import Any

from kit.errors import KitError

SIF_ENGINES = ("apptainer", "singularity")


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
        fix=("install Apptainer/SingularityCE (on Fugaku: SingularityPRO, `module load singularity`), "
             "or use --engine podman / --runtime podman"),
    )


def _capture(method: str, engine_path: str, **kwargs: Any) -> list[str]:
    import spython.utils
    from spython.main import get_client

    client = get_client(quiet=True)
    captured: list[list[str]] = []

    def run_command(cmd, *args, **kw):
        captured.append(list(cmd))
        return {"return_code": 0, "message": ""}

    client._run_command = run_command  # type: ignore[attr-defined]
    saved = spython.utils.check_install
    spython.utils.check_install = lambda *a, **k: True  # the engine was found by find_engine
    try:
        getattr(client, method)(**kwargs)
    finally:
        spython.utils.check_install = saved
    if not captured:
        raise KitError(f"spython composed no {method} command", where="singularity engine")
    cmd = captured[0]
    if cmd[0] != "singularity":
        raise KitError(f"spython composed an unexpected command {cmd[:2]}", where="singularity engine")
    return [engine_path, *cmd[1:]]


def build_argv(engine_path: str, *, recipe: str, image: str, options: list[str]) -> list[str]:
    """``singularity build [options] IMAGE RECIPE`` as spython's ``Client.build`` composes it."""
    return _capture("build", engine_path, recipe=recipe, image=image, sudo=False, force=True,
                    options=list(options), quiet=True)


def exec_argv(engine_path: str, *, image: str, command: list[str], options: list[str]) -> list[str]:
    """``singularity exec [options] IMAGE CMD...`` as spython's ``Client.execute`` composes it.

    Binds go in ``options`` as ``--bind SRC:DST`` (spython's own ``bind=`` argument exits the
    process when a host path is missing; the kit checks paths itself).
    """
    return _capture("execute", engine_path, image=image, command=list(command), options=list(options), quiet=True)
