"""The monitor: finds a run's rank processes on this node and samples them.

Ranks are found by the run id the kit puts in their environment (``KIT_RUN_ID``) and by
their command line (the pinned argv), whoever started them: torchrun's children, mpirun's,
slurmstepd's under srun, or a container's. Only the program's own words are matched
(:func:`program_words`), so whatever precedes it in the recipe's command (``env VAR=…``,
the rank wrapper ``python -m kit.rankexec --``) is no obstacle. For each rank the monitor
keeps its peak RSS: the larger of the rank process's own high-water mark (``VmHWM``, exact) and the sampled RSS of
its whole process tree (helpers such as compile workers); which allocator its memory map
shows (``/proc/<pid>/maps``); and when it was last seen alive.

Sampling reads a few ``/proc`` files per rank every ``interval`` seconds; a full scan of
the process table (to find ranks, and each rank's child processes) happens only until
every expected rank is found, then every ``rescan_s`` seconds.

Energy (``kit.energy``): the node's counters are read when the monitor starts and stops,
when the timed window opens and closes (told by the log reader through
``iteration_logged``), and every ``Meter.interval_s`` in between so that a wrapping counter
is never missed: a few sysfs/NVML reads, negligible next to the ranks.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

import psutil

from kit import allocator, energy, rankenv, rankexec

MIB = 2**20


@dataclass
class RankSample:
    rank: int
    pid: int
    node: str
    local_rank: int | None = None
    peak_rss_mib: float = 0.0
    last_rss_mib: float = 0.0
    allocator: dict[str, Any] = field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0
    alive: bool = True


def _environ(p: psutil.Process) -> dict[str, str] | None:
    try:
        return p.environ()
    except (psutil.Error, OSError):
        return None


def _rss_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / MIB


def _hwm_mib(pid: int) -> float:
    """The kernel's high-water mark of the process's RSS (``VmHWM``): its exact peak, which
    sampling can miss between two samples. 0 where /proc has no such line."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


# -- rank discovery --------------------------------------------------------------------------
def program_words(argv: list[str]) -> list[str]:
    """The words of a rank's command that its own command line in /proc contains: the
    program's argv (:func:`kit.rankexec.program_argv`: ``env VAR=…`` and the rank wrapper
    exec it and vanish) without the interpreter, which /proc may spell differently (a
    resolved path, ``python3``); a program without arguments keeps its own name."""
    words = rankexec.program_argv(argv)
    return words[1:] if len(words) > 1 else words


