"""The ``pjm`` batch launcher: a Fugaku job script for ``pjsub``.

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
jobs) give its state, the statistics file (``-S``, written next to the job's output in
the bundle's logs) the exit code and the job manager's reason.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from kit.errors import KitError
from kit.launchers import JobState, Launcher, register
from kit.launchers.mpirun import KIT_VARS
from kit.launchers.slurm import kit_command

A64FX_CORES = 48  # compute cores per node (4 CMGs of 12)
RETENTION_MAX_NODES = 9216
SMALL_MAX_NODES = 384  # Fugaku's "small" resource group; above it "large"

_SUBMITTED = re.compile(r"Job\s+(\d+(?:\[\d+\])?)\s+submitted")
# pjstat ST column
_STATES = {"ACC": "pending", "QUE": "pending", "RNA": "pending", "HLD": "pending", "SPD": "pending",
           "RSM": "pending", "SPP": "running", "RUN": "running", "RNO": "running", "RNE": "running",
           "RNP": "running", "EXT": "completed", "CCL": "cancelled", "ERR": "failed", "RJT": "failed"}
_ENDED = {"completed", "cancelled", "failed", "timeout"}


def power_line(plan) -> str | None:
    """The one ``-L`` line with the preset's power knobs, e.g. ``freq=2200,eco_state=0,retention_state=0``."""
    parts = []
    for key, name in (("freq_mhz", "freq"), ("eco_state", "eco_state"), ("retention_state", "retention_state")):
        v = plan.setting(key).requested
        if v is not None:
            parts.append(f"{name}={v}")
    return ",".join(parts) or None


def mpiexec_argv(plan, rank_argv: list[str], log_dir: Path, *, addr: str, port: str | int) -> list[str]:
    """Fujitsu MPI's mpiexec line: one output file per rank (``-std-proc``), the kit's variables."""
    argv = ["mpiexec", "-np", str(plan.world_size), "-std-proc", str(log_dir / "stdproc" / "out")]
    for n in [*sorted(plan.env), *KIT_VARS]:
        argv += ["-x", n]
    argv += ["-x", f"MASTER_ADDR={addr}", "-x", f"MASTER_PORT={port}"]
    return [*argv, *rank_argv]


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
class PjmLauncher(Launcher):
    batch = True
    inner = "mpirun"  # Fujitsu MPI flavour inside the job (PJM_JOBID is set)

    def applies(self, setting: str, value: object) -> str | None:
        if setting == "freq_mhz":
            return f'#PJM -L "freq={value}"'
        if setting == "eco_state":
            return f'#PJM -L "eco_state={value}"'
        if setting == "retention_state":
            return f'#PJM -L "retention_state={value}"'
        if setting == "ranks_per_node":
            return f'#PJM --mpi "max-proc-per-node={value}"'
        return None

    def cores_per_node(self) -> int | None:
        return A64FX_CORES

    def validate(self, plan) -> None:
        if plan.setting("retention_state").requested == 1 and plan.nodes > RETENTION_MAX_NODES:
            raise KitError(f"retention_state=1 with {plan.nodes} nodes: the job manager forces retention_state=0 "
                           f"above {RETENTION_MAX_NODES} nodes, so the run would not be what the preset says",
                           where=f"preset {plan.preset.name} + --nodes {plan.nodes}",
                           fix="use a preset with retention_state: 0 (e.g. noretention, tuned) or fewer nodes")
        if plan.ranks_per_node > A64FX_CORES:
            raise KitError(f"{plan.ranks_per_node} ranks per node exceed the {A64FX_CORES} cores of an A64FX node",
                           where=f"preset {plan.preset.name}", fix="use at most 48 ranks per node (4: one per CMG)")

    def render(self, plan, bundle_dir: Path) -> str:
        bundle_dir = Path(bundle_dir)
        job = plan.job
        logs = bundle_dir / "logs"
        rscgrp = job.queue or ("small" if plan.nodes <= SMALL_MAX_NODES else "large")
        name = f"kit-{plan.recipe_name}-{plan.preset.name}"[:63]
        lines = ["#!/bin/bash -x",
                 f"#PJM -N {shlex.quote(name)}",
                 f'#PJM -L "node={plan.nodes}"',
                 f'#PJM -L "rscgrp={rscgrp}"',
                 f'#PJM -L "elapse={job.time_limit}"']
        power = power_line(plan)
        if power:
            lines.append(f'#PJM -L "{power}"')
        lines += [f'#PJM --mpi "proc={plan.world_size}"',
                  f'#PJM --mpi "max-proc-per-node={plan.ranks_per_node}"']
        if job.account:
            lines.append(f"#PJM -g {job.account}")
        for opt in job.llio:
            lines.append(f"#PJM --llio {opt}")
        exported = {k: v for k, v in sorted(plan.env.items()) if k != "LD_PRELOAD"}
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
        from kit import known_bad

        for kb in known_bad.check(plan):
            lines.append(f"# WARNING (known bad, submitted with --force only): {kb.what}: {kb.seen}.")
        if "LD_PRELOAD" in plan.env:
            lines.append(f"# LD_PRELOAD={plan.env['LD_PRELOAD']} is set for the ranks only (not this shell).")
        lines += ["# kit job-run starts the ranks with Fujitsu MPI, one output file per rank:",
                  *_quote_block(mpiexec_argv(plan, plan.rank_argv, logs, addr="<first node>", port="<free port>")),
                  "# then watches every rank, checks the frequency it sees against the one requested above,",
                  "# and writes the bundle (job id, node list, PJM_* variables, this script), whatever happens.",
                  "",
                  f"cd {shlex.quote(str(Path.cwd()))}",
                  kit_command(sys.executable, bundle_dir),
                  ""]
        return "\n".join(lines)

    def submit(self, script: Path) -> str:
        if not shutil.which("pjsub"):
            raise KitError("pjsub was not found: the pjm launcher submits to Fujitsu's job manager (Fugaku)",
                           where="--launcher pjm",
                           fix="run on a Fugaku login node, or add --dry-run to print the job script")
        r = subprocess.run(["pjsub", str(script)], capture_output=True, text=True, timeout=120)
        m = _SUBMITTED.search(r.stdout + r.stderr)
        if r.returncode != 0 or not m:
            raise KitError(f"pjsub refused the job: {(r.stderr or r.stdout).strip()}", where=str(script),
                           fix="check rscgrp (--queue), elapse (--time), the group (--account) and node count")
        return m.group(1)

    def poll(self, job_id: str) -> JobState:
        for argv in (["pjstat", job_id], ["pjstat", "-H", job_id]):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            except FileNotFoundError as e:
                raise KitError("pjstat was not found", where=f"job {job_id}", fix="run on a Fugaku login node") from e
            st = parse_pjstat(r.stdout, job_id)
            if st:
                kit_state = _STATES.get(st, "unknown")
                return JobState(kit_state, kit_state in _ENDED, reason=f"PJM state {st}")
        return JobState("unknown", True, reason=f"pjstat no longer lists job {job_id}")

    def cancel(self, job_id: str) -> None:
        r = subprocess.run(["pjdel", job_id], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise KitError(f"pjdel {job_id} failed: {(r.stderr or r.stdout).strip()}", where=f"job {job_id}")


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
