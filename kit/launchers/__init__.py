"""Launchers: how ranks are started, and by whom each machine setting is applied.

One module per launcher, registered by name (ReFrame-style), behind one interface:

- *direct* launchers start the ranks of a run from the current process and return the
  argv to run: ``local`` (torchrun), ``mpirun`` (OpenMPI / Fujitsu MPI), ``srun`` (inside a
  Slurm allocation);
- *batch* launchers write a job script that runs ``kit job-run`` on the allocated node(s),
  which then starts the ranks with the batch launcher's ``inner`` direct launcher:
  ``slurm`` (sbatch + srun) and ``pjm`` (pjsub + mpiexec).

Each launcher also says which preset settings it applies and how (``applies``): the
job manager owns frequency and retention state on PJM, ``--cpu-freq`` on Slurm; a
workstation applies neither, and the plan records that instead of pretending.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from kit.errors import KitError

if TYPE_CHECKING:  # pragma: no cover
    from kit.plan import Plan

_REGISTRY: dict[str, type["Launcher"]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


@dataclass
class JobState:
    """What a batch job is doing: pending, running, or ended (and how)."""
    state: str  # pending | running | completed | failed | cancelled | timeout | unknown
    ended: bool
    exit_code: int | None = None
    reason: str = ""


class Launcher(abc.ABC):
    name: ClassVar[str] = "?"
    batch: ClassVar[bool] = False
    #: for batch launchers: the direct launcher used inside the job
    inner: ClassVar[str | None] = None
    #: True when the launcher itself runs inside the image and starts the ranks there
    #: (torchrun); False when it starts each rank on the host (mpirun, srun, mpiexec), so
    #: the runtime wraps each rank: ``mpiexec … singularity exec IMAGE python -m …``.
    inside_runtime: ClassVar[bool] = False

    # -- settings -------------------------------------------------------------------------
    def applies(self, setting: str, value: object) -> str | None:
        """How this launcher applies ``setting`` (e.g. ``#PJM -L freq=2200``), or None if it cannot."""
        return None

    def validate(self, plan: "Plan") -> None:
        """Refuse plans this launcher cannot run (raise KitError)."""

    # -- direct launchers -----------------------------------------------------------------
    def command(self, plan: "Plan", rank_argv: list[str], *, python: str, log_dir: Path) -> list[str]:
        """argv that starts every rank of ``plan`` on this node (direct launchers only)."""
        raise NotImplementedError(f"{self.name} does not start ranks directly")

    def failures(self, log_text: str) -> dict[int, dict[str, object]]:
        """Per-rank exit codes/signals the launcher reported in its output, if any."""
        return {}

    def output(self, proc, log_dir: Path) -> Iterator[str]:
        """The ranks' output, line by line, as the kit follows it (default: the launcher's stdout).

        Fujitsu's ``mpiexec -std-proc`` writes each rank to its own file instead.
        """
        assert proc.stdout is not None
        yield from proc.stdout

    def cores_per_node(self) -> int | None:
        """Cores of one allocated node, where the launcher knows better than this host (PJM: 48)."""
        return None

    # -- batch launchers ------------------------------------------------------------------
    def render(self, plan: "Plan", bundle_dir: Path) -> str:
        raise NotImplementedError(f"{self.name} does not write job scripts")

    def submit(self, script: Path) -> str:
        raise NotImplementedError

    def poll(self, job_id: str) -> JobState:
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError


def _load_builtin() -> None:
    import importlib

    for mod in ("local", "mpirun", "srun", "slurm", "pjm"):
        try:
            importlib.import_module(f"kit.launchers.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"kit.launchers.{mod}":
                raise


def get(name: str) -> Launcher:
    _load_builtin()
    if name not in _REGISTRY:
        raise KitError(f"unknown launcher {name!r}", where="--launcher", fix=f"use one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)