class Monitor:
    """Samples the ranks of run ``run_id`` on this node in a background thread."""

    def __init__(self, run_id: str, match: list[str], expected_local: int, *, interval: float = 0.5,
                 rescan_s: float = 5.0, node: str | None = None, timed_window: tuple[int, int] | None = None,
                 meter: energy.Meter | None = None):
        self.run_id = run_id
        self.match = " ".join(match)
        self.expected_local = expected_local
        self.interval = interval
        self.rescan_s = rescan_s
        self.node = node or socket.gethostname()
        self.ranks: dict[int, RankSample] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._children: dict[int, list[psutil.Process]] = {}  # per rank, refreshed at each scan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kit-monitor", daemon=True)
        self._last_scan = 0.0
        self._lock = threading.Lock()
        self.cpu_time_s = 0.0  # the monitor's own CPU time, to report its cost
        # the whole kit process's CPU time while it watches the ranks (monitor, log reader,
        # progress display): what the kit can take from the ranks while they run
        self._cpu_start: float | None = None
        self._cpu_end: float | None = None
        # told the pids of the ranks and their children at each scan (the kit's reaper)
        self.on_pids: Callable[[list[int]], None] | None = None
        # energy: (warm-up iterations, last iteration) of the timed window, and its marks
        self.timed_window = timed_window
        self.meter = meter if meter is not None else energy.Meter.detect()
        self.window: dict[str, dict[str, float]] = {}
        self._energy_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Monitor":
        self._cpu_start = time.process_time()
        self._energy_sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self._energy_sample()
        self.meter.close()
        if self._cpu_start is not None and self._cpu_end is None:
            self._cpu_end = time.process_time()

    @property
    def process_cpu_s(self) -> float:
        if self._cpu_start is None:
            return 0.0
        return (self._cpu_end if self._cpu_end is not None else time.process_time()) - self._cpu_start

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.thread_time()
            self.sample()
            if self.meter.due():
                self._energy_sample()
            self.cpu_time_s += time.thread_time() - t0
            self._stop.wait(self.interval)

    # -- sampling ---------------------------------------------------------------------------
    def _is_rank(self, p: psutil.Process) -> dict[str, str] | None:
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.Error, OSError):
            return None
        if self.match not in cmd:
            return None
        env = _environ(p)
        if not env or env.get("KIT_RUN_ID") != self.run_id:
            return None
        if rankenv.detect(env) is None:
            return None
        return env

    def scan(self) -> None:
        now = time.time()
        self._last_scan = now
        found: dict[int, tuple[psutil.Process, dict[str, str]]] = {}
        for p in psutil.process_iter():
            env = self._is_rank(p)
            if env is None:
                continue
            renv = dict(env)
            rankenv.resolve(renv)
            found[p.pid] = (p, renv)
        # keep the top-most matching process of each tree (a wrapper's child is the same rank)
        for pid, (p, renv) in found.items():
            try:
                parent = p.ppid()
            except psutil.Error:
                continue
            if parent in found:
                continue
            rank = int(renv["RANK"])
            with self._lock:
                known = self.ranks.get(rank)
                if known is None or known.pid != pid:
                    self.ranks[rank] = RankSample(rank=rank, pid=pid, node=self.node,
                                                  local_rank=int(renv.get("LOCAL_RANK", 0)),
                                                  first_seen=now, last_seen=now)
                    self._procs[rank] = p
        with self._lock:
            procs = list(self._procs.items())
        for rank, p in procs:
            try:
                self._children[rank] = p.children(recursive=True)
            except psutil.Error:
                self._children[rank] = []
        if self.on_pids is not None:
            self.on_pids(self.all_pids())

    def all_pids(self) -> list[int]:
        """Every rank process seen and its children at the last scan (dead ones included)."""
        with self._lock:
            pids = [s.pid for s in self.ranks.values()]
        pids += [c.pid for children in list(self._children.values()) for c in children]
        return pids

    def sample(self) -> None:
        now = time.time()
        if len(self.ranks) < self.expected_local or now - self._last_scan > self.rescan_s:
            self.scan()
        with self._lock:
            items = list(self._procs.items())
        for rank, p in items:
            s = self.ranks[rank]
            if not s.alive:
                continue
            try:
                alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                s.alive = False
                continue
            rss = _rss_mib([p, *self._children.get(rank, [])])
            s.last_rss_mib = rss
            s.peak_rss_mib = max(s.peak_rss_mib, rss, _hwm_mib(p.pid))
            s.last_seen = now
            if s.allocator.get("allocator") in (None, "unknown") or now - s.first_seen < 3:
                s.allocator = allocator.mapped_allocator(p.pid)

    # -- energy -----------------------------------------------------------------------------
    def _energy_sample(self) -> float | None:
        with self._energy_lock:
            return self.meter.sample()

    def iteration_logged(self, iteration: int) -> None:
        """Told of each iteration line: the counters are read as the timed window opens (the
        first line at or after the warm-up) and as it closes (the last iteration's line)."""
        if self.timed_window is None or not self.meter.counters:
            return
        warmup, last = self.timed_window
        if "start" not in self.window and warmup <= iteration < last:
            self.window["start"] = {"t": self._energy_sample(), "iteration": iteration}
        elif "start" in self.window and "end" not in self.window and iteration >= last:
            self.window["end"] = {"t": self._energy_sample(), "iteration": iteration}

    # -- results ----------------------------------------------------------------------------
    def pids(self) -> dict[int, int]:
        with self._lock:
            return {r: s.pid for r, s in self.ranks.items() if s.alive}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ranks = {str(r): asdict(s) for r, s in sorted(self.ranks.items())}
        return {"node": self.node, "expected_local_ranks": self.expected_local, "ranks": ranks,
                "interval_s": self.interval, "monitor_cpu_s": round(self.cpu_time_s, 4),
                "kit_cpu_s": round(self.process_cpu_s, 4), "energy": {**self.meter.doc(), "window": dict(self.window)}}
