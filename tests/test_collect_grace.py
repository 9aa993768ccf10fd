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


def test_a_late_job_kit_leaves_a_collected_bundle_as_it_is(tmp_path):
    """The other order: `kit collect` finalized after its grace, then the job's kit ends."""
    import io

    from rich.console import Console

    from kit import plan as plan_mod, runner, runtimes

    plan = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
    b = _running_bundle(tmp_path)
    runner.write_inputs(b, plan)
    b.write_json("metrics.json", {"summary": {}, "iterations": []})
    b.write_json("provenance.json", {"plan": plan.summary(), "runtime": {}, "software": {}, "host": {},
                                     "job": {"collected_by": "kit collect"}})
    b.finalize("failed", "slurm job 1 cancelled before the kit finalized the bundle")
    before = {p.name: p.read_bytes() for p in b.path.iterdir() if p.is_file()}
    out = runner.finalize(plan, b, runtimes.get("host"), status="interrupted", reason="SIGTERM received by kit",
                          records=[], monitors=[], rank_failures={}, launcher_rc=None, argv=[], kit_env={}, env={},
                          started="", duration=1.0, stacks={}, console=Console(file=io.StringIO()), software={})
    assert out.status == "failed"
    assert {p.name: p.read_bytes() for p in b.path.iterdir() if p.is_file()} == before
