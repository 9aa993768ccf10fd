"""The ``slurm`` scheduler: an sbatch script that runs ``kit job-run`` in the allocation.

The script asks Slurm for the plan's nodes, time limit and partition, and writes the
directives of the settings Slurm applies as ``kit.settings`` made them: ranks per node
(``--ntasks-per-node``), cores per rank (``--cpus-per-task``), the preset's frequency
(``--cpu-freq`` in kHz, which applies to every srun step in the job); inside the job,
``kit job-run`` starts the ranks with ``srun`` (the ``srun`` launcher), watches them and
finalizes the bundle. The job's own output goes to
``logs/slurm-<jobid>.out`` in the bundle.

``submit`` is ``sbatch --parsable``; ``poll`` asks ``squeue`` while the job is known to
it, then ``scontrol show job`` (kept for MinJobAge seconds), then ``sacct`` where
accounting is enabled. A job none of them lists is ``unknown`` and ended; when squeue or
scontrol get no answer (the controller is down) it is ``unknown`` and not ended.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kit.errors import KitError
from kit.launchers.common import kit_command
from kit.schedulers import JobState, Scheduler, failure_line, register, run_command

# Slurm job states -> the kit's
_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "RESV_DEL_HOLD": "pending",
    "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "RESIZING": "running",
    "COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled", "TIMEOUT": "timeout",
    "NODE_FAIL": "failed", "PREEMPTED": "cancelled", "BOOT_FAIL": "failed", "DEADLINE": "timeout",
    "OUT_OF_MEMORY": "failed", "REVOKED": "cancelled", "SPECIAL_EXIT": "failed",
}
_ENDED = {"completed", "failed", "cancelled", "timeout"}


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return run_command(argv, timeout=timeout, where="--launcher slurm",
                       fix="run on a Slurm login node (sbatch, squeue, scontrol on PATH)")


def _no_answer(r: subprocess.CompletedProcess) -> str | None:
    """Why a squeue/scontrol query got no answer about the job (None: it got one, if only
    that the controller does not know the job id)."""
    if r.returncode == 0 or "Invalid job id" in r.stderr:
        return None
    return f"{r.args[0]}: {failure_line(r)}"


def _down_nodes(nodelist: str) -> str:
    """``; node(s) down: n2 (Not responding)``: which of a failed job's nodes Slurm holds down."""
    if not nodelist or nodelist == "(null)":
        return ""
    r = _run(["sinfo", "-h", "-N", "-n", nodelist, "-o", "%N|%t|%E"])
    down = []
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        node, state, why = (line.split("|") + ["", ""])[:3]
        if re.match(r"(down|drain|drng|fail|unk)", state):
            down.append(node + (f" ({why})" if why and why != "none" else ""))
    return f"; node(s) down: {', '.join(dict.fromkeys(down))}" if down else ""


