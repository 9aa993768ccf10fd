"""Batch jobs (Slurm, PJM): submit, run inside the job, follow, and collect.

The life of a batch run, all in one bundle directory::

    kit run --launcher slurm|pjm     bundle made; plan.json, job/job.sh written; sbatch/pjsub;
                                     job/job.json holds the job id; manifest status "submitted"
      (in the job) kit job-run B     status "running"; the ranks start with the inner launcher
                                     (srun / mpiexec), are watched on every node, and the bundle
                                     is finalized with the job id, node list, scheduler
                                     variables and the job script in provenance["job"]
      (other nodes) kit job-monitor  one monitor per further node, writing monitor/<host>.json,
                                     merged by job-run when the ranks end
    kit status B                     the job's state (pending/running/ended) and the bundle's
    kit cancel B                     cancels the job (scancel, pjdel), waits for it to end, then
                                     collects it as below: interrupted, with the job manager's reason
                                     (a final bundle's job still holding its nodes is cancelled only)
    kit collect B                    after the job: folds in the scheduler's output/statistics
                                     files; if the job died before the kit could finalize
                                     (killed, time limit, node failure), finalizes the bundle as
                                     interrupted/failed with the scheduler's reason, keeping the
                                     partial logs and whatever iterations were logged

``kit run --wait`` polls the job and collects it when it ends. A job whose state the job
manager cannot give (its commands fail) is ``unknown`` and not ended: it is waited for, not
collected; one the job manager no longer lists is ``unknown`` and ended: ``kit collect``
finalizes it, ``kit cancel`` does not (it cannot tell whether the cancel ended it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod, bundle_reader, energy, hostinfo, known_bad, launchers, proc, reaper, redact, runtimes, schedulers
from kit.envvars import Seconds
from kit.bundle import FINAL_STATUSES, Bundle
from kit.bundle_reader import BundleReadError
from kit.errors import EXIT_NOT_READY, KitError
from kit.execute import dump_stacks, execute
from kit.finalize import RunRecord, finalize
from kit.launchers.common import allocation_nodes
from kit.logparse import device_memory_peaks, parse_lines
from kit.outcome import Outcome, print_result
from kit.plan import Plan, load as load_plan
from kit.schedulers import JobState, Scheduler

JOB_SCRIPT = "job/job.sh"
JOB_JSON = "job/job.json"
MONITOR_DIR = "monitor"
LOG_CAP = 1 << 30  # the launcher's log kit collect parses for the iterations a dead job logged
STACKS_REQUEST = "stacks.request"  # in monitor/: the head node asks every job-monitor for its ranks' stacks
STACKS_TAKEN = "monitor/stacks"  # each job-monitor's answer: <host>.json, {rank: how the stack was taken}
STACKS_POLL_S = 1.0  # how often a job-monitor looks for that request
STACKS_WAIT_S = 30.0  # how long the head node waits for the other nodes' stacks
#: how often `kit run --wait`, `kit collect --wait` and `kit cancel` ask the job manager about the job
POLL = Seconds("KIT_POLL_S", 5.0)
#: how long `kit cancel` waits for the job manager to call a cancelled job ended
CANCEL_WAIT = Seconds("KIT_CANCEL_WAIT_S", 120.0)
#: how long `kit collect` lets the kit inside an ended job finish finalizing the bundle itself
COLLECT_GRACE = Seconds("KIT_COLLECT_GRACE_S", 60.0)
#: files the job manager writes into the bundle's logs, possibly after the kit finalized it
SCHEDULER_FILES = re.compile(r"^logs/(slurm-[0-9]+\.out|pjm\.[\w\[\]]+\.(out|stats|acct))$", re.ASCII)


# -- submission -----------------------------------------------------------------------------
def submit(plan: Plan, b: Bundle, launcher: Scheduler, console: Console):
    """Write the job script into the bundle, submit it, record the job id; wait if asked."""
    path = b.path.resolve()
    try:
        # read before anything is submitted: a bad value must not strand a queued job
        poll_s, grace_s = (POLL.get(), COLLECT_GRACE.get()) if plan.job.wait else (None, None)
        launcher.check_job_python(plan)
        script = b.write_text(JOB_SCRIPT, launcher.render(plan, path, warnings=known_bad.script_warnings(plan)))
        script.chmod(0o755)
        job_id = launcher.submit(script)
    except KitError:
        shutil.rmtree(b.path, ignore_errors=True)  # nothing ran: leave no half bundle behind
        raise
    job = {"launcher": launcher.name, "inner": launcher.launcher, "job_id": job_id, "script": JOB_SCRIPT,
           "submitted": bundle_mod.now_iso(), "submit_host": socket.gethostname(), "cwd": str(Path.cwd())}
    b.write_json(JOB_JSON, job)
    reason = f"{launcher.name} job {job_id} submitted"
    b.set_status("submitted", reason)
    console.print(f"submitted {launcher.name} job {job_id}", highlight=False)
    console.print(f"bundle: {b.path}", highlight=False, soft_wrap=True)
    if not plan.job.wait:
        console.print(f"follow it with `kit status {b.path}`; `kit collect {b.path}` once it ends",
                      highlight=False, soft_wrap=True)
        return Outcome(status="submitted", reason=reason, bundle=b)
    return wait(b.path, console, poll_s=poll_s, grace_s=grace_s)


def wait(bundle_dir: Path, console: Console, *, poll_s: float | None = None, grace_s: float | None = None):
    """Poll the bundle's job until it ends (a job whose state the job manager cannot give is
    waited for), then collect it. ``poll_s``, ``grace_s``: default $KIT_POLL_S, $KIT_COLLECT_GRACE_S."""
    poll_s = POLL.get() if poll_s is None else poll_s
    grace_s = COLLECT_GRACE.get() if grace_s is None else grace_s
    job = _job(bundle_dir)
    launcher = schedulers.get(job["launcher"])
    last = None
    while True:
        st = launcher.poll(job["job_id"])
        if st.state != last:
            console.print(f"job {job['job_id']}: {st.state}" + (f" ({st.reason})" if st.reason else ""),
                          highlight=False)
            last = st.state
        if st.ended:
            break
        time.sleep(poll_s)
    return collect(bundle_dir, console, state=st, grace_s=grace_s)


# -- inside the job -------------------------------------------------------------------------
def _job(bundle_dir: Path) -> dict[str, Any]:
    p = Path(bundle_dir) / JOB_JSON
    if not p.is_file():
        raise KitError(f"{p}: missing: not a bundle made by `kit run --launcher slurm|pjm`", where=str(bundle_dir),
                       fix="give the bundle directory that `kit run` printed")
    try:
        job = bundle_reader.read_json(Path(bundle_dir), JOB_JSON, cap=1 << 20)
    except BundleReadError as e:
        raise KitError(e.why, where=e.path, fix="the bundle's job record is damaged; see `kit bundle verify`") from None
    if not (isinstance(job, dict) and isinstance(job.get("launcher"), str) and isinstance(job.get("job_id"), str)):
        raise KitError("not a job record (launcher and job_id as strings)", where=str(p),
                       fix="the bundle's job record is damaged; see `kit bundle verify`")
    if job["launcher"] not in schedulers.names():
        raise KitError(f"launcher {job['launcher']!r} is not a batch scheduler ({', '.join(schedulers.names())})",
                       where=str(p), fix="the bundle's job record is damaged; see `kit bundle verify`")
    schedulers.get(job["launcher"]).check_job_id(job["job_id"], where=str(p))  # before any command sees it
    return job


def _script_text(bundle_dir: Path) -> str | None:
    """The job script in the bundle, or None."""
    try:
        return bundle_reader.read_text(Path(bundle_dir), JOB_SCRIPT)
    except BundleReadError:
        return None


def job_id_from_env(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("SLURM_JOB_ID") or env.get("PJM_JOBID") or env.get("PJM_SUBJOBID")


def run_inside_job(bundle_dir: Path, console: Console) -> int:
    """``kit job-run``: start, watch and finalize the bundle's plan on the job's nodes."""
    bundle_dir = Path(bundle_dir).resolve()
    b = Bundle.open(bundle_dir)
    if b.manifest.status in FINAL_STATUSES:
        raise KitError(f"bundle already finalized with status {b.manifest.status}", where=str(bundle_dir),
                       fix="submit a new run; a bundle records one run")
    plan = load_plan(bundle_dir / "plan.json")
    job = _job(bundle_dir) if (bundle_dir / JOB_JSON).is_file() else {"launcher": plan.launcher}
    scheduler = schedulers.get(plan.launcher)
    inner = scheduler.launcher
    job_id = job_id_from_env() or job.get("job_id")
    nodes = allocation_nodes()
    head = socket.gethostname()
    info = {
        "id": job_id, "launcher": plan.launcher, "inner_launcher": inner, "nodes": nodes, "head_node": head,
        "scheduler_vars": hostinfo.scheduler_vars(), "script_path": JOB_SCRIPT,
        "script": _script_text(bundle_dir),
        "submitted": job.get("submitted"), "started": bundle_mod.now_iso(),
    }
    b.write_json(JOB_JSON, {**job, "job_id": job_id, "started": info["started"], "nodes": nodes, "head_node": head,
                            "kit_pid": os.getpid(), "kit_started": proc.identity()["started"]})
    b.set_status("running", f"{plan.launcher} job {job_id} running on {', '.join(nodes)}")

    # this node's ranks, written every few seconds: what `kit collect` keeps if the job dies
    keeper = _SnapshotWriter(bundle_dir, plan, b.id).start()
    outcome = execute_across_nodes(plan, b, console, inner, scheduler, before_merge=lambda: keeper.stop(write=False),
                                   extra_provenance={"job": info})
    sys.stdout.flush()
    sys.stderr.flush()
    # what the kit printed after finalizing went to the scheduler's output file in logs/:
    # checksum it too, so that the bundle verifies as it is now
    _refold_scheduler_files(bundle_dir)
    return outcome.exit_code


def execute_across_nodes(plan: Plan, b: Bundle, console: Console, inner: str, scheduler: Scheduler | None, *,
                         before_merge: Callable[[], None] | None = None,
                         extra_provenance: dict[str, Any] | None = None) -> Outcome:
    """Start and watch the ranks with the direct launcher ``inner`` (srun, mpirun) from this
    host, with a ``kit job-monitor`` on each other node of the ``scheduler``'s multi-node
    allocation: their snapshots are merged into the bundle, and on a stall each takes the
    stacks of its node's ranks. Used by ``kit job-run`` and by ``kit run --launcher
    srun|mpirun --nodes N`` in an allocation (this host need not be one of its nodes)."""
    head = socket.gethostname()
    step = _start_node_monitors(plan, b.path, scheduler, head, b.id) if scheduler is not None else None

    def remote_monitors() -> list[dict[str, Any]]:
        if before_merge is not None:
            before_merge()
        if step is not None:
            _stop(step, b.id)
        return read_node_monitors(b.path, exclude={head})

    def remote_stacks() -> dict[str, str]:
        return request_node_stacks(b.path, exclude={head}) if step is not None else {}

    return execute(plan, b, console, launcher_name=inner, extra_provenance=extra_provenance,
                   remote_monitors=remote_monitors, remote_stacks=remote_stacks,
                   monitor_here=step is None or head in allocation_nodes())


class _SnapshotWriter:
    """A monitor of this node's ranks, saved to ``monitor/<host>.json`` every ``every_s``
    (and once more when stopped with ``write``): ``kit job-run``'s keeper of what ``kit
    collect`` finds if the job dies, and ``kit job-monitor`` on the other nodes."""

    def __init__(self, bundle_dir: Path, plan: Plan, run_id: str, *, every_s: float = 10.0, interval: float = 2.0):
        from kit.monitor import Monitor, program_words

        self.mon = Monitor(run_id, program_words(plan.rank_argv), expected_local=plan.ranks_per_node, interval=interval)
        self.out = bundle_dir / MONITOR_DIR / f"{socket.gethostname()}.json"
        self.every_s = every_s
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="kit-monitor-writer", daemon=True)

    def start(self) -> "_SnapshotWriter":
        self.mon.start()
        self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.mon.ranks:
                self._write()

    def _write(self) -> None:  # into the bundle: redacted as the bundle's writer does
        bundle_mod.atomic_write(self.out, bundle_mod.dump_json(redact.scrub(self.mon.snapshot())))

    def stop(self, *, write: bool) -> None:
        self._stop.set()
        self._t.join(timeout=5)
        self.mon.stop()
        if write:
            self._write()
        else:
            try:
                self.out.unlink()  # job-run's own monitor has the full picture
            except FileNotFoundError:
                pass


def _start_node_monitors(plan: Plan, bundle_dir: Path, scheduler: Scheduler, head: str,
                         run_id: str) -> subprocess.Popen | None:
    """One ``kit job-monitor`` per node besides this one (multi-node jobs only)."""
    if plan.nodes <= 1:
        return None
    argv = scheduler.node_monitor_argv(plan, [sys.executable, "-m", "kit", "job-monitor", str(bundle_dir),
                                              "--head", head])
    if argv is None:
        return None
    log = (bundle_dir / "logs" / "job-monitor.log").open("w")
    try:  # the run's id in its environment: reaper.stop signals only the run's own processes
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "KIT_RUN_ID": run_id})
    except OSError:
        return None
    finally:
        log.close()


def _stop(proc: subprocess.Popen, run_id: str, grace: float = 15.0) -> None:
    """Stop the node monitors' step (its process group) as a run is stopped."""
    if proc.poll() is None:
        reaper.stop(proc.pid, [], run_id, grace, poll=proc.poll)


