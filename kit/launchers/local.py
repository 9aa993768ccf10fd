"""The ``local`` launcher: ranks on this machine, started by torchrun.

torchrun (``python -m torch.distributed.run``) sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for
each rank, writes each rank's output to ``logs/torchrun/.../rank_N/`` and tees it to its
own stdout with a ``[defaultN]:`` prefix, which the kit follows. When one rank fails,
torchrun stops the others and reports each rank's exit code or signal.
"""

from __future__ import annotations

import re
from pathlib import Path

from kit.errors import KitError
from kit.launchers import Launcher, register
from kit.launchers.common import free_port

_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)")


@register("local")
class LocalLauncher(Launcher):
    inside_runtime = True

    def validate(self, plan) -> None:
        if plan.nodes != 1:
            raise KitError(f"the local launcher runs on one node, not {plan.nodes}", where="--nodes",
                           fix="use --launcher slurm or pjm for several nodes, or --nodes 1")

    def command(self, plan, rank_argv: list[str], *, python: str, log_dir: Path) -> list[str]:
        return [
            python, "-m", "torch.distributed.run",
            "--nnodes", "1", "--nproc-per-node", str(plan.ranks_per_node),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "--log-dir", str(log_dir / "torchrun"), "--redirects", "3", "--tee", "3",
            *self.setting_args(plan), "--no-python", *rank_argv,
        ]

    def failures(self, log_text: str) -> dict[int, dict[str, object]]:
        out: dict[int, dict[str, object]] = {}
        for m in _FAILURE.finditer(log_text):
            code = int(m.group(3))
            entry: dict[str, object] = {"local_rank": int(m.group(2)), "pid": int(m.group(4))}
            if code < 0:
                entry["signal"] = -code
            else:
                entry["exit_code"] = code
            out[int(m.group(1))] = entry
        return out
