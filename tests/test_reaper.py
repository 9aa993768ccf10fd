"""The reaper: when the kit dies, its run is stopped and cleaned up.

Real processes stand in for a run: a launcher (``sh`` in its own session, with a child) and
a rank in a session of its own, as torchrun starts its workers; both carry the run's
``KIT_RUN_ID``. The kit's death is a Python process holding the guard that is SIGKILLed, or
the guard's block raising.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit import reaper

REPO = Path(__file__).resolve().parents[1]
IGNORE_TERM = "trap '' TERM; "  # an ignored signal stays ignored across exec: sleep ignores it too


def _start(script: str, run_id: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "KIT_RUN_ID"}
    if run_id:
        env["KIT_RUN_ID"] = run_id
    return subprocess.Popen(["sh", "-c", script], start_new_session=True, env=env)


def _gone_within(procs: list[subprocess.Popen], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            return True
        time.sleep(0.1)
    return False


def _cleanup(*procs: subprocess.Popen) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


@pytest.fixture
def run(request):
    """A launcher group and a rank in its own session, both of run ``test-<name>``."""
    run_id = f"reaper-{request.node.name}-{os.getpid()}"
    launcher = _start("sleep 300 & sleep 300; wait", run_id)
    rank = _start(IGNORE_TERM + "exec sleep 300", run_id)
    yield run_id, launcher, rank
    _cleanup(launcher, rank)


def test_a_normal_exit_releases_the_run(run):
    run_id, launcher, rank = run
    with reaper.guard(run_id, grace=1) as g:
        assert g.active, g.why_not
        g.group(launcher.pid)
        g.ranks([rank.pid])
    time.sleep(1.5)
    assert launcher.poll() is None and rank.poll() is None


def test_an_exception_in_the_kit_stops_the_run(run):
    run_id, launcher, rank = run
    with pytest.raises(RuntimeError):
        with reaper.guard(run_id, grace=1) as g:
            g.group(launcher.pid)
            g.ranks([rank.pid])
            raise RuntimeError("the kit failed while the ranks ran")
    # the launcher goes on SIGTERM; the rank ignores it and goes on SIGKILL after the grace
    assert _gone_within([launcher, rank], 10)


def test_a_killed_kit_stops_the_run_and_cleans_up(run, tmp_path):
    run_id, launcher, rank = run
    stranger = _start(IGNORE_TERM + "exec sleep 300", None)  # told as a rank, but not of this run
    marker = tmp_path / "cleaned"
    kit = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from kit import reaper\n"
        f"with reaper.guard({run_id!r}, grace=1) as g:\n"
        f"    g.group({launcher.pid}); g.ranks([{rank.pid}, {stranger.pid}])\n"
        f"    g.cleanup([['touch', {str(marker)!r}]])\n"
        "    print('guarded', flush=True); time.sleep(300)\n")],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert kit.stdout.readline().strip() == "guarded"
        time.sleep(0.5)
        assert launcher.poll() is None and rank.poll() is None  # a guard alone stops nothing
        kit.kill()
        kit.wait()
        assert _gone_within([launcher, rank], 15)
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists()  # the runtime's clean-up ran (podman rm -f in real runs)
        assert stranger.poll() is None  # a pid whose KIT_RUN_ID is not the run's is never signalled
    finally:
        kit.kill()
        _cleanup(stranger)


def test_stop_escalates_to_the_ranks_and_spares_others(run):
    """``stop`` as the kit uses it on an interrupt or a stall."""
    run_id, launcher, rank = run
    stranger = _start(IGNORE_TERM + "exec sleep 300", None)
    try:
        t0 = time.monotonic()
        reaper.stop(launcher.pid, [rank.pid, stranger.pid], run_id, grace=1, poll=launcher.poll)
        assert time.monotonic() - t0 < 60  # escalated after its 1 s grace; it does not wait on the stranger
        assert _gone_within([launcher, rank], 30)
        assert stranger.poll() is None
    finally:
        _cleanup(stranger)