def read_node_monitors(bundle_dir: Path, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    out = []
    for p in sorted((Path(bundle_dir) / MONITOR_DIR).glob("*.json")):
        try:
            snap = bundle_reader.read_json(Path(bundle_dir), f"{MONITOR_DIR}/{p.name}")
        except BundleReadError:
            continue
        if not (isinstance(snap, dict) and isinstance(snap.get("node"), str) and isinstance(snap.get("ranks"), dict)):
            continue
        if snap.get("node") in (exclude or set()):
            continue
        out.append(snap)
    return out


def request_node_stacks(bundle_dir: Path, exclude: set[str], timeout_s: float = STACKS_WAIT_S) -> dict[str, str]:
    """Ask every other node's ``kit job-monitor`` (through the shared bundle directory) for
    the Python stacks of its ranks, and wait for them: {rank: how, with the node}."""
    bundle_dir = Path(bundle_dir)
    nodes = {s["node"] for s in read_node_monitors(bundle_dir, exclude=exclude) if s.get("ranks")}
    bundle_mod.atomic_write(bundle_dir / MONITOR_DIR / STACKS_REQUEST, bundle_mod.now_iso() + "\n")
    done: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while nodes and time.monotonic() < deadline:
        for node in sorted(nodes):
            try:
                taken = bundle_reader.read_json(bundle_dir, f"{STACKS_TAKEN}/{node}.json")
            except BundleReadError:
                continue
            if not isinstance(taken, dict):
                continue
            done.update({str(rank): f"{how} on {node}" for rank, how in taken.items()})
            nodes.discard(node)
        time.sleep(0.5)
    done.update({f"node {node}": f"no stacks within {timeout_s:.0f}s" for node in sorted(nodes)})
    return done


def _take_stacks_if_asked(bundle_dir: Path, host: str, mon, plan: Plan) -> bool:
    """In ``kit job-monitor``: the stacks of this node's ranks, once the head node asks for them."""
    if not (bundle_dir / MONITOR_DIR / STACKS_REQUEST).is_file():
        return False
    taken = dump_stacks(mon.pids(), bundle_dir / "logs" / "stacks",
                        faulthandler_signal="kit.workload" in plan.rank_argv)
    bundle_mod.atomic_write(bundle_dir / STACKS_TAKEN / f"{host}.json", bundle_mod.dump_json(redact.scrub(taken)))
    return True


def monitor_node(bundle_dir: Path, *, head: str | None = None, interval_s: float = 5.0) -> int:
    """``kit job-monitor``: watch this node's ranks, writing ``monitor/<host>.json`` until
    stopped, and take their stacks when the head node asks (``request_node_stacks``)."""
    bundle_dir = Path(bundle_dir).resolve()
    host = socket.gethostname()
    if head and host == head:
        return 0  # the head node is watched by kit job-run itself
    plan = load_plan(bundle_dir / "plan.json")
    run_id = bundle_mod.read_manifest(bundle_dir).id
    writer = _SnapshotWriter(bundle_dir, plan, run_id, every_s=interval_s, interval=0.5).start()
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    stacks_taken = False
    while not stop.wait(STACKS_POLL_S):
        if not stacks_taken:
            stacks_taken = _take_stacks_if_asked(bundle_dir, host, writer.mon, plan)
    writer.stop(write=True)
    return 0


# -- after the job --------------------------------------------------------------------------
def _record_accounted_energy(b: Bundle, job_id: str) -> None:
    """After a PJM job: ``pjstata -j ID``'s output as ``logs/pjm.ID.acct`` (its ``ACCT_ECON``, the
    job's accounted energy, cross-checks the measured ``energy_j``), once, when it has one."""
    name = f"logs/pjm.{job_id}.acct"
    if not SCHEDULER_FILES.match(name) or (b.path / name).exists():
        return
    acc = energy.accounted_energy(job_id)
    if acc.get("value") is not None:
        b.write_text(name, acc["output"])


def _refold_scheduler_files(bundle_dir: Path) -> bool:
    """Re-checksum a final bundle whose only changes are the scheduler's output/statistics files."""
    m = bundle_mod.read_manifest(bundle_dir)
    if m.status not in FINAL_STATUSES:
        return False
    now = bundle_mod.checksum_tree(bundle_dir)
    listed = {k: (v.sha256, v.size) for k, v in m.files.items()}
    changed = {k for k in set(now) | set(listed) if now.get(k) != listed.get(k)}
    if not changed or not all(SCHEDULER_FILES.match(k) for k in changed):
        return False
    b = Bundle.open(bundle_dir)
    finished = m.finished
    b.finalize(m.status, m.reason)
    if finished:
        b.manifest.finished = finished
        b._write_manifest()
    return True


def status(bundle_dir: Path) -> dict[str, Any]:
    """``kit status``: the bundle's status and, while it is not final, its job's state
    (``job.state``/``reason``/``ended`` from the job manager; ``job`` is None for a run
    that was not a batch job)."""
    bundle_dir = Path(bundle_dir)
    m = bundle_mod.read_manifest(bundle_dir)
    out: dict[str, Any] = {"path": str(bundle_dir), "id": m.id, "status": m.status, "reason": m.reason, "job": None}
    if not (bundle_dir / JOB_JSON).is_file():
        return out
    job = _job(bundle_dir)
    out["job"] = {"launcher": job["launcher"], "job_id": job["job_id"], "state": None, "reason": None, "ended": None}
    if m.status not in FINAL_STATUSES:
        st = schedulers.get(job["launcher"]).poll(job["job_id"])
        out["job"].update(state=st.state, reason=st.reason or None, ended=st.ended)
    return out


def cancel(bundle_dir: Path, console: Console, *, wait_s: float | None = None):
    """``kit cancel``: cancel a bundle's batch job through its scheduler (scancel, pjdel), wait
    up to ``wait_s`` (default $KIT_CANCEL_WAIT_S) for the job manager to call it ended, and
    finalize the bundle as ``kit collect`` does (interrupted, the job manager's reason, partial
    logs kept; a job the kit inside had started is finalized by that kit, on the signal the job
    manager sends).

    The cancel is sent unless the job manager says how the job ended (completed, failed,
    cancelled, timeout): also when its state is unknown (cancelling an ended job is harmless),
    and the bundle is collected only once the job manager says how the job ended. A bundle
    already final is not finalized again, but its job, if still pending or running (the bundle
    was finalized after a stall, or collected after a node failure, while the job script holds
    the nodes), is cancelled.

    A bundle that is not a batch job is a KitError (exit 2). A job that had ended is left as it
    is: 0, saying "already ended"; so is the job of a final bundle, once cancelled. Returns an
    Outcome, or an exit code (``EXIT_NOT_READY`` when the job has not ended within ``wait_s``,
    or the job manager cannot say how it ended).
    """
    bundle_dir = Path(bundle_dir)
    job = _job(bundle_dir)  # through the reader, the job id checked against the scheduler's form
    scheduler = schedulers.get(job["launcher"])
    wait_s = CANCEL_WAIT.get() if wait_s is None else wait_s
    poll_s, grace_s = POLL.get(), COLLECT_GRACE.get()
    what = f"{job['launcher']} job {job['job_id']}"
    m = bundle_mod.read_manifest(bundle_dir)
    final = m.status in FINAL_STATUSES
    then = f"the bundle is final ({m.status})" if final else f"`kit collect {bundle_dir}` finalizes the bundle"
    st = scheduler.poll(job["job_id"])
    if st.known_ended or (final and st.ended):
        _say(console, f"{what} already ended ({st.state}); nothing to cancel: {then}")
        return 0
    code = _send_cancel(scheduler, job, what, bundle_dir, final, then, console)
    if code is not None:
        return code
    now = f"its state was unknown ({st.reason})" if st.state == "unknown" else f"it was still {st.state}"
    if final:  # the bundle was finalized without the job: free its nodes, keep the bundle as it is
        _say(console, f"{what} cancelled with {job['launcher']}'s cancel command: {now} although its bundle is "
                      f"final ({m.status}); the bundle is left as it is")
        return 0
    # still queued, and the kit never marked the bundle running: no kit in the job to wait for
    never_started = st.state == "pending" and m.status == "submitted"
    _say(console, f"{what} cancelled with {job['launcher']}'s cancel command; waiting for it to end")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        st = scheduler.poll(job["job_id"])
        if st.ended:  # how, or no longer listed (it will not be listed again)
            break
    if st.state == "unknown":
        return _state_unknown(console, what, st, bundle_dir)
    if not st.ended:
        _say(console, f"{what} has not ended yet ({st.state}); `kit collect {bundle_dir}` once it has")
        return EXIT_NOT_READY
    by = f"cancelled with kit cancel on {socket.gethostname()}"
    return collect(bundle_dir, console, state=JobState(st.state, True, st.exit_code,
                                                       reason=f"{by}; {st.reason}" if st.reason else by),
                   grace_s=0 if never_started else grace_s)


def _send_cancel(scheduler: Scheduler, job: dict[str, Any], what: str, bundle_dir: Path, final: bool, then: str,
                 console: Console) -> int | None:
    """Ask the job manager to cancel the job: None once asked. When it refuses, ``kit cancel``'s
    exit code: 0 when the job has ended meanwhile, 4 when its state is unknown; a KitError
    (exit 2) when the job is still pending or running."""
    try:
        scheduler.cancel(job["job_id"])
        return None
    except KitError as e:
        st = scheduler.poll(job["job_id"])
        if st.known_ended or (final and st.ended):
            _say(console, f"{what} already ended ({st.state}); nothing to cancel: {then}")
            return 0
        if st.state != "unknown":
            raise
        return _state_unknown(console, what, st, bundle_dir, cancel_failed=str(e))


def _state_unknown(console: Console, what: str, st: JobState, bundle_dir: Path, *,
                   cancel_failed: str | None = None) -> int:
    """Say that ``kit cancel`` leaves the bundle as it is, since the job's state is unknown
    (and the cancel failed, if it did), and what to do next: ``EXIT_NOT_READY``."""
    if st.ended:
        text = f"{what}: the job manager no longer lists it ({st.reason}), so how it ended is unknown"
        todo = f"`kit collect {bundle_dir}` finalizes it as such"
    else:
        text = f"{what}: its state is unknown ({st.reason})"
        todo = (f"`kit cancel {bundle_dir}` again once the job manager answers" if cancel_failed else
                f"`kit collect {bundle_dir}` once the job manager says the job has ended")
    if cancel_failed:
        text += f"; the cancel failed ({cancel_failed})"
    _say(console, f"{text}; the bundle is left as it is: {todo}")
    return EXIT_NOT_READY


def _say(console: Console, text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def collect(bundle_dir: Path, console: Console, *, state: JobState | None = None, grace_s: float | None = None):
    """``kit collect``: finalize the bundle of an ended job (returns an Outcome, or an exit code).
    ``grace_s``: how long the kit inside the job may still be finalizing (default COLLECT_GRACE_S)."""
    bundle_dir = Path(bundle_dir)
    b = Bundle.open(bundle_dir)
    job = _job(bundle_dir)
    if b.manifest.status in FINAL_STATUSES:
        if job["launcher"] == "pjm":
            _record_accounted_energy(b, job["job_id"])
        _refold_scheduler_files(bundle_dir)
        b = Bundle.open(bundle_dir)
        if b.manifest.status in ("interrupted", "failed") and "job manager:" not in b.manifest.reason:
            # the kit stopped the ranks on a signal (interrupted), or saw them killed (failed: the
            # job manager signals the ranks too): say what the job manager did (cancel, time limit)
            st = state or schedulers.get(job["launcher"]).poll(job["job_id"])
            if st.ended and (b.manifest.status == "interrupted" or st.state in ("cancelled", "timeout")):
                b.finalize("interrupted", f"{b.manifest.reason}; job manager: {job['launcher']} job "
                                          f"{job['job_id']} {st.state}" + (f" ({st.reason})" if st.reason else ""))
        out = Outcome(status=b.manifest.status, reason=b.manifest.reason, bundle=b)
        print_result(out, console)
        return out
    launcher = schedulers.get(job["launcher"])
    st = state or launcher.poll(job["job_id"])
    if not st.ended:
        now = f"its state is unknown ({st.reason})" if st.state == "unknown" else f"it has not ended ({st.state})"
        console.print(f"{job['launcher']} job {job['job_id']}: {now}; collect it when it has ended, "
                      f"or use `kit run --wait` next time", highlight=False, markup=False, soft_wrap=True)
        return EXIT_NOT_READY
    # the job manager may call the job ended (cancelled, out of time) while the kit inside it
    # is still stopping the ranks and finalizing: let it, rather than finalize twice
    _await_job_kit(bundle_dir, job, grace_s)
    if bundle_mod.read_manifest(bundle_dir).status in FINAL_STATUSES:
        return collect(bundle_dir, console)
    return finalize_dead_job(b, job, launcher, st, console)


def _job_kit_gone(job: dict[str, Any]) -> bool:
    """True when the kit inside the job is known to be gone: it ran on this host and its
    process (pid and start time) no longer exists. Unknown elsewhere: False."""
    return bool(proc.gone_here({"host": job.get("head_node"), "pid": job.get("kit_pid"),
                                "started": job.get("kit_started")}))


def _await_job_kit(bundle_dir: Path, job: dict[str, Any], grace_s: float | None = None) -> None:
    """Wait, up to ``grace_s``, for the bundle of an ended job to be finalized by its own kit."""
    deadline = time.monotonic() + (COLLECT_GRACE.get() if grace_s is None else grace_s)
    while time.monotonic() < deadline and not _job_kit_gone(job):
        if bundle_mod.read_manifest(bundle_dir).status in FINAL_STATUSES:
            return
        time.sleep(0.5)


def finalize_dead_job(b: Bundle, job: dict[str, Any], launcher: Scheduler, st: JobState, console: Console):
    """The job ended before ``kit job-run`` finalized the bundle: finalize it from what is left."""
    plan = load_plan(b.path / "plan.json")
    stats = launcher.stats(b.path)
    state = st.state
    why = st.reason
    if stats:
        reason_txt = stats.get("REASON", "")
        bits = [f"{k} {stats[k]}" for k in ("PJM CODE", "EXIT CODE", "REASON") if stats.get(k) not in (None, "", "-")]
        if bits:
            why = f"{why}; " + ", ".join(bits) if why else ", ".join(bits)
        if re.search(r"elapse|time ?limit", reason_txt, re.I):
            state = "timeout"
    status = "interrupted" if state in ("cancelled", "timeout") else "failed"
    started_run = b.manifest.status == "running"
    what = {"timeout": "reached its time limit", "cancelled": "was cancelled", "failed": "failed",
            "completed": "ended", "unknown": "is no longer known to the job manager"}.get(state, f"ended ({state})")
    reason = (f"{launcher.name} job {job['job_id']} {what} " +
              ("while the ranks ran, before the kit finalized the bundle" if started_run
               else "before the kit started in it") + (f" [{why}]" if why else "") + "; partial logs kept")
    try:  # through the reader's door, capped
        log_text = bundle_reader.read_text(b.path, "logs/launcher.log", cap=LOG_CAP)
    except BundleReadError:
        log_text = ""
    records = parse_lines(log_text.splitlines())
    inner = launchers.get(launcher.launcher)
    argv_line = next((ln[len("# kit: "):] for ln in log_text.splitlines() if ln.startswith("# kit: ")), "")
    monitors = read_node_monitors(b.path)
    rt = runtimes.get(plan.runtime, image=plan.image)
    kit_env = {**plan.env, "KIT_RUN_ID": b.id}
    started = job.get("started") or job.get("submitted") or b.manifest.created
    info = {"id": job["job_id"], "launcher": launcher.name, "inner_launcher": launcher.launcher,
            "nodes": job.get("nodes"), "head_node": job.get("head_node"), "state": state, "scheduler_reason": why,
            "scheduler_stats": stats or None, "script_path": JOB_SCRIPT,
            "script": _script_text(b.path),
            "submitted": job.get("submitted"), "started": job.get("started"),
            "collected_by": "kit collect", "collected_on": socket.gethostname(),
            "note": "host/software in this provenance describe the machine that collected the bundle, "
                    "not the job's nodes (the job died before the kit could record them)"}
    return finalize(RunRecord(
        plan=plan, bundle=b, runtime=rt, status=status, reason=reason, records=records, monitors=monitors,
        rank_failures=inner.failures(log_text), device_memory=device_memory_peaks(log_text.splitlines()),
        host_memory=device_memory_peaks(log_text.splitlines(), "cpu"),
        launcher_rc=None, argv=argv_line.split() if argv_line else [], kit_env=kit_env, env={**kit_env},
        started=started, duration=_elapsed_since(started), extra_provenance={"job": info}), console)


def _elapsed_since(iso: str | None) -> float:
    import datetime as dt

    try:
        t0 = dt.datetime.fromisoformat(iso) if iso else None
    except ValueError:
        t0 = None
    if t0 is None:
        return 0.0
    return max(0.0, (dt.datetime.now(dt.timezone.utc) - t0.astimezone(dt.timezone.utc)).total_seconds())
