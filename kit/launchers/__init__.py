"""Launchers: how the ranks of a run are started on the node(s) the kit runs on.

One module per launcher, registered by name (ReFrame's ``JobLauncher``): ``local``
(torchrun), ``mpirun`` (OpenMPI, or Fujitsu MPI's ``mpiexec`` inside a PJM job), ``srun``
(inside a Slurm allocation). A launcher builds the rank command, follows the ranks'
output and reads per-rank failures from it; it knows nothing of job scripts (those are
``kit.schedulers``) nor of presets (``kit.settings`` decides what each launcher applies
and hands it the exact words in the plan's settings). What launchers and schedulers share
lives in ``kit.launchers.common``; no launcher imports another.
"""

from __future__ import annotations

import abc
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from kit.registry import Registry

_REGISTRY: Registry["Launcher"] = Registry("launcher", "--launcher",
                                           ("kit.launchers.local", "kit.launchers.mpirun", "kit.launchers.srun"))
register = _REGISTRY.register
get = _REGISTRY.get
names = _REGISTRY.names


class Launcher(abc.ABC):
    name: ClassVar[str] = "?"
    #: True when the launcher itself runs inside the image and starts the ranks there
    #: (torchrun); False when it starts each rank on the host (mpirun, srun, mpiexec), so
    #: the runtime wraps each rank: ``mpiexec … singularity exec IMAGE python -m …``.
    inside_runtime: ClassVar[bool] = False

    def validate(self, plan: Any) -> None:
        """Refuse plans this launcher cannot run (raise KitError)."""

    def cores_per_node(self) -> int | None:
        """Cores of one node, where the launcher knows better than this host (none do today)."""
        return None

    def rank_argv(self, argv: list[str], *, python: str) -> list[str]:
        """Each rank's command as this launcher starts it: as is where the launcher sets
        torchrun's variables itself (torchrun); mpirun/srun put the rank wrapper in front."""
        return argv

    @abc.abstractmethod
    def command(self, plan: Any, rank_argv: list[str], *, python: str, log_dir: Path) -> list[str]:
        """argv that starts every rank of ``plan`` on this node."""

    def setting_args(self, plan: Any) -> list[str]:
        """The argv words of the settings this launcher applies (``kit.settings``), verbatim,
        except the layout ones, which ``command`` writes from the plan's layout."""
        return [w for s in plan.settings if s.by == self.name and not s.layout for w in shlex.split(s.applied_by)]

    def failures(self, log_text: str) -> dict[int, dict[str, object]]:
        """Per-rank exit codes/signals the launcher reported in its output, if any."""
        return {}

    def output(self, proc, log_dir: Path) -> Iterator[str]:
        """The ranks' output, line by line, as the kit follows it (default: the launcher's stdout).

        Fujitsu's ``mpiexec -std-proc`` writes each rank to its own file instead.
        """
        assert proc.stdout is not None
        yield from proc.stdout
