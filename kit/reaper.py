"""If the kit dies, the ranks it started die with it.

The launcher runs in its own session, so that a terminal's Ctrl-C reaches the kit, which
then stops the ranks in order and records why. A kit that is killed outright (SIGKILL, the
OOM killer, a closed ssh session that takes it down hard) cannot do that, and on a
workstation nothing else would: the ranks would train on, unrecorded, for the rest of the
run. Under Slurm or PJM the job manager would clean up at the end of the job, but only then.

``guard(pgid)`` starts a small sidecar process (this file, run as a script: no imports
beyond the standard library) that holds the read end of a pipe whose write end only the kit
has. When the kit exits, in any way, the pipe closes. If the kit said ``release`` first (the
launcher has ended and the kit is finishing normally), the sidecar just exits; otherwise it
sends SIGTERM to the launcher's process group and SIGKILL after the grace, as the kit itself
would have.

The sidecar is in its own session, so the signals of the kit's terminal do not reach it; it
lives exactly as long as the kit does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

RELEASE = b"release\n"


@contextmanager
def guard(pgid: int, grace: float) -> Iterator[None]:
    """While the block runs, the kit's death kills process group ``pgid``.

    A normal exit of the block releases the guard. An exception does not: the sidecar stops
    the group once the kit has gone, because the kit may not have stopped the launcher.
    """
    try:
        side = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(pgid), str(grace)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:  # no guard is no reason to lose the run
        yield
        return
    try:
        yield
        side.stdin.write(RELEASE)
    finally:
        try:
            side.stdin.close()
        except OSError:
            pass
        try:
            side.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # it stops the group on its own (grace + at most a few seconds)


def _stop_group(pgid: int, grace: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    pgid, grace = int(argv[0]), float(argv[1])
    said = b""
    while chunk := os.read(0, 64):
        said += chunk
    if RELEASE not in said:
        _stop_group(pgid, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
