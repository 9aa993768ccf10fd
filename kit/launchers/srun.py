"""The ``srun`` launcher: ranks started by Slurm's srun inside an allocation.

Used directly inside ``salloc``/an interactive allocation, and by the ``slurm`` batch
launcher inside its job. Each rank is a child of slurmstepd with SLURM_PROCID /
SLURM_NTASKS / SLURM_LOCALID, which the rank wrapper in front of each rank's command maps
to RANK / WORLD_SIZE / LOCAL_RANK (:mod:`kit.rankexec`); the rendezvous (MASTER_ADDR = the first node, a free port there) is
exported here. ``--cpu-freq`` (kHz, the words ``kit.settings`` put in the plan) applies
the preset's frequency where the cluster allows it (Slurm needs cpufreq support on the node; otherwise it is ignored, and the kit
records the frequency it saw). Each rank's output goes to the launcher's stdout with a
``N:`` label, and srun reports a failing task as ``srun: error: NODE: task N: Exited with
exit code C``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from kit import rankexec
from kit.errors import KitError
from kit.launchers import Launcher, register
from kit.launchers.common import rendezvous

_TASK_FAIL = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (Exited with exit code (\d+)|Killed|Terminated|"
                        r"Segmentation fault|Aborted)")


def _task_ids(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


@register("srun")
class SrunLauncher(Launcher):
    def rank_argv(self, argv: list[str], *, python: str) -> list[str]:
        return rankexec.wrap(argv, python=python)  # torchrun's variables from the launcher's

    def validate(self, plan) -> None:
        if not shutil.which("srun"):
            raise KitError("srun was not found on PATH", where="--launcher srun",
                           fix="run inside a Slurm allocation on a cluster with Slurm, or use --launcher local")

    def command(self, plan, rank_argv: list[str], *, python: str, log_dir: Path) -> list[str]:
        addr, port = rendezvous(plan)
        argv = ["srun", "--nodes", str(plan.nodes), "--ntasks", str(plan.world_size),
                "--ntasks-per-node", str(plan.ranks_per_node), "--cpus-per-task", str(plan.threads_per_rank),
                "--kill-on-bad-exit=1", "--label",
                f"--export=ALL,MASTER_ADDR={addr},MASTER_PORT={port}", *self.setting_args(plan)]
        return [*argv, *rank_argv]

    def failures(self, log_text: str) -> dict[int, dict[str, object]]:
        out: dict[int, dict[str, object]] = {}
        for m in _TASK_FAIL.finditer(log_text):
            for t in _task_ids(m.group(2)):
                entry: dict[str, object] = {"srun_node": m.group(1)}
                if m.group(4) is not None:
                    entry["exit_code"] = int(m.group(4))
                else:
                    entry["signal"] = {"Killed": 9, "Terminated": 15, "Segmentation fault": 11, "Aborted": 6}[m.group(3)]
                out[t] = entry
        return out
