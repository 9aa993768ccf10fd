"""What machine this is: CPU, cores, NUMA, frequency seen, memory, kernel, OS, scheduler.

Frequency is read from cpufreq in sysfs (``scaling_cur_freq``) where the kernel exposes
it, else from psutil, else from ``/proc/cpuinfo``; the source is recorded with the value.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from pathlib import Path

import psutil

SCHEDULER_PREFIXES = ("SLURM_", "PJM_", "OMPI_COMM_WORLD_", "PBS_", "LSB_", "FLIB_", "PLE_")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model Name", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    # aarch64 kernels report implementer/part codes rather than a name
    impl = re.search(r"^CPU implementer\s*:\s*(\S+)", text, re.M)
    part = re.search(r"^CPU part\s*:\s*(\S+)", text, re.M)
    if impl and part:
        name = {("0x46", "0x001"): "Fujitsu A64FX"}.get((impl.group(1), part.group(1)))
        return name or f"implementer {impl.group(1)} part {part.group(1)}"
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    text = _read("/proc/cpuinfo") or ""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return m.group(1).split() if m else []


def first_core() -> int:
    """The first core of this process's CPU set, which the ranks it starts inherit (a job's
    cpuset on a compute node: on Fugaku a compute core, 12-59; cpu0 is an assistant core)."""
    try:
        return min(os.sched_getaffinity(0))
    except (AttributeError, OSError, ValueError):
        return 0


def frequency_seen(cpu: int | None = None) -> dict[str, object]:
    """Current frequency in MHz of core ``cpu`` (default: ``first_core()``), with where it was read from."""
    cpu = first_core() if cpu is None else cpu
    cur = _read(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq")
    if cur and cur.isdigit():
        out: dict[str, object] = {"mhz": int(cur) / 1000.0, "source": f"sysfs cpu{cpu} scaling_cur_freq", "cpu": cpu}
        mx = _read(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_max_freq")
        if mx and mx.isdigit():
            out["max_mhz"] = int(mx) / 1000.0
        return out
    try:
        f = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        f = None
    if f and f.current:
        return {"mhz": round(f.current, 1), "max_mhz": f.max or None, "source": "psutil.cpu_freq"}
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", _read("/proc/cpuinfo") or "", re.M)
    if m:
        return {"mhz": float(m.group(1)), "source": "/proc/cpuinfo (nominal on VMs)"}
    return {"mhz": None, "source": "not exposed by this kernel"}


def numa_nodes() -> int:
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    return len(nodes) or 1


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def os_release() -> str:
    text = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.M)
    return m.group(1) if m else platform.platform()


def scheduler_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k.startswith(SCHEDULER_PREFIXES)}


def describe() -> dict[str, object]:
    """Everything about this machine that the provenance records."""
    vm = psutil.virtual_memory()
    flags = cpu_flags()
    return {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "numa_nodes": numa_nodes(),
        "frequency": frequency_seen(),
        "isa_features": sorted(f for f in flags if f.startswith(("sve", "avx512", "amx", "bf16", "asimd"))),
        "memory_total_mib": round(vm.total / 2**20, 1),
        "kernel": platform.release(),
        "os": os_release(),
        "python": platform.python_version(),
    }
