"""The ``mpirun`` launcher: ranks started by MPI's launcher, OpenMPI's or Fujitsu MPI's.

Both flavours start the pinned command once per rank; the ranks find who they are from the
MPI launcher's variables (``OMPI_COMM_WORLD_*``; under PJM also ``PMIX_RANK``,
``PLE_RANK_ON_NODE``, ``PJM_MPI_PROC``), mapped to torchrun's RANK/WORLD_SIZE/LOCAL_RANK/...
by the rank wrapper in front of each rank's command (:mod:`kit.rankexec`).
MASTER_ADDR/MASTER_PORT (torch.distributed's rendezvous on gloo) are set here
(``kit.launchers.common.rendezvous``): the first node of the allocation (127.0.0.1 on one
node) and a port free on this node, which is the node where rank 0 starts.

- OpenMPI: ``mpirun -np W --map-by ppr:K:node --bind-to none --output-filename
  logs/mpirun -x VAR ...``. OpenMPI 4 writes each rank's output under
  ``logs/mpirun/1/rank.N/`` and also to its own stdout, which the kit follows. Variables
  reach remote nodes only through ``-x``, so every variable the kit sets is listed.
- Fujitsu MPI (inside a PJM job: ``PJM_JOBID`` set, or ``KIT_MPI=fujitsu``): ``mpiexec -np
  W -std-proc logs/stdproc/out -x VAR ...`` (Open MPI's ``-x NAME`` form: the value the kit
  set); the ranks per node come from the job's
  ``--mpi max-proc-per-node``. ``-std-proc`` sends each rank's output to its own file
  (``out.1.<rank>``) instead of mpiexec's stdout, so the kit follows those files.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kit import rankexec
from kit.errors import KitError
from kit.launchers import Launcher, register
from kit.launchers.common import KIT_VARS, flavour, mpiexec_argv, rendezvous

_OMPI_FAIL = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*\n\s*Exit code:\s*(-?\d+)")
_OMPI_SIGNAL = re.compile(r"rank (\d+) with PID (\d+) on node \S+ exited on signal (\d+)")
_FJ_FAIL = re.compile(r"rank\s*[=:]?\s*(\d+).{0,80}?(?:exit(?:ed)?(?: with)?(?: status| code)?)\s*[=:]?\s*(-?\d+)", re.I)


@register("mpirun")
class MpirunLauncher(Launcher):
    def rank_argv(self, argv: list[str], *, python: str) -> list[str]:
        return rankexec.wrap(argv, python=python)  # torchrun's variables from the launcher's

    def validate(self, plan) -> None:
        exe = "mpiexec" if flavour() == "fujitsu" else "mpirun"
        if not shutil.which(exe):
            raise KitError(f"{exe} was not found on PATH", where="--launcher mpirun",
                           fix="install OpenMPI (Debian: apt-get install openmpi-bin) or load the MPI module")

    def command(self, plan, rank_argv: list[str], *, python: str, log_dir: Path) -> list[str]:
        addr, port = rendezvous(plan)
        names = [*sorted(plan.env), *KIT_VARS]
        if flavour() == "fujitsu":
            (log_dir / "stdproc").mkdir(parents=True, exist_ok=True)
            return mpiexec_argv(plan, rank_argv, log_dir, addr=addr, port=port)
        argv = ["mpirun"]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        argv += ["-np", str(plan.world_size), "--map-by", f"ppr:{plan.ranks_per_node}:node", "--bind-to", "none",
                 "--output-filename", str(log_dir / "mpirun"), *self.setting_args(plan)]
        for n in names:
            argv += ["-x", n]
        argv += ["-x", f"MASTER_ADDR={addr}", "-x", f"MASTER_PORT={port}"]
        return [*argv, *rank_argv]

    def output(self, proc: subprocess.Popen, log_dir: Path) -> Iterator[str]:
        if not (log_dir / "stdproc").is_dir():
            yield from super().output(proc, log_dir)
            return
        yield from follow_files(proc, log_dir / "stdproc")

    def failures(self, log_text: str) -> dict[int, dict[str, object]]:
        out: dict[int, dict[str, object]] = {}
        for m in _OMPI_FAIL.finditer(log_text):
            out[int(m.group(1))] = {"exit_code": int(m.group(2))}
        for m in _OMPI_SIGNAL.finditer(log_text):
            out[int(m.group(1))] = {"signal": int(m.group(3)), "pid": int(m.group(2))}
        if not out:
            for m in _FJ_FAIL.finditer(log_text):
                code = int(m.group(2))
                if code:
                    out.setdefault(int(m.group(1)), {"exit_code": code})
        return out


def follow_files(proc: subprocess.Popen, directory: Path, *, poll_s: float = 0.2) -> Iterator[str]:
    """The launcher's stdout and every per-rank file in ``directory``, line by line, until it exits.

    Lines from the files carry a ``[rank]`` prefix taken from the file name's last number.
    """
    q: queue.Queue[str | None] = queue.Queue()

    def read_stdout():
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    def tail():
        offsets: dict[Path, int] = {}
        partial: dict[Path, str] = {}

        def sweep():
            for f in sorted(directory.rglob("*")):  # -std-proc may split ranks into directories
                if not f.is_file():
                    continue
                try:
                    with f.open("r", errors="replace") as fh:
                        fh.seek(offsets.get(f, 0))
                        data = fh.read()
                        offsets[f] = fh.tell()
                except OSError:
                    continue
                if not data:
                    continue
                text = partial.pop(f, "") + data
                lines = text.split("\n")
                if lines[-1]:
                    partial[f] = lines[-1]
                m = re.search(r"(\d+)$", f.name)
                tag = f"[{m.group(1)}] " if m else f"[{f.name}] "
                for ln in lines[:-1]:
                    q.put(tag + ln + "\n")

        while proc.poll() is None:
            sweep()
            time.sleep(poll_s)
        sweep()
        for f, rest in partial.items():
            q.put(f"[{f.name}] {rest}\n")
        q.put(None)

    threads = [threading.Thread(target=read_stdout, daemon=True, name="kit-mpiexec-stdout"),
               threading.Thread(target=tail, daemon=True, name="kit-stdproc-tail")]
    for t in threads:
        t.start()
    done = 0
    while done < len(threads):
        item = q.get()
        if item is None:
            done += 1
            continue
        yield item
