"""`kit run --launcher slurm` on a real one-node Slurm cluster (munge, slurmctld, slurmd)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import FAST, bundle_from_output, kit_cli, load, wait_for_iteration
from kit.bundle import read_manifest, verify

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_slurm_two_ranks_wait(slurm_cluster, tmp_path):
    proc = kit_cli("run", "tiny", "--preset", "tuned", "--launcher", "slurm", "--set", "parallel.dp=2", *FAST,
                   "--wait", "--out", str(tmp_path), env=slurm_cluster)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = bundle_from_output(proc.stdout)
    v = verify(b)
    assert v.ok, v.problems
    assert read_manifest(b).status == "ok"
    job = load(b, "job/job.json")
    prov = load(b, "provenance.json")
    m = load(b, "metrics.json")
    # the job id Slurm gave, and the kit saw it inside the job
    assert job["job_id"].isdigit() and prov["job"]["id"] == job["job_id"]
    assert prov["job"]["scheduler_vars"]["SLURM_JOB_ID"] == job["job_id"]
    assert prov["job"]["nodes"] and prov["job"]["script"].startswith("#!/bin/bash")
    assert "#SBATCH --ntasks-per-node=2" in (b / "job" / "job.sh").read_text()
    assert prov["run"]["argv"][0] == "srun"
    # two ranks, each seen with its own memory and with tcmalloc mapped
    assert sorted(m["ranks"]) == ["0", "1"]
    for r in m["ranks"].values():
        assert r["peak_rss_mib"] > 50
        assert r["allocator"]["allocator"] == "tcmalloc"
    settings = {s["name"]: s for s in prov["plan"]["settings"]}
    assert settings["allocator"]["verified"] is True
    assert settings["ranks_per_node"]["verified"] is True
    assert settings["freq_mhz"]["requested"] == 2200 and settings["freq_mhz"]["seen"]["source"]
    assert len(m["iterations"]) == 6
    assert any(f.startswith("logs/slurm-") for f in read_manifest(b).files)


def test_slurm_job_killed_before_finalize_is_collected(slurm_cluster, tmp_path, long_run):
    """The kit inside the job dies (SIGKILL, like a node failure): `kit collect` finalizes from what is left."""
    b = long_run("slurm", slurm_cluster, tmp_path)
    assert read_manifest(b).status == "submitted"
    st = kit_cli("status", str(b), env=slurm_cluster)
    assert "job " in st.stdout and st.returncode == 0
    wait_for_iteration(b)  # then kill kit job-run hard
    assert kit_cli("collect", str(b), env=slurm_cluster).returncode == 4  # still running
    pids = subprocess.run(["pgrep", "-f", f"kit job-run {b}"], capture_output=True, text=True).stdout.split()
    assert pids
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    out = kit_cli("collect", "--wait", str(b), env=slurm_cluster, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    m = read_manifest(b)
    assert m.status == "failed" and "before the kit finalized" in m.reason and "partial logs kept" in m.reason
    assert verify(b).ok, verify(b).problems
    metrics = load(b, "metrics.json")
    assert metrics["iterations"], "iterations logged before the kill are kept"
    assert json.loads((b / "provenance.json").read_text())["job"]["collected_by"] == "kit collect"


def test_kit_cancel_of_a_running_slurm_job_interrupts_it(slurm_cluster, tmp_path, long_run):
    b = long_run("slurm", slurm_cluster, tmp_path)
    job_id = load(b, "job/job.json")["job_id"]
    wait_for_iteration(b)
    out = kit_cli("cancel", str(b), env=slurm_cluster, timeout=300)
    assert out.returncode == 130, out.stdout + out.stderr
    m = read_manifest(b)
    assert m.status == "interrupted" and "cancelled with kit cancel" in m.reason, m.reason
    assert f"slurm job {job_id}" in m.reason
    assert verify(b).ok, verify(b).problems
    assert load(b, "metrics.json")["iterations"], "what the run logged is kept"
    again = kit_cli("cancel", str(b), env=slurm_cluster)
    assert again.returncode == 0 and "already ended" in again.stdout, again.stdout + again.stderr


def test_kit_cancel_of_a_pending_slurm_job_finalizes_it_before_it_starts(slurm_cluster, tmp_path):
    env = {**os.environ, **slurm_cluster}
    blocker = subprocess.run(["sbatch", "--parsable", "--exclusive", "--output", "/dev/null", "--wrap", "sleep 600"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        proc = kit_cli("run", "tiny", "--preset", "baseline", "--launcher", "slurm", *FAST, "--out", str(tmp_path),
                       env=slurm_cluster)
        assert proc.returncode == 0, proc.stderr
        b = bundle_from_output(proc.stdout)
        job_id = load(b, "job/job.json")["job_id"]
        st = kit_cli("status", str(b), env=slurm_cluster)
        assert f"slurm job {job_id}: pending" in st.stdout, st.stdout
        out = kit_cli("cancel", str(b), env=slurm_cluster, timeout=300)
        assert out.returncode == 130, out.stdout + out.stderr
        m = read_manifest(b)
        assert m.status == "interrupted", m.reason
        assert f"slurm job {job_id} was cancelled before the kit started in it" in m.reason
        assert "cancelled with kit cancel" in m.reason
        assert verify(b).ok, verify(b).problems
        assert load(b, "provenance.json")["job"]["collected_by"] == "kit collect"
    finally:
        subprocess.run(["scancel", blocker], env=env, capture_output=True)


def _sleep_job(env: dict, *extra: str) -> str:
    """A plain Slurm job that sleeps ten minutes (scancel it): its id."""
    return subprocess.run(["sbatch", "--parsable", "--output", "/dev/null", *extra, "--wrap", "sleep 600"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip().split(";")[0]


def _final_bundle_of(out, job_id: str):
    """A final bundle (stalled, as the kit in a job finalizes a stall) whose job record names ``job_id``."""
    from kit.bundle import Bundle
    from synthetic_bundle import make_bundle

    b = make_bundle(out)
    (b / "job").mkdir()
    (b / "job" / "job.json").write_text(json.dumps({"launcher": "slurm", "job_id": job_id}))
    Bundle.open(b).finalize("stalled", "no progress for 600 s")
    return b


def test_kit_cancel_of_a_final_bundle_whose_job_still_runs_scancels_it(slurm_cluster, tmp_path):
    env = {**os.environ, **slurm_cluster}
    job_id = _sleep_job(env)
    try:
        b = _final_bundle_of(tmp_path / "r", job_id)
        manifest = (b / "manifest.json").read_bytes()
        out = kit_cli("cancel", str(b), env=slurm_cluster)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"slurm job {job_id} cancelled with slurm's cancel command" in out.stdout
        assert "the bundle is left as it is" in " ".join(out.stdout.split())
        state = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
        assert "JobState=CANCELLED" in state, state
        assert (b / "manifest.json").read_bytes() == manifest and verify(b).ok
    finally:
        subprocess.run(["scancel", job_id], env=env, capture_output=True)


def _controller_down(slurm_cluster: dict, tmp_path) -> dict:
    """The test cluster's slurm.conf with its controller moved to a port nothing listens on
    (and short client timeouts): Slurm's commands fail as when the controller is down."""
    conf = Path(slurm_cluster["SLURM_CONF"]).read_text()
    conf = re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=6999", conf) + "MessageTimeout=1\nTCPTimeout=1\n"
    (tmp_path / "down.conf").write_text(conf)
    return {**slurm_cluster, "SLURM_CONF": str(tmp_path / "down.conf")}


