"""The ``pjm`` scheduler: a Fugaku job script for ``pjsub``.

On Fugaku the job manager, not the process, sets the CPU frequency, the eco and retention
states and the ranks per node, so they go into the script the way Fugaku users write them:

    #PJM -L "node=1"
    #PJM -L "rscgrp=small"
    #PJM -L "elapse=01:00:00"
    #PJM -L "freq=2200,eco_state=0,retention_state=0"
    #PJM --mpi "proc=4"
    #PJM --mpi "max-proc-per-node=4"
    #PJM -x OMP_NUM_THREADS=12
    #PJM -j
    #PJM -S

``OMP_NUM_THREADS`` follows the ranks per node (48 cores / K unless the preset says
otherwise). ``retention_state=1`` is refused above 9216 nodes (the job manager forces it
to 0 there). Inside the job, ``kit job-run`` starts the ranks with Fujitsu MPI's
``mpiexec -std-proc`` (one output file per rank; the exact line is written into the script
as a comment), watches them, checks the frequency it sees against the one requested, and
finalizes the bundle. ``pjsub`` prints the job id; ``pjstat`` (and ``pjstat -H`` for ended
jobs) give its state (``unknown`` and ended when neither lists the job; ``unknown`` and not
ended when either fails), the statistics file (``-S``, written next to the job's output in
the bundle's logs) the exit code and the job manager's reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from kit import bundle_reader
from kit.bundle_reader import BundleReadError
from kit.errors import KitError
from kit.launchers.common import flavour, kit_command, mpiexec_argv
from kit.launchers.mpirun import MpirunLauncher
from kit.schedulers import JobState, Scheduler, failure_line, register, run_command

A64FX_CORES = 48  # compute cores per node (4 CMGs of 12)
RETENTION_MAX_NODES = 9216
SMALL_MAX_NODES = 384  # Fugaku's "small" resource group; above it "large"

_JOB_ID = r"[0-9]+(?:\[[0-9]+\])?"  # a job, or a bulk job's sub-job (ID[N]); ASCII digits only
_SUBMITTED = re.compile(r"Job\s+(\S+)\s+submitted")  # the id is checked against _JOB_ID
_FUGAKU_FIX = "run on a Fugaku login node"
# pjstat ST column
_STATES = {"ACC": "pending", "QUE": "pending", "RNA": "pending", "HLD": "pending", "SPD": "pending",
           "RSM": "pending", "SPP": "running", "RUN": "running", "RNO": "running", "RNE": "running",
           "RNP": "running", "EXT": "completed", "CCL": "cancelled", "ERR": "failed", "RJT": "failed"}
_ENDED = {"completed", "cancelled", "failed", "timeout"}


def _quote_block(argv: list[str], indent: str = "#   ") -> list[str]:
    """argv as shell words, wrapped at option boundaries, as comment lines."""
    words = [shlex.quote(a) for a in argv]
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + len(w) > 88 and w.startswith("-"):
            lines.append(cur + " \\")
            cur = "  "
        cur = f"{cur} {w}" if cur.strip() else f"{cur}{w}"
    lines.append(cur)
    return [indent + ln for ln in lines]


@register("pjm")
class PjmScheduler(Scheduler):
    launcher = "mpirun"  # Fujitsu MPI flavour inside the job (PJM_JOBID is set)
    job_id_pattern = re.compile(_JOB_ID)

    def cores_per_node(self) -> int | None:
        return A64FX_CORES

    def job_python(self, plan) -> tuple[str, str | None]:
        """The Python the job starts the kit with (the site's, else this one), and why it
        cannot run on the compute nodes (None when it can, as far as the site says)."""
        site = plan.site
        if site and site.job_python:
            return site.job_python, None
        return sys.executable, site.job_python_problem(sys.executable) if site else None

    def validate(self, plan) -> None:
        if plan.setting("retention_state").requested == 1 and plan.nodes > RETENTION_MAX_NODES:
            raise KitError(f"retention_state=1 with {plan.nodes} nodes: the job manager forces retention_state=0 "
                           f"above {RETENTION_MAX_NODES} nodes, so the run would not be what the preset says",
                           where=f"preset {plan.preset.name} + --nodes {plan.nodes}",
                           fix="use a preset with retention_state: 0 (e.g. noretention, tuned) or fewer nodes")
        if plan.ranks_per_node > A64FX_CORES:
            raise KitError(f"{plan.ranks_per_node} ranks per node exceed the {A64FX_CORES} cores of an A64FX node",
                           where=f"preset {plan.preset.name}", fix="use at most 48 ranks per node (4: one per CMG)")

    def render(self, plan, bundle_dir: Path, *, warnings: Sequence[str] = ()) -> str:
        bundle_dir = Path(bundle_dir)
        job = plan.job
        logs = bundle_dir / "logs"
        site = plan.site
        rscgrp = job.queue or ("small" if plan.nodes <= SMALL_MAX_NODES else "large")
        rscunit = f"rscunit={site.rscunit}," if site and site.rscunit else ""
        name = f"kit-{plan.recipe_name}-{plan.preset.name}"[:63]
        lines = ["#!/bin/bash -x",
                 f"#PJM -N {shlex.quote(name)}",
                 f'#PJM -L "node={plan.nodes}"',
                 f'#PJM -L "{rscunit}rscgrp={rscgrp}"',
                 f'#PJM -L "elapse={job.time_limit}"']
        directives = self.directives(plan)  # kit.settings: the power line, max-proc-per-node
        lines += [d for d in directives if d.startswith("#PJM -L")]
        lines.append(f'#PJM --mpi "proc={plan.world_size}"')
        lines += [d for d in directives if not d.startswith("#PJM -L")]
        if job.account:
            lines.append(f"#PJM -g {job.account}")
        for opt in job.llio:
            lines.append(f"#PJM --llio {opt}")
        exported = {k: v for k, v in sorted(plan.env.items()) if k != "LD_PRELOAD"}
        if site and site.volumes:  # the volumes the job reads, cached by LLIO
            exported["PJM_LLIO_GFSCACHE"] = ":".join(site.volumes)
        for k, v in exported.items():
            lines.append(f"#PJM -x {k}={v}")
        lines += ["#PJM -j",
                  "#PJM -S",
                  f"#PJM -o {logs}/pjm.%j.out",
                  f"#PJM --spath {logs}/pjm.%j.stats",
                  "",
                  f"# Written by kit for bundle {bundle_dir.name}: recipe {plan.recipe_name}, preset {plan.preset.name},",
                  f"# DP {plan.dp} x TP {plan.recipe.parallel.tp} x PP {plan.recipe.parallel.pp} = {plan.world_size} "
                  f"rank(s), {plan.ranks_per_node} per node on {plan.nodes} node(s), "
                  f"{plan.threads_per_rank} thread(s) per rank.",
                  ]
        python, problem = self.job_python(plan)
        lines += [f"# WARNING {w}" for w in [*warnings, *([f"(submission refused): {problem}"] if problem else [])]]
        lines += self.setting_comments(plan)
        if "LD_PRELOAD" in plan.env:
            lines.append(f"# LD_PRELOAD={plan.env['LD_PRELOAD']} is set for the ranks only (not this shell).")
        ranks = MpirunLauncher().rank_argv(plan.rank_argv, python=plan.python)  # each behind the rank wrapper
        lines += ["# kit job-run starts the ranks with Fujitsu MPI, one output file per rank:",
                  *_quote_block(mpiexec_argv(plan, ranks, logs, port="<free port>",
                                               addr=f"<{site.interface} address of the master node>" if site and site.interface
                                               else "<first node>")),
                  "# then watches every rank, checks the frequency it sees against the one requested above,",
                  "# and writes the bundle (job id, node list, PJM_* variables, this script), whatever happens.",
                  "",
                  f"cd {shlex.quote(str(Path.cwd()))}",
                  kit_command(python, bundle_dir),
                  ""]
        return "\n".join(lines)

    def submit(self, script: Path) -> str:
        if not shutil.which("pjsub"):
            raise KitError("pjsub was not found: the pjm launcher submits to Fujitsu's job manager (Fugaku)",
                           where="--launcher pjm",
                           fix="run on a Fugaku login node, or add --dry-run to print the job script")
        r = run_command(["pjsub", str(script)], timeout=120, where=str(script), fix=_FUGAKU_FIX)
        m = _SUBMITTED.search(r.stdout + r.stderr)
        if r.returncode != 0 or not m:
            raise KitError(f"pjsub refused the job: {(r.stderr or r.stdout).strip()}", where=str(script),
                           fix="check rscgrp (--queue), elapse (--time), the group (--account) and node count")
        # checked as a bundle's job id is, so that the bundle never records one the kit refuses later
        return self.check_job_id(m.group(1), where=f"pjsub {script}",
                                 fix="pjsub printed no job id; if it queued a job anyway, find it with pjstat "
                                     "and cancel it with pjdel")

    def poll(self, job_id: str) -> JobState:
        unanswered = []
        for argv in (["pjstat", job_id], ["pjstat", "-H", job_id]):
            r = run_command(argv, timeout=60, where=f"job {job_id}", fix=_FUGAKU_FIX)
            st = parse_pjstat(r.stdout, job_id)
            if st:
                kit_state = _STATES.get(st, "unknown")
                return JobState(kit_state, kit_state in _ENDED, reason=f"PJM state {st}")
            if r.returncode != 0:
                unanswered.append(f"{' '.join(argv[:-1])}: {failure_line(r)}")
        if unanswered:  # the job manager did not answer: the job may still be queued or running
            return JobState("unknown", False, reason=f"could not ask PJM about job {job_id}: {'; '.join(unanswered)}")
        return JobState("unknown", True, reason=f"pjstat no longer lists job {job_id}")

    def cancel(self, job_id: str) -> None:
        r = run_command(["pjdel", job_id], timeout=60, where=f"job {job_id}", fix=_FUGAKU_FIX)
        if r.returncode != 0:
            raise KitError(f"pjdel {job_id} failed: {(r.stderr or r.stdout).strip()}", where=f"job {job_id}")

    def stats(self, bundle_dir: Path) -> dict[str, str]:
        """The ``-S`` statistics file(s) in the bundle's logs."""
        out: dict[str, str] = {}
        for p in sorted((Path(bundle_dir) / "logs").glob("pjm.*.stats")):
            try:  # through the reader's door: a regular file of the bundle, capped
                out.update(parse_stats(bundle_reader.read_text(Path(bundle_dir), f"logs/{p.name}", cap=1 << 20)))
            except BundleReadError:
                continue
        return out

    def node_monitor_argv(self, plan, monitor_argv: list[str]) -> list[str] | None:
        if flavour() != "openmpi":
            # Fujitsu MPI: a second mpiexec with one process per node needs a --vcoordfile
            # listing each node once; not verified on Fugaku yet, so only the head node is watched.
            return None
        return ["mpirun", *(["--allow-run-as-root"] if os.geteuid() == 0 else []), "-np", str(plan.nodes),
                "--map-by", "ppr:1:node", "--bind-to", "none", *monitor_argv]


def parse_pjstat(text: str, job_id: str) -> str | None:
    """The ST column of ``job_id``'s row in pjstat's table, or None."""
    header: list[str] | None = None
    for line in text.splitlines():
        cols = line.split()
        if not cols:
            continue
        if "JOB_ID" in cols and "ST" in cols:
            header = cols
            continue
        if header and cols[0] == job_id and len(cols) > header.index("ST"):
            return cols[header.index("ST")]
    return None


def parse_stats(text: str) -> dict[str, str]:
    """``KEY : value`` lines of the PJM statistics file (``-S``): EXIT CODE, PJM CODE, REASON, ..."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            k = k.strip().upper()
            if k and k not in out:
                out[k] = v.strip()
    return out
