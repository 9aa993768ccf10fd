"""The pjm launcher end to end with stand-ins for pjsub/pjstat/pjdel and Fujitsu's mpiexec.

The stand-ins (tests/standins, labelled as such) run the job on this machine, so the
in-job path is the real one: kit job-run, ranks found by PMIX_RANK/PLE_RANK_ON_NODE,
per-rank -std-proc files followed, statistics file folded in by kit collect.
"""

from __future__ import annotations


import pytest

from conftest import FAST, bundle_from_output, kit_cli, load, wait_for_iteration
from kit.bundle import read_manifest, verify

pytestmark = [pytest.mark.slow]


def test_pjm_two_ranks_wait(pjm_standins, tmp_path):
    proc = kit_cli("run", "tiny", "--preset", "tuned", "--launcher", "pjm", "--set", "parallel.dp=2", *FAST,
                   "--wait", "--out", str(tmp_path), env=pjm_standins)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = bundle_from_output(proc.stdout)
    assert verify(b).ok, verify(b).problems
    job, prov, m = load(b, "job/job.json"), load(b, "provenance.json"), load(b, "metrics.json")
    assert prov["job"]["id"] == job["job_id"] == prov["job"]["scheduler_vars"]["PJM_JOBID"]
    assert prov["run"]["argv"][:2] == ["mpiexec", "-np"] and "-std-proc" in prov["run"]["argv"]
    assert sorted(m["ranks"]) == ["0", "1"]
    # -std-proc split as on Fugaku (%j/%m/%/1000r, the stand-in site): logs/stdproc/JOB/1/0/out.1.R
    assert sorted(p.relative_to(b / "logs" / "stdproc").as_posix() for p in (b / "logs" / "stdproc").rglob("out.*")) == \
        [f"{job['job_id']}/1/0/out.1.0", f"{job['job_id']}/1/0/out.1.1"]
    assert load(b, "plan.json")["env"]["GLOO_SOCKET_IFNAME"] == "lo"
    assert len(m["iterations"]) == 6  # followed from the per-rank files
    files = read_manifest(b).files
    assert any(f.endswith(".stats") for f in files)  # written after the kit finalized, folded in


def test_pjm_job_deleted_is_interrupted(pjm_standins, tmp_path, long_run):
    b = long_run("pjm", pjm_standins, tmp_path)
    job_id = load(b, "job/job.json")["job_id"]
    wait_for_iteration(b)
    import subprocess

    subprocess.run(["pjdel", job_id], env={**__import__("os").environ, **pjm_standins}, check=True)
    out = kit_cli("collect", "--wait", str(b), env=pjm_standins, timeout=300)
    m = read_manifest(b)
    assert m.status == "interrupted", (m.reason, out.stdout)
    assert out.returncode == 130
    assert verify(b).ok, verify(b).problems
    assert load(b, "metrics.json")["iterations"]
    # the stand-in, like a job manager, reports the job cancelled while the kit inside it is
    # still stopping the ranks: that kit finalizes the bundle, collect does not do it twice
    assert "collected_by" not in load(b, "provenance.json")["job"]


def test_kit_cancel_interrupts_a_running_pjm_job(pjm_standins, tmp_path, long_run):
    b = long_run("pjm", pjm_standins, tmp_path)
    job_id = load(b, "job/job.json")["job_id"]
    wait_for_iteration(b)
    out = kit_cli("cancel", str(b), env=pjm_standins, timeout=300)
    m = read_manifest(b)
    assert out.returncode == 130, out.stdout + out.stderr
    assert f"pjm job {job_id} cancelled" in out.stdout
    # the kit inside the job stopped the ranks on pjdel's signal and finalized; collect says why
    assert m.status == "interrupted" and "cancelled with kit cancel" in m.reason, m.reason
    assert f"job manager: pjm job {job_id} cancelled" in m.reason
    assert verify(b).ok, verify(b).problems
    assert load(b, "metrics.json")["iterations"]  # what the run logged is kept
    again = kit_cli("cancel", str(b), env=pjm_standins)
    assert again.returncode == 0 and f"pjm job {job_id} already ended" in again.stdout, again.stdout + again.stderr
    assert read_manifest(b).reason == m.reason
