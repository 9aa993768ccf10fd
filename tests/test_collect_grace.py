"""`kit collect` and the kit inside an ended job never both finalize a bundle.

A job manager reports a job cancelled (scancel, pjdel) or out of time while the kit inside
it is still stopping the ranks and finalizing. `kit collect` waits for that kit, and
finalizes the bundle itself only once it is gone or silent past the grace period.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from kit.bundle import Bundle, read_manifest
from kit.jobs import _await_job_kit


def _running_bundle(tmp_path):
    b = Bundle.create(tmp_path, recipe="tiny", preset="baseline")
    b.set_status("running", "slurm job 1 running")
    return b


def test_collect_waits_for_a_live_job_kit(tmp_path):
    b = _running_bundle(tmp_path)
    # a live process that looks like the kit inside the job, on this host
    kit = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "job-run"])
    try:
        job = {"head_node": socket.gethostname(), "kit_pid": kit.pid}
        threading.Timer(1.0, lambda: b.finalize("interrupted", "SIGTERM received by kit")).start()
        t0 = time.monotonic()
        _await_job_kit(b.path, job, grace_s=20)
        waited = time.monotonic() - t0
        assert read_manifest(b.path).status == "interrupted"
        assert 0.9 < waited < 10  # returned once the job's kit had finalized, not at the grace
    finally:
        kit.kill()
        kit.wait()


def test_collect_does_not_wait_for_a_dead_job_kit(tmp_path):
    b = _running_bundle(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass", "job-run"])
    gone.wait()
    t0 = time.monotonic()
    _await_job_kit(b.path, {"head_node": socket.gethostname(), "kit_pid": gone.pid}, grace_s=20)
    assert time.monotonic() - t0 < 2 and read_manifest(b.path).status == "running"


def test_collect_waits_at_most_the_grace_where_it_cannot_tell(tmp_path):
    b = _running_bundle(tmp_path)
    t0 = time.monotonic()
    _await_job_kit(b.path, {"head_node": "another-node", "kit_pid": 1}, grace_s=1.5)
    assert 1.4 < time.monotonic() - t0 < 5
