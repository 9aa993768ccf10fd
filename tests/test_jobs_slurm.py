"""`kit run --launcher slurm` on a real one-node Slurm cluster (munge, slurmctld, slurmd)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import FAST, bundle_from_output, kit_cli, load, submit_long_run, wait_for_iteration
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


def test_slurm_job_killed_before_finalize_is_collected(slurm_cluster, tmp_path):
    """The kit inside the job dies (SIGKILL, like a node failure): `kit collect` finalizes from what is left."""
    b = submit_long_run("slurm", slurm_cluster, tmp_path)
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


def test_kit_cancel_of_a_running_slurm_job_interrupts_it(slurm_cluster, tmp_path):
    b = submit_long_run("slurm", slurm_cluster, tmp_path)
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