@register("slurm")
class SlurmScheduler(Scheduler):
    launcher = "srun"
    job_id_pattern = re.compile(r"[0-9]+(?:[_+][0-9]+)?")  # a job, an array task (ID_N), a het. component (ID+N)

    def cores_per_node(self) -> int | None:
        """CPUs per node of the default (or $SBATCH_PARTITION) partition, from sinfo."""
        if not shutil.which("sinfo"):
            return None
        argv = ["sinfo", "-h", "-o", "%c"]
        if os.environ.get("SBATCH_PARTITION"):
            argv += ["-p", os.environ["SBATCH_PARTITION"]]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        values = [int(x.rstrip("+")) for x in out.stdout.split() if x.rstrip("+").isdigit()]
        return min(values) if out.returncode == 0 and values else None

    def render(self, plan, bundle_dir: Path, *, warnings: Sequence[str] = ()) -> str:
        bundle_dir = Path(bundle_dir)
        job = plan.job
        name = f"kit-{plan.recipe_name}-{plan.preset.name}"[:60]
        lines = ["#!/bin/bash",
                 f"#SBATCH --job-name={name}",
                 f"#SBATCH --nodes={plan.nodes}",
                 *self.directives(plan),
                 f"#SBATCH --time={job.time_limit}",
                 # a bundle records one run: a job requeued after a node failure would run again into it
                 "#SBATCH --no-requeue"]
        if job.queue:
            lines.append(f"#SBATCH --partition={job.queue}")
        if job.account:
            lines.append(f"#SBATCH --account={job.account}")
        lines += [f"#SBATCH --output={bundle_dir / 'logs'}/slurm-%j.out",
                  f"#SBATCH --chdir={Path.cwd()}",
                  "",
                  f"# Written by kit for bundle {bundle_dir.name}: recipe {plan.recipe_name}, preset {plan.preset.name},",
                  f"# DP {plan.dp} x TP {plan.recipe.parallel.tp} x PP {plan.recipe.parallel.pp} = {plan.world_size} ranks"
                  f" on {plan.nodes} node(s).",
                  "# kit job-run starts the ranks with srun, watches every rank on every node and writes the",
                  "# bundle (metrics, provenance with the job id, node list and SLURM_* variables), whatever happens.",
                  f"# Set for the ranks by the kit: {', '.join(f'{k}={v}' for k, v in sorted(plan.env.items()))}",
                  *(f"# WARNING {w}" for w in warnings),
                  *self.setting_comments(plan),
                  "",
                  f"exec {kit_command(self.job_python(plan)[0], bundle_dir)}",
                  ""]
        return "\n".join(lines)

    def submit(self, script: Path) -> str:
        r = _run(["sbatch", "--parsable", str(script)])
        if r.returncode != 0:
            raise KitError(f"sbatch refused the job: {(r.stderr or r.stdout).strip()}", where=str(script),
                           fix="check the partition (--queue), time limit (--time) and node count")
        # checked as a bundle's job id is, so that the bundle never records one the kit refuses later
        return self.check_job_id(r.stdout.strip().split(";")[0], where=f"sbatch --parsable {script}",
                                 fix="sbatch printed no job id; if it queued a job anyway, find it with squeue "
                                     "and cancel it with scancel")

    def poll(self, job_id: str) -> JobState:
        r = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
        unanswered = [_no_answer(r)]
        if r.returncode == 0 and r.stdout.strip():
            state, _, reason = r.stdout.strip().splitlines()[0].partition("|")
            kit_state = _STATES.get(state.split()[0], "unknown")
            if kit_state not in _ENDED:
                return JobState(kit_state, False, reason="" if reason in ("None", "") else reason)
        r = _run(["scontrol", "show", "job", "-o", job_id])
        unanswered.append(_no_answer(r))
        if r.returncode == 0 and "JobState=" in r.stdout:
            fields = dict(re.findall(r"(\w+)=(\S*)", r.stdout))
            state = fields.get("JobState", "")
            kit_state = _STATES.get(state, "unknown")
            code = fields.get("ExitCode", "")
            exit_code, sig = (int(x) for x in code.split(":")) if re.fullmatch(r"\d+:\d+", code) else (None, 0)
            reason = fields.get("Reason", "")
            why = state + (f" (reason {reason})" if reason and reason != "None" else "") + \
                (f", exit code {exit_code}" if exit_code is not None else "") + (f", signal {sig}" if sig else "")
            if state == "NODE_FAIL":
                why += _down_nodes(fields.get("NodeList", ""))
            return JobState(kit_state, kit_state in _ENDED, exit_code=exit_code, reason=why)
        if shutil.which("sacct"):  # its failure is no sign: without accounting it always fails
            r = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Reason"])
            if r.returncode == 0 and r.stdout.strip():
                state, code, reason = (r.stdout.strip().splitlines()[0].split("|") + ["", ""])[:3]
                kit_state = _STATES.get(state.split()[0], "unknown")
                exit_code = int(code.split(":")[0]) if code.split(":")[0].isdigit() else None
                return JobState(kit_state, kit_state in _ENDED, exit_code=exit_code,
                                reason=f"{state}" + (f" ({reason})" if reason and reason != "None" else ""))
        why = "; ".join(w for w in unanswered if w)
        if why:  # the controller did not answer: the job may still be queued or running
            return JobState("unknown", False, reason=f"could not ask Slurm about job {job_id}: {why}")
        return JobState("unknown", True, reason=f"Slurm no longer knows job {job_id} (squeue, scontrol, sacct)")

    def cancel(self, job_id: str) -> None:
        r = _run(["scancel", job_id])
        if r.returncode != 0:
            raise KitError(f"scancel {job_id} failed: {(r.stderr or r.stdout).strip()}", where=f"job {job_id}")

    def node_monitor_argv(self, plan, monitor_argv: list[str]) -> list[str] | None:
        return ["srun", "--overlap", "--nodes", str(plan.nodes), "--ntasks", str(plan.nodes), "--ntasks-per-node", "1",
                "--cpus-per-task", "1", "--cpu-bind=none", *monitor_argv]

