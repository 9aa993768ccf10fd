"""Schedulers: batch systems that run the kit inside a job (ReFrame's ``JobScheduler``).

One module per scheduler, registered by name: ``slurm`` (sbatch, squeue/scontrol/sacct,
scancel) and ``pjm`` (Fujitsu's pjsub, pjstat, pjdel on Fugaku). A scheduler renders the
job script, submits it, polls and cancels the job, reads the job manager's statistics, and
names the launcher that starts the ranks inside the job (``launcher``: ``srun`` or
``mpirun``, from ``kit.launchers``) and how to start one node monitor per further node.

The job script emits, verbatim, the directive of every setting the plan says this
scheduler applies (``kit.settings`` writes them); warnings to put in the script (e.g. the
known-bad combinations a ``--force`` run matches) are handed in by the caller.
"""

from __future__ import annotations

import abc
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kit.errors import KitError
from kit.registry import Registry

_REGISTRY: Registry["Scheduler"] = Registry("scheduler", "--launcher", ("kit.schedulers.slurm", "kit.schedulers.pjm"))
register = _REGISTRY.register
get = _REGISTRY.get
names = _REGISTRY.names


@dataclass
class JobState:
    """What a batch job is doing: pending, running, or ended (and how).

    ``unknown`` is either of two things, told apart by ``ended``: the job manager answered but
    no longer lists the job (``ended`` True: it is neither queued nor running, how it ended is
    not known), or it could not be asked (``ended`` False: its commands failed, e.g. the
    controller is down; the job may still be running). ``reason`` says which.
    """
    state: str  # pending | running | completed | failed | cancelled | timeout | unknown
    ended: bool
    exit_code: int | None = None
    reason: str = ""

    @property
    def known_ended(self) -> bool:
        """Ended, in a state the job manager named (completed, failed, cancelled, timeout)."""
        return self.ended and self.state != "unknown"


def run_command(argv: list[str], *, timeout: float, where: str, fix: str) -> subprocess.CompletedProcess:
    """Run one of the job manager's commands (sbatch, squeue, pjstat, pjdel, ...), its output
    captured. A KitError, one line naming the command, when it is not on PATH (with ``fix``) or
    does not answer within ``timeout`` seconds."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise KitError(f"{argv[0]} was not found on PATH", where=where, fix=fix) from None
    except subprocess.TimeoutExpired:
        raise KitError(f"`{shlex.join(argv)}` did not answer within {timeout:g} s", where=where,
                       fix="the job manager may be down or overloaded: try again later") from None


def failure_line(r: subprocess.CompletedProcess) -> str:
    """What a job manager's command that failed said: the first line of its error output, or its exit code."""
    return ((r.stderr or r.stdout).strip().splitlines() or [f"exit code {r.returncode}"])[0]


class Scheduler(abc.ABC):
    name: ClassVar[str] = "?"
    #: the launcher (kit.launchers) that starts the ranks inside the job
    launcher: ClassVar[str] = "?"
    #: what this scheduler's job ids look like; a job id read from a bundle is checked against
    #: it (``check_job_id``) before it reaches a command, and so is the id a submission returns.
    #: ASCII digits ([0-9]): ``\d`` would also take other scripts' digits ('١٢٣')
    job_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"[0-9]+")

    def check_job_id(self, job_id: str, where: str,
                     fix: str = "the bundle's job record is damaged; see `kit bundle verify`") -> str:
        """``job_id`` when it is one of this scheduler's job ids, else a KitError naming ``where``."""
        if not self.job_id_pattern.fullmatch(job_id):
            raise KitError(f"{job_id!r} is not a {self.name} job id", where=where, fix=fix)
        return job_id

    def validate(self, plan: Any) -> None:
        """Refuse plans this scheduler cannot run (raise KitError)."""

    def cores_per_node(self) -> int | None:
        """Cores of one allocated node, where the scheduler knows (PJM: 48; Slurm: sinfo)."""
        return None

    def job_python(self, plan: Any) -> tuple[str, str | None]:
        """The Python the job script starts the kit with, and why it cannot run in the job
        (None: it can). Default: the one running now (a shared file system, one architecture)."""
        return sys.executable, None

    def check_job_python(self, plan: Any) -> None:
        """Refuse to submit a script whose interpreter cannot run on the compute nodes."""
        python, problem = self.job_python(plan)
        if problem:
            raise KitError(problem, where=f"site {plan.site.name if plan.site else '-'}",
                           fix="set job_python in the site file to a Python with the kit on the compute nodes "
                               "(e.g. a venv made on a compute node)")

    def directives(self, plan: Any) -> list[str]:
        """The script lines of the settings this scheduler applies, as ``kit.settings`` wrote them."""
        out: list[str] = []
        for s in plan.settings:
            if s.by == self.name and s.applied_by not in out:
                out.append(s.applied_by)
        return out

    def setting_comments(self, plan: Any) -> list[str]:
        """A comment per directive: the settings it carries (``NAME=VALUE``) and how they are
        applied, so the script states every setting the run carries (the allocator too)."""
        groups: dict[str, list[str]] = {}
        for s in plan.settings:
            if s.status == "not-requested":
                continue
            how = s.applied_by if s.status == "applied" else f"not applied: {s.note}"
            groups.setdefault(how, []).append(f"{s.name}={s.requested}")
        return [f"# setting {', '.join(names)}: {how}" for how, names in groups.items()]

    @abc.abstractmethod
    def render(self, plan: Any, bundle_dir: Path, *, warnings: Sequence[str] = ()) -> str:
        """The job script that runs ``kit job-run`` on ``bundle_dir``."""

    @abc.abstractmethod
    def submit(self, script: Path) -> str:
        """Submit ``script``; the job id."""

    @abc.abstractmethod
    def poll(self, job_id: str) -> JobState: ...

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Ask the job manager to cancel the job (KitError when it refuses)."""

    def stats(self, bundle_dir: Path) -> dict[str, str]:
        """What the job manager's statistics files in the bundle's logs say (``KEY: value``)."""
        return {}

    def node_monitor_argv(self, plan: Any, monitor_argv: list[str]) -> list[str] | None:
        """argv that runs ``monitor_argv`` once on every node of the job, or None if it cannot."""
        return None


def of_allocation(environ: dict[str, str] | None = None) -> Scheduler | None:
    """The scheduler whose allocation this process runs in (``salloc``, a PJM job), or None."""
    import os

    env = os.environ if environ is None else environ
    name = "slurm" if env.get("SLURM_JOB_ID") else "pjm" if env.get("PJM_JOBID") else None
    return get(name) if name else None