def test_a_job_slurm_cannot_be_asked_about_is_unknown_not_ended(slurm_cluster, tmp_path, monkeypatch):
    from kit import schedulers

    env = {**os.environ, **slurm_cluster}
    job_id = _sleep_job(env)
    try:
        monkeypatch.setenv("SLURM_CONF", _controller_down(slurm_cluster, tmp_path)["SLURM_CONF"])
        st = schedulers.get("slurm").poll(job_id)
        assert (st.state, st.ended) == ("unknown", False), st
        assert f"could not ask Slurm about job {job_id}: squeue: " in st.reason
        assert "Unable to contact slurm controller" in st.reason
        monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
        assert schedulers.get("slurm").poll(job_id).state in ("pending", "running")
        # the controller answers, and does not know the job: it is not queued nor running
        gone = schedulers.get("slurm").poll("99999999")
        assert (gone.state, gone.ended) == ("unknown", True) and "Slurm no longer knows job" in gone.reason
    finally:
        subprocess.run(["scancel", job_id], env=env, capture_output=True)


def test_kit_cancel_and_collect_with_the_controller_down_do_not_finalize(slurm_cluster, tmp_path):
    env = {**os.environ, **slurm_cluster}
    job_id = _sleep_job(env)
    try:
        from kit.bundle import Bundle

        b = Bundle.create(tmp_path / "r", recipe="tiny", preset="baseline")
        b.write_json("job/job.json", {"launcher": "slurm", "job_id": job_id})
        b.set_status("running", f"slurm job {job_id} running")
        down = _controller_down(slurm_cluster, tmp_path)
        out = kit_cli("cancel", str(b.path), env=down)
        assert out.returncode == 4, out.stdout + out.stderr
        text = " ".join(out.stdout.split())
        assert f"slurm job {job_id}: its state is unknown (could not ask Slurm about job {job_id}" in text
        assert "the cancel failed (" in text and "Unable to contact slurm controller" in text
        assert "already ended" not in text
        col = kit_cli("collect", str(b.path), env=down)
        assert col.returncode == 4 and "its state is unknown" in col.stdout, col.stdout + col.stderr
        assert read_manifest(b.path).status == "running"
    finally:
        subprocess.run(["scancel", job_id], env=env, capture_output=True)
