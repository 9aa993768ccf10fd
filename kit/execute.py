"""Executing a plan where its ranks run: start them, watch them, and hand what happened to
:mod:`kit.finalize`, which always leaves a bundle saying so.

``execute()`` runs on the node that starts the ranks (``kit run`` with a direct launcher,
or ``kit job-run`` inside a batch job):

1. the launcher's argv (torchrun / mpirun / srun) around the pinned command, wrapped by the
   runtime (host, podman, singularity), with the kit's environment (allocator preload,
   threads, ``KIT_RUN_ID``);
2. a reader follows the launcher's output into ``logs/launcher.log`` and parses each
   Megatron-format iteration line (progress, ETA, stall clock);
3. the monitor samples every rank's process tree (peak RSS, allocator in the memory map);
4. the stall watchdog: no new iteration for the stall timeout (or no first iteration within
   the start-up timeout) → each rank's Python stack is collected, the ranks are stopped,
   status ``stalled``; a rank failure → ``failed`` with per-rank exit codes/signals;
   SIGINT/SIGTERM/SIGHUP to the kit → ranks stopped, ``interrupted``; the kit killed
   outright → its sidecar stops the launcher's group and the ranks (``reaper``);
5. a ``RunRecord`` of all that goes to ``finalize``, whatever the outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod, launchers, logparse, reaper, runtimes, settings
from kit.bundle import Bundle
from kit.finalize import RunRecord, finalize
from kit.logparse import IterationRecord, parse_line
from kit.monitor import Monitor, program_words
from kit.outcome import Outcome
from kit.plan import Plan
from kit.progress import ProgressView

TERM_GRACE_S = 5.0


class _Interrupt:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the run loop acts on (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # e.g. SIGHUP under nohup: the run is meant to outlive the terminal
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _Background:
    """``fn()`` in a daemon thread; ``result()`` waits for it (None if it raised)."""

    def __init__(self, fn: Callable[[], Any]):
        self._out: list[Any] = [None]

        def work():
            try:
                self._out[0] = fn()
            except Exception:  # finalize() then calls it itself
                self._out[0] = None

        self._thread = threading.Thread(target=work, name="kit-background", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        return self._out[0]


def _stop_run(proc: subprocess.Popen, monitor: Monitor, run_id: str, grace: float = TERM_GRACE_S) -> None:
    """SIGTERM the launcher's process group; after ``grace`` seconds SIGKILL what is left of
    it and of the ranks (``reaper.stop``: torchrun's workers have sessions of their own)."""
    reaper.stop(proc.pid, monitor.all_pids(), run_id, grace, poll=proc.poll)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def dump_stacks(pids: dict[int, int], out: Path, *, faulthandler_signal: bool) -> dict[str, str]:
    """Each rank's Python stack: py-spy where installed, and the workload's faulthandler (SIGUSR1)."""
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    pyspy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for rank, pid in sorted(pids.items()):
        if pyspy:
            try:
                r = subprocess.run([pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
                bundle_mod.atomic_write(out / f"rank{rank}.py-spy.txt", r.stdout + r.stderr)
                done[str(rank)] = "py-spy"
            except (OSError, subprocess.SubprocessError) as e:
                done[str(rank)] = f"py-spy failed: {e}"
        if faulthandler_signal:
            try:
                os.kill(pid, signal.SIGUSR1)
                done[str(rank)] = (done.get(str(rank), "") + " faulthandler").strip()
            except ProcessLookupError:
                pass
    if faulthandler_signal:
        time.sleep(1.0)  # let faulthandler write before the ranks are stopped
    return done


@dataclass
class _Command:
    """What ``execute`` starts: the argv, the kit's own variables, the whole environment."""

    plan: Plan  # with LD_PRELOAD filled in where the allocator was resolved here
    argv: list[str]
    kit_env: dict[str, str]
    env: dict[str, str]
    start_error: str = ""  # set: the command cannot start here (the run fails with this reason)


def _command(plan: Plan, b: Bundle, launcher, rt, cwd: Path) -> _Command:
    plan, start_error = settings.allocator_on_node(plan)  # deferred by the plan to this node (batch jobs)
    kit_env = dict(plan.env)
    kit_env["KIT_RUN_ID"] = b.id
    kit_env.setdefault("PYTHONUNBUFFERED", "1")
    binds = [b.path, *(plan.site.host_binds() if plan.site else [])]  # and cwd, unless the image provides it
    if launcher.inside_runtime:  # torchrun runs in the image and starts the ranks there
        argv = rt.wrap(launcher.command(plan, plan.rank_argv, python=plan.python, log_dir=b.logs.resolve()),
                       kit_env, cwd=cwd, binds=binds)
    else:  # mpirun/srun/mpiexec start each rank on the host: the runtime wraps each rank
        rank_argv = launcher.rank_argv(plan.rank_argv, python=plan.python)
        argv = launcher.command(plan, rt.wrap(rank_argv, kit_env, cwd=cwd, binds=binds),
                                python=plan.python, log_dir=b.logs.resolve())
    # In an image the kit's variables reach the ranks through the runtime (--env); the
    # host-side processes (podman, mpirun) must not preload the image's allocator path.
    env = {**os.environ, **kit_env} if plan.runtime == "host" else \
        {**os.environ, **{k: v for k, v in kit_env.items() if k != "LD_PRELOAD"}}
    return _Command(plan, argv, kit_env, env, start_error)


class _Watch:
    """Follows the launcher's output and decides when to stop it.

    ``follow`` (a reader thread) copies every line into the log and parses iterations for
    the progress view and the stall clock; ``until_exit`` (the main thread) waits for the
    launcher and stops the run on SIGINT/SIGTERM/SIGHUP or when no new iteration came
    within the stall limit (the start-up limit before the first), collecting stacks first.
    """

    def __init__(self, plan: Plan, b: Bundle, launcher, view: ProgressView,
                 remote_stacks: Callable[[], dict[str, str]] | None = None):
        self.plan, self.b, self.launcher, self.view = plan, b, launcher, view
        self.remote_stacks = remote_stacks
        self.records: list[IterationRecord] = []
        self._lock = threading.Lock()
        self._last_progress = time.monotonic()
        self.on_record: Callable[[int], None] | None = None  # the monitor's energy window

    def follow(self, proc: subprocess.Popen, log) -> None:
        for line in self.launcher.output(proc, self.b.logs):
            log.write(line)
            rec = parse_line(line)
            if rec is not None:
                with self._lock:
                    self.records.append(rec)
                    self._last_progress = time.monotonic()
                self.view.update(rec)
                if self.on_record is not None:
                    self.on_record(rec.iteration)

    def until_exit(self, proc: subprocess.Popen, intr: _Interrupt, monitor: Monitor) -> tuple[str, str, dict[str, str]]:
        """Status ("ok" unless the kit stopped the ranks), reason, and the stacks collected."""
        train = self.plan.recipe.train
        while True:
            try:  # returns as soon as the launcher exits (a sleep would add up to 0.2 s)
                proc.wait(timeout=0.2)
                return "ok", "", {}
            except subprocess.TimeoutExpired:
                pass
            if intr.signum is not None:
                self.view.status("interrupted: stopping ranks…")
                _stop_run(proc, monitor, self.b.id)
                return "interrupted", f"{signal.Signals(intr.signum).name} received by kit; ranks stopped", {}
            with self._lock:
                idle = time.monotonic() - self._last_progress
                last = self.records[-1].iteration if self.records else None
            limit = train.stall_timeout_s if last is not None else train.startup_timeout_s
            if idle > limit:
                what = (f"no new iteration for {idle:.0f}s (limit {limit:.0f}s) after iteration {last}"
                        if last is not None else f"no first iteration within {limit:.0f}s")
                self.view.status(f"stalled: {what}; collecting stacks…")
                stacks = dump_stacks(monitor.pids(), self.b.logs / "stacks",
                                     faulthandler_signal="kit.workload" in self.plan.rank_argv)
                if self.remote_stacks is not None:  # the ranks on the job's other nodes
                    stacks.update(self.remote_stacks())
                _stop_run(proc, monitor, self.b.id)
                return "stalled", what, stacks


def _verdict(rc: int | None, records: list[IterationRecord], expected: int,
             rank_failures: dict[int, dict[str, object]]) -> tuple[str, str]:
    """The status of a run the launcher ended by itself: ok only if it exited 0 after the
    last iteration."""
    if rc not in (0, None):
        ranks = ", ".join(f"rank {r}: " + (f"signal {f['signal']}" if "signal" in f else f"exit {f.get('exit_code')}")
                          for r, f in sorted(rank_failures.items()))
        return "failed", f"launcher exited with code {rc}" + (f"; {ranks}" if ranks else "")
    if not records:
        return "failed", "the training command logged no iteration (see logs/launcher.log)"
    if records[-1].iteration < expected:
        return "failed", f"ended after iteration {records[-1].iteration} of {expected}"
    return "ok", ""


def execute(plan: Plan, b: Bundle, console: Console, *, launcher_name: str | None = None,
            extra_provenance: dict[str, Any] | None = None,
            remote_monitors: Callable[[], list[dict[str, Any]]] | None = None,
            remote_stacks: Callable[[], dict[str, str]] | None = None, monitor_here: bool = True) -> Outcome:
    """Start and watch the ranks of ``plan`` from here; finalize ``b`` whatever happens.

    ``remote_monitors``: called once the ranks have ended, returns the monitor snapshots of
    the job's other nodes (``kit job-monitor``), merged with this node's. ``remote_stacks``:
    called on a stall, takes the stacks of the ranks on the other nodes. ``monitor_here``
    False: this host is not one of the allocation's nodes (``srun`` from a login node), so
    no rank is looked for here.
    """
    launcher = launchers.get(launcher_name or plan.launcher)
    rt = runtimes.get(plan.runtime, image=plan.image)
    cwd = Path(plan.workdir) if plan.workdir else Path.cwd()  # the recipe's workdir: where the ranks start
    cmd = _command(plan, b, launcher, rt, cwd)
    if rt.provides(cwd):  # the image's own directory: the ranks start there inside, the launcher here
        cwd = Path.cwd()
    elif not cwd.is_dir():
        cmd.start_error = f"on {socket.gethostname()}: the recipe's workdir {cwd} is not a directory"
        cwd = Path.cwd()
    plan = cmd.plan
    started = bundle_mod.now_iso()
    t_start = time.monotonic()
    monitor = Monitor(b.id, program_words(plan.rank_argv), expected_local=plan.ranks_per_node,
                      timed_window=(plan.recipe.train.warmup_iters, plan.recipe.train.iters))

    # one interrupt guard over the run *and* its finalization: a second Ctrl-C while the bundle
    # is written is recorded, not obeyed, so the bundle is always finalized
    with _Interrupt() as intr:
        log_path = b.logs / "launcher.log"
        status, reason, stacks = "ok", "", {}
        rc: int | None = None
        software_job = None
        leftovers: list[int] = []
        with ProgressView(plan.recipe.train.iters, plan.recipe.train.warmup_iters, console,
                          f"{plan.recipe_name} [{plan.preset.name}] x{plan.world_size}") as view:
            watch = _Watch(plan, b, launcher, view, remote_stacks)
            watch.on_record = monitor.iteration_logged
            with b.log_writer("logs/launcher.log") as log:
                log.write(f"# kit: {' '.join(cmd.argv)}\n")
                with reaper.guard(b.id, TERM_GRACE_S) as guard:
                    try:
                        if cmd.start_error:
                            raise OSError(cmd.start_error)
                        proc = subprocess.Popen(cmd.argv, env=cmd.env, cwd=cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, text=True, bufsize=1, errors="replace")
                    except OSError as e:
                        status, reason = "failed", cmd.start_error or f"could not start {cmd.argv[0]}: {e}"
                        proc = None
                    if proc is not None:
                        guard.group(proc.pid)
                        guard.cleanup(rt.cleanup_commands())
                        if not guard.active:
                            log.write(f"# kit: no reaper ({guard.why_not}): were the kit killed, its ranks would "
                                      "have to be stopped by hand\n")
                        monitor.on_pids = guard.ranks
                        if monitor_here:
                            monitor.start()
                        # the software inventory overlaps the ranks' start-up (or is read from its cache)
                        software_job = _Background(rt.inspect_software)
                        reader = threading.Thread(target=watch.follow, args=(proc, log), name="kit-log-reader",
                                                  daemon=True)
                        reader.start()
                        status, reason, stacks = watch.until_exit(proc, intr, monitor)
                        rc = proc.wait()
                        reader.join(timeout=10)
                        # a launcher that died (SIGKILL, OOM) may leave ranks training on: stop them
                        # before the bundle is sealed, or they would write into it afterwards
                        leftovers = reaper.survivors(monitor.all_pids(), b.id)
                        if leftovers:
                            reaper.stop(None, leftovers, b.id, TERM_GRACE_S, term_pids=True)
                        monitor.stop()
                        rt.close()  # e.g. `podman rm -f`: nothing of the run outlives it
        duration = time.monotonic() - t_start
        log_text = log_path.read_text(errors="replace")
        rank_failures = launcher.failures(log_text)
        if status == "ok":
            status, reason = _verdict(rc, watch.records, plan.recipe.train.iters, rank_failures)
        if leftovers:
            note = f"{len(leftovers)} rank process(es) outlived the launcher and were stopped by the kit"
            status, reason = ("failed", note) if status == "ok" else (status, f"{reason}; {note}")
        others = remote_monitors() if remote_monitors else []
        monitors = [monitor.snapshot(), *others] if monitor_here or not others else others
        return finalize(RunRecord(
            plan=plan, bundle=b, runtime=rt, status=status, reason=reason, records=watch.records, monitors=monitors,
            rank_failures=rank_failures, device_memory=logparse.device_memory_peaks(log_text.splitlines()),
            host_memory=logparse.device_memory_peaks(log_text.splitlines(), "cpu"),
            launcher_rc=rc, argv=cmd.argv, kit_env=cmd.kit_env, env=cmd.env, started=started, duration=duration,
            stacks=stacks, extra_provenance=extra_provenance or {},
            software=software_job.result() if software_job else None), console)
