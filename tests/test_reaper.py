"""The reaper: when the kit dies, the process group of its launcher is stopped.

A real process group (``sleep`` in its own session, with a child) stands in for the
launcher and its ranks; the kit's death is the closing of the guard's pipe without a
release, which is what the kernel does to the pipe when the kit is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kit import reaper


def _group() -> subprocess.Popen:
    # a launcher with a child that ignores nothing: both must go
    return subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"], start_new_session=True)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _gone_within(pgid: int, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()  # reap the sh so its pid does not linger as a zombie member
        if not _alive(pgid):
            return True
        time.sleep(0.1)
    return False


def test_a_normal_exit_releases_the_group():
    proc = _group()
    try:
        with reaper.guard(proc.pid, grace=1):
            pass
        time.sleep(0.5)
        assert proc.poll() is None and _alive(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_an_exception_in_the_kit_stops_the_group():
    proc = _group()
    try:
        with pytest.raises(RuntimeError):
            with reaper.guard(proc.pid, grace=1):
                raise RuntimeError("the kit failed while the ranks ran")
        assert _gone_within(proc.pid, proc, 10)
    finally:
        if _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_killed_kit_stops_the_group_with_sigkill_after_the_grace():
    # the "kit" is a python that starts the guard and is then SIGKILLed; the group ignores
    # SIGTERM, so only the escalation to SIGKILL ends it
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300; wait"], start_new_session=True)
    kit = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from kit import reaper\n"
        "with reaper.guard(%d, grace=1):\n"
        "    print('guarded', flush=True); time.sleep(300)\n") % proc.pid],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(reaper.__file__)))
    try:
        assert kit.stdout.readline().strip() == "guarded"
        time.sleep(0.5)
        assert _alive(proc.pid)  # a guard alone kills nothing
        kit.kill()
        kit.wait()
        assert _gone_within(proc.pid, proc, 15)
    finally:
        kit.kill()
        if _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
