"""What launchers and schedulers share: the allocation, the rendezvous, the kit's variables.

One module, so that no launcher imports another and the schedulers (``kit.schedulers``)
borrow from here rather than from a launcher:

- ``allocation_nodes``: the nodes of the current job, first node first (Slurm's node list,
  PJM's node file, or this host);
- ``rendezvous``: MASTER_ADDR/MASTER_PORT for torch.distributed on gloo;
- ``flavour``: which MPI ``mpirun`` means here (Fujitsu inside a PJM job, else OpenMPI);
- ``mpiexec_argv``: Fujitsu MPI's ``mpiexec -std-proc`` line (run by the ``mpirun``
  launcher inside a PJM job, and written into the PJM script as a comment);
- ``kit_command``: the line a job script runs (``kit job-run BUNDLE``);
- ``KIT_VARS``, ``free_port``, ``cpu_freq_khz``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

#: variables the kit sets for the ranks besides plan.env (see kit.runner.execute)
KIT_VARS = ("KIT_RUN_ID", "PYTHONUNBUFFERED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_freq_khz(mhz: int) -> str:
    """Slurm's ``--cpu-freq`` unit (kHz) for a frequency in MHz."""
    return str(int(mhz) * 1000)


def allocation_nodes(environ: dict[str, str] | None = None) -> list[str]:
    """The nodes of the current job, first node first (this host when not in a job)."""
    env = os.environ if environ is None else environ
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodelist:
        if shutil.which("scontrol"):
            try:
                out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                     timeout=30)
                if out.returncode == 0 and out.stdout.strip():
                    return out.stdout.split()
            except (OSError, subprocess.SubprocessError):
                pass
        return expand_slurm_nodelist(nodelist)
    nodeinf = env.get("PJM_O_NODEINF")
    if nodeinf and Path(nodeinf).is_file():
        nodes = [ln.split()[0] for ln in Path(nodeinf).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if nodes:
            return nodes
    return [socket.gethostname()]


def expand_slurm_nodelist(text: str) -> list[str]:
    """``node[01-03,07],gpu5`` -> node01 node02 node03 node07 gpu5 (no scontrol needed)."""
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?", text):
        prefix, ranges = m.group(1), m.group(2)
        if not ranges:
            out.append(prefix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(f"{prefix}{i:0{len(a)}d}" for i in range(int(a), int(b) + 1))
            else:
                out.append(prefix + part)
    return out


def interface_address(name: str) -> str | None:
    """The IPv4 address of network interface ``name`` on this host (e.g. Fugaku's ``tofu1``)."""
    import psutil

    for a in psutil.net_if_addrs().get(name, []):
        if a.family == socket.AF_INET:
            return a.address
    return None


def rendezvous(plan, environ: dict[str, str] | None = None) -> tuple[str, int]:
    """MASTER_ADDR and MASTER_PORT for the ranks of ``plan`` started from this node.

    This node is the master: the ranks start from here and rank 0 runs here. With a site
    interface (Fugaku: ``tofu1``) the address is this node's on that interface, which the
    other nodes reach; else the first node of the allocation (127.0.0.1 on one node).
    """
    env = os.environ if environ is None else environ
    site = getattr(plan, "site", None)
    on_interface = interface_address(site.interface) if site and site.interface else None
    if env.get("KIT_MASTER_ADDR"):
        addr = env["KIT_MASTER_ADDR"]
    elif on_interface:
        addr = on_interface
    elif plan.nodes <= 1:
        addr = "127.0.0.1"
    else:
        first = allocation_nodes(env)[0]
        try:
            addr = socket.gethostbyname(first)
        except OSError:
            addr = first
    return addr, free_port()


def flavour(environ: dict[str, str] | None = None) -> str:
    """``fujitsu`` inside a PJM job (or KIT_MPI=fujitsu), else ``openmpi``."""
    env = os.environ if environ is None else environ
    forced = env.get("KIT_MPI", "").lower()
    if forced in ("fujitsu", "openmpi"):
        return forced
    return "fujitsu" if env.get("PJM_JOBID") else "openmpi"


def mpiexec_argv(plan, rank_argv: list[str], log_dir: Path, *, addr: str, port: str | int) -> list[str]:
    """Fujitsu MPI's mpiexec line: one output file per rank (``-std-proc``), the kit's variables.

    The ``-std-proc`` path is the site's (Fugaku: ``%j/%m/%/1000r/out``, a directory per
    thousand ranks); the world size and ranks per node go to every rank as
    ``KIT_WORLD_SIZE``/``KIT_RANKS_PER_NODE``, since under Fujitsu MPI only ``PMIX_RANK``
    is reliably set (``kit.rankenv`` derives the rest).
    """
    site = getattr(plan, "site", None)
    argv = ["mpiexec", "-np", str(plan.world_size), "-std-proc", str(log_dir / "stdproc" / (site.stdproc if site else "out"))]
    for n in [*sorted(plan.env), *KIT_VARS]:
        argv += ["-x", n]
    argv += ["-x", f"KIT_WORLD_SIZE={plan.world_size}", "-x", f"KIT_RANKS_PER_NODE={plan.ranks_per_node}",
             "-x", f"MASTER_ADDR={addr}", "-x", f"MASTER_PORT={port}"]
    return [*argv, *rank_argv]


def kit_command(python: str, bundle_dir: Path) -> str:
    """The line a job script runs: this kit's ``job-run`` on the bundle."""
    return f"{shlex.quote(python)} -m kit job-run {shlex.quote(str(bundle_dir))}"
