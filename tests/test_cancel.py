"""``kit cancel``'s refusals and its "already ended": a bundle is untrusted input, so its job
record is read through the reader and its job id checked against the scheduler's form before
any command (pjdel, scancel) sees it; and what ``kit collect`` (which finalizes a cancelled
job) says of ranks the job manager killed. The cancel of a real job is in test_jobs_pjm.py
(PJM stand-ins) and test_jobs_slurm.py (a real Slurm cluster)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import kit_cli
from kit import bundle as bundle_mod
from synthetic_bundle import make_bundle


def _submitted(out: Path, job: object) -> Path:
    """A bundle as `kit run --launcher pjm` leaves it after submission, with ``job`` as its job record."""
    b = bundle_mod.Bundle.create(out, recipe="tiny", preset="baseline")
    (b.path / "job").mkdir()
    (b.path / "job" / "job.json").write_text(json.dumps(job))
    b.set_status("submitted", "pjm job submitted")
    return b.path


@pytest.fixture
def recording_tools(tmp_path):
    """PATH with pjstat/pjdel/scancel/squeue that only record that they were run (tests only:
    they stand in for the job manager's commands, to show none is reached)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("pjstat", "pjdel", "scancel", "squeue", "scontrol", "sacct"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def test_cancel_of_a_bundle_that_is_not_a_batch_job_is_one_line_exit_2(tmp_path):
    b = make_bundle(tmp_path)
    proc = kit_cli("cancel", str(b))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "job/job.json: missing" in proc.stderr
    assert "not a bundle made by `kit run --launcher slurm|pjm`" in proc.stderr


@pytest.mark.parametrize("job, why", [
    ({"launcher": "pjm", "job_id": "--all"}, "'--all' is not a pjm job id"),
    ({"launcher": "pjm", "job_id": "1; touch /tmp/x"}, "is not a pjm job id"),
    ({"launcher": "slurm", "job_id": "$(id)"}, "is not a slurm job id"),
    ({"launcher": "slurm", "job_id": "12\n13"}, "is not a slurm job id"),
    ({"launcher": "slurm", "job_id": ""}, "is not a slurm job id"),
    ({"launcher": "local", "job_id": "12"}, "launcher 'local' is not a batch scheduler (pjm, slurm)"),
    ({"launcher": "pjm", "job_id": 12}, "not a job record"),
])
def test_cancel_refuses_a_forged_job_record_before_any_command(job, why, tmp_path, recording_tools):
    env, calls = recording_tools
    b = _submitted(tmp_path / "r", job)
    proc = kit_cli("cancel", str(b), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and why in proc.stderr, proc.stderr
    assert f"{b}/job/job.json" in proc.stderr
    assert not calls.exists(), calls.read_text()
    assert bundle_mod.read_manifest(b).status == "submitted"


def test_cancel_does_not_follow_a_job_record_that_is_a_link(tmp_path, recording_tools):
    env, calls = recording_tools
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": "1"})
    elsewhere = tmp_path / "elsewhere.json"
    (b / "job" / "job.json").rename(elsewhere)
    (b / "job" / "job.json").symlink_to(elsewhere)
    proc = kit_cli("cancel", str(b), env=env)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr, proc.stderr
    assert not calls.exists()


def test_cancel_of_a_job_that_already_ended_says_so_exit_0(tmp_path, pjm_standins):
    # the PJM stand-in's pjstat no longer lists the job: ended, as far as the job manager says
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": "424242"})
    proc = kit_cli("cancel", str(b), env=pjm_standins)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pjm job 424242 already ended (unknown); nothing to cancel" in proc.stdout
    assert f"kit collect {b}" in proc.stdout
    assert bundle_mod.read_manifest(b).status == "submitted"  # left for kit collect


def _failed_pjm_bundle(tmp_path: Path, pjm_standins: dict, pjm_state: str) -> Path:
    """A bundle the kit in a PJM job finalized as failed (its ranks were killed), and the PJM
    stand-in's record of that job in state ``pjm_state``."""
    b = make_bundle(tmp_path / "r")
    jid = "4711"
    (b / "job").mkdir()
    (b / "job" / "job.json").write_text(json.dumps({"launcher": "pjm", "job_id": jid}))
    bundle_mod.Bundle.open(b).finalize("failed", "launcher exited with code 143; rank 0: signal 15")
    standin = Path(pjm_standins["PJM_STANDIN_DIR"]) / jid
    standin.mkdir(parents=True)
    (standin / "state.json").write_text(json.dumps({"id": jid, "name": "kit-tiny", "st": pjm_state}))
    return b


def test_collect_calls_ranks_killed_by_a_cancel_interrupted_with_the_job_managers_word(tmp_path, pjm_standins):
    b = _failed_pjm_bundle(tmp_path, pjm_standins, "CCL")
    out = kit_cli("collect", str(b), env=pjm_standins)
    m = bundle_mod.read_manifest(b)
    assert out.returncode == 130 and m.status == "interrupted", (out.stdout, out.stderr, m.reason)
    assert m.reason == "launcher exited with code 143; rank 0: signal 15; job manager: pjm job 4711 cancelled " \
                       "(PJM state CCL)"
    assert bundle_mod.verify(b).ok, bundle_mod.verify(b).problems


def test_collect_leaves_a_run_that_failed_on_its_own_failed(tmp_path, pjm_standins):
    b = _failed_pjm_bundle(tmp_path, pjm_standins, "EXT")
    out = kit_cli("collect", str(b), env=pjm_standins)
    m = bundle_mod.read_manifest(b)
    assert out.returncode == 1 and m.status == "failed" and m.reason == "launcher exited with code 143; rank 0: signal 15"
