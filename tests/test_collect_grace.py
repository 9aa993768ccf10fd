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
from conftest import load
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
        _await_job_kit(b.path, job, grace_s=120)
        waited = time.monotonic() - t0
        assert read_manifest(b.path).status == "interrupted"
        assert 0.9 < waited < 100  # returned once the job's kit had finalized, not at the 120 s grace
    finally:
        kit.kill()
        kit.wait()


def test_collect_does_not_wait_for_a_dead_job_kit(tmp_path):
    b = _running_bundle(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass", "job-run"])
    gone.wait()
    t0 = time.monotonic()
    _await_job_kit(b.path, {"head_node": socket.gethostname(), "kit_pid": gone.pid}, grace_s=120)
    assert time.monotonic() - t0 < 100 and read_manifest(b.path).status == "running"  # not the 120 s grace


def test_collect_waits_at_most_the_grace_where_it_cannot_tell(tmp_path):
    b = _running_bundle(tmp_path)
    t0 = time.monotonic()
    _await_job_kit(b.path, {"head_node": "another-node", "kit_pid": 1}, grace_s=1.5)
    assert time.monotonic() - t0 >= 1.5  # the whole grace: nothing tells it the kit is gone


def test_a_late_job_kit_leaves_a_collected_bundle_as_it_is(tmp_path):
    """The other order: `kit collect` finalized after its grace, then the job's kit ends."""
    import io

    from rich.console import Console

    from kit import finalize, plan as plan_mod, runner, runtimes

    plan = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
    b = _running_bundle(tmp_path)
    runner.write_inputs(b, plan)
    b.write_json("metrics.json", {"summary": {}, "iterations": []})
    b.write_json("provenance.json", {"plan": plan.summary(), "runtime": {}, "software": {}, "host": {},
                                     "job": {"collected_by": "kit collect"}})
    b.finalize("failed", "slurm job 1 cancelled before the kit finalized the bundle")
    before = {p.name: p.read_bytes() for p in b.path.iterdir() if p.is_file()}
    out = finalize.finalize(finalize.RunRecord(
        plan=plan, bundle=b, runtime=runtimes.get("host"), status="interrupted", reason="SIGTERM received by kit",
        records=[], monitors=[], rank_failures={}, launcher_rc=None, argv=[], kit_env={}, env={}, started="",
        duration=1.0, software={}), Console(file=io.StringIO()))
    assert out.status == "failed"
    assert {p.name: p.read_bytes() for p in b.path.iterdir() if p.is_file()} == before


# --- one finalizer: the kit that creates finalizer.json ------------------------------------

def _finalize(tmp_path, b=None):
    """finalize.finalize as a kit ending its run calls it; returns (outcome, console text)."""
    import io

    from rich.console import Console

    from kit import finalize, plan as plan_mod, runner, runtimes

    plan = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
    if b is None:
        b = _running_bundle(tmp_path)
    runner.write_inputs(b, plan)
    buf = io.StringIO()
    out = finalize.finalize(finalize.RunRecord(
        plan=plan, bundle=b, runtime=runtimes.get("host"), status="interrupted", reason="SIGTERM received by kit",
        records=[], monitors=[], rank_failures={}, launcher_rc=None, argv=[], kit_env={}, env={}, started="",
        duration=1.0, software={}), Console(file=buf, width=200))
    return out, buf.getvalue()


def _claim(b, *, age_s: float = 0.0, **fields):
    """A claim as another kit writes it, ``age_s`` old by the file's mtime."""
    import json
    import os

    p = b.path / "finalizer.json"
    p.write_text(json.dumps({"command": "kit collect", "claimed": "(as written by that kit)", **fields}))
    t = time.time() - age_s
    os.utime(p, (t, t))


def test_the_finalization_claim_is_exclusive(tmp_path):
    import os

    from kit import claim

    b = _running_bundle(tmp_path)
    assert claim.claim(b.path) and claim.mine(b.path)
    assert not claim.claim(b.path)  # held: by this process, as it happens
    held = claim.read(b.path)
    assert held["pid"] == os.getpid() and held["command"].startswith("kit")
    assert oct(os.stat(b.path / "finalizer.json").st_mode & 0o777) == "0o600"


def test_a_kit_finalizing_the_bundle_is_waited_for_and_left_alone(tmp_path):
    import psutil

    from kit import plan as plan_mod

    plan = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
    b = _running_bundle(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "kit", "collect"])
    try:
        _claim(b, host=socket.gethostname(), pid=other.pid, started=psutil.Process(other.pid).create_time())

        def the_other_kit_finishes():
            b.write_json("metrics.json", {"summary": {"by": "the other kit"}, "iterations": []})
            b.write_json("provenance.json", {"plan": plan.summary(), "runtime": {}, "software": {}, "host": {}})
            b.finalize("failed", "slurm job 1 cancelled")

        threading.Timer(1.0, the_other_kit_finishes).start()
        out, text = _finalize(tmp_path, b)
    finally:
        other.kill()
        other.wait()
    assert out.status == "failed" and "already finalized by another kit" in text
    assert load(b.path, "metrics.json")["summary"] == {"by": "the other kit"}  # nothing of this kit's written


def test_a_claim_left_by_a_dead_kit_is_taken_over(tmp_path):
    from kit import claim
    from kit.bundle import verify

    b = _running_bundle(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _claim(b, host=socket.gethostname(), pid=dead.pid, started=1.0)
    out, text = _finalize(tmp_path, b)
    assert out.status == "interrupted" and "is gone: finalizing it here" in text
    assert claim.read(b.path)["took_over_from"]["pid"] == dead.pid
    assert verify(b.path).ok
    assert not [p.name for p in b.path.iterdir() if p.name.endswith(".tmp")]  # no probe or stale claim left


def test_a_claim_from_another_host_is_left_to_it_until_stale(tmp_path, monkeypatch):
    """Fresh: waited for, then left (nothing written). Older than claim.STALE_S by the file
    server's clock (the claim file's mtime): taken over. An unreadable claim (a kit died
    writing it) is judged the same way."""
    from kit import finalize

    monkeypatch.setattr(finalize, "FINALIZE_WAIT_S", 1.0)
    b = _running_bundle(tmp_path)
    _claim(b, host="another-node", pid=1, started=1.0)
    out, text = _finalize(tmp_path, b)
    assert out.status == "running" and "being finalized by kit collect on another-node" in text
    assert read_manifest(b.path).status == "running" and not (b.path / "metrics.json").exists()
    _claim(b, host="another-node", pid=1, started=1.0, age_s=3600)
    out, _ = _finalize(tmp_path, b)
    assert out.status == "interrupted" and read_manifest(b.path).status == "interrupted"

    b2 = _running_bundle(tmp_path / "second")
    (b2.path / "finalizer.json").write_text("")
    out, _ = _finalize(tmp_path, b2)
    assert out.status == "running"
    t = time.time() - 3600
    import os

    os.utime(b2.path / "finalizer.json", (t, t))
    out, _ = _finalize(tmp_path, b2)
    assert out.status == "interrupted"


def test_of_two_kits_taking_over_one_wins(tmp_path):
    from kit import claim

    b = _running_bundle(tmp_path)
    _claim(b, host="another-node", pid=1, started=1.0, age_s=3600)
    stale = claim.read(b.path)
    assert claim.take_over(b.path, stale)
    assert not claim.take_over(b.path, stale)  # the second sees the first's claim, not the stale one
    assert claim.read(b.path)["took_over_from"] == stale and claim.mine(b.path)
