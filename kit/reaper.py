"""If the kit dies, the run it started dies with it; and one way to stop a run's processes.

The launcher runs in its own session, so that a terminal's Ctrl-C reaches the kit, which
then stops the ranks in order and records why. A kit that is killed outright (SIGKILL, the
OOM killer, a hard hang-up) cannot do that, and on a workstation nothing else would: the
ranks would train on, unrecorded, for the rest of the run. Under Slurm or PJM the job
manager would clean up at the end of the job, but only then.

``guard(run_id, grace)`` starts a small sidecar process (this file, run as a script: no
imports beyond the standard library) that holds the read end of a pipe whose write end only
the kit has. Through the pipe the kit tells it the launcher's process group, the rank
processes as the monitor finds them (torchrun starts each worker in a session of its own,
and a container's processes are not the launcher's children) and the runtime's clean-up
commands (``podman rm -f``). When the kit exits, in any way, the pipe closes. If the kit
said ``release`` first (the launcher has ended and the kit is finishing normally), the
sidecar just exits; otherwise it stops the run with ``stop`` and runs the clean-up.

``stop`` is also how the kit itself stops a run (interrupt, stall): SIGTERM to the
launcher's group, so that the launcher stops its ranks in order; after the grace, SIGKILL to
the group and to every rank process still alive. A pid, or a group, is signalled only while
it (a member of it) still carries the run's ``KIT_RUN_ID`` in its environment, so a reused
pid or group id is never hit.

The sidecar is in its own session, so the signals of the kit's terminal do not reach it; it
lives exactly as long as the kit does (plus the grace when it has to stop the run).
"""

from __future__ import annotations

# Only what the sidecar needs while it waits: it starts with every run, so it starts lean;
# json, subprocess and threading are imported where they are used.
import os
import signal
import sys
import time
from contextlib import contextmanager

TYPE_CHECKING = False  # typing itself costs the sidecar 4 ms
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterable, Iterator

RELEASE = "release"


def _ours(pid: int, run_id: str) -> bool:
    """``pid`` is alive (not a zombie) and belongs to run ``run_id``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"KIT_RUN_ID={run_id}".encode() in f.read().split(b"\0")
    except (OSError, IndexError):
        return False


def _group_ours(pgid: int, run_id: str) -> bool:
    """Some live member of process group ``pgid`` belongs to run ``run_id`` (so the group id
    is still the launcher's, not reused after the launcher's group emptied)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and _ours(int(entry), run_id):
            return True
    return False


def _signal(pgid: int | None, pids: Iterable[int], sig: int) -> None:
    if pgid is not None:  # the caller checked the group is the run's
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def survivors(pids: Iterable[int], run_id: str) -> list[int]:
    """The processes of ``pids`` still alive and still run ``run_id``'s."""
    return [p for p in pids if _ours(p, run_id)]


def stop(pgid: int | None, pids: Iterable[int], run_id: str, grace: float,
         poll: Callable[[], object] = lambda: None, *, term_pids: bool = False) -> None:
    """SIGTERM the launcher's group ``pgid`` (and the rank processes ``pids`` with
    ``term_pids``: ranks whose launcher is gone); once the group and ``pids`` are gone,
    return; after ``grace`` seconds, SIGKILL what is left. ``poll`` reaps the launcher where
    the caller is its parent (a zombie still counts as a group member)."""
    pids = set(pids)
    group = pgid if pgid is not None and _group_ours(pgid, run_id) else None
    _signal(group, survivors(pids, run_id) if term_pids else [], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        poll()
        left = [p for p in pids if _ours(p, run_id)]
        group = group if group is not None and _group_ours(group, run_id) else None
        if not left and group is None:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    _signal(group, left, signal.SIGKILL)


class Guard:
    """The kit's end of the pipe to the sidecar (inactive, with ``why_not``, if none started)."""

    def __init__(self, side: subprocess.Popen | None, why_not: str = ""):
        import threading

        self._side = side
        self.why_not = why_not
        self._told: set[int] = set()
        self._lock = threading.RLock()

    @property
    def active(self) -> bool:
        return self._side is not None

    def _say(self, line: str) -> None:
        if self._side is None:
            return
        with self._lock:
            try:
                self._side.stdin.write((line + "\n").encode())
                self._side.stdin.flush()
            except (OSError, ValueError):  # the sidecar is gone, or the pipe closed: nothing to tell
                pass

    def group(self, pgid: int) -> None:
        self._say(f"group {pgid}")

    def ranks(self, pids: Iterable[int]) -> None:
        """Rank processes (and their children) the monitor found; safe from any thread."""
        with self._lock:
            new = set(pids) - self._told
            self._told |= new
            for pid in sorted(new):
                self._say(f"pid {pid}")

    def cleanup(self, commands: Iterable[list[str]]) -> None:
        import json

        for argv in commands:
            self._say("cleanup " + json.dumps(argv))


@contextmanager
def guard(run_id: str, grace: float) -> Iterator[Guard]:
    """While the block runs, the kit's death stops what it told the guard about.

    A normal exit of the block releases the guard. An exception does not: the sidecar stops
    the run once the pipe closes, because the kit may not have stopped the launcher.
    """
    import subprocess

    side, why_not = None, ""
    if not sys.executable:
        why_not = "no path to this Python interpreter (sys.executable is empty)"
    else:
        try:
            side = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), run_id, str(grace)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            why_not = f"could not start {sys.executable}: {e}"
    g = Guard(side, why_not)
    released = False
    try:
        yield g
        released = True
    finally:
        if side is not None:
            if released:
                g._say(RELEASE)
            try:
                side.stdin.close()
            except OSError:
                pass
            try:
                side.wait(timeout=5 if released else grace + 5)
            except subprocess.TimeoutExpired:
                pass


def main(argv: list[str]) -> int:
    run_id, grace = argv[0], float(argv[1])
    said = b""
    while chunk := os.read(0, 65536):
        said += chunk
    pgid, pids, cleanup = None, set(), []
    for line in said.decode(errors="replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == RELEASE:
            return 0
        if word == "group":
            pgid = int(rest)
        elif word == "pid":
            pids.add(int(rest))
        elif word == "cleanup":
            import json

            cleanup.append(json.loads(rest))
    stop(pgid, pids, run_id, grace)
    import subprocess

    for argv_ in cleanup:
        try:
            subprocess.run(argv_, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
