"""``kit cancel``'s refusals and its "already ended": a bundle is untrusted input, so its job
record is read through the reader and its job id checked against the scheduler's form before
any command (pjdel, scancel) sees it; what ``kit cancel``, ``kit collect`` and ``kit status``
do when the job manager cannot say what the job is doing (pjstat fails) or no longer lists it;
the job of a final bundle still holding its nodes; and what ``kit collect`` (which finalizes a
cancelled job) says of ranks the job manager killed. The job manager's commands are the PJM
stand-ins (tests/standins); the cancel of a real job is in test_jobs_pjm.py (PJM stand-ins)
and test_jobs_slurm.py (a real Slurm cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kit_cli
from kit import bundle as bundle_mod, schedulers
from kit.errors import KitError
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
    ({"launcher": "slurm", "job_id": "\u0661\u0662\u0663"}, "is not a slurm job id"),  # Arabic-Indic digits
    ({"launcher": "pjm", "job_id": "12[\u0663]"}, "is not a pjm job id"),
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


def _standin_job(pjm_standins: dict, jid: str, st: str, pgid: int | None = None) -> Path:
    """The PJM stand-in's record of job ``jid`` in state ``st`` (RUN, EXT, CCL); its state file."""
    d = Path(pjm_standins["PJM_STANDIN_DIR"]) / jid
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"id": jid, "name": "kit-tiny", "st": st, "pgid": pgid}))
    return d / "state.json"


@pytest.fixture
def running_pjm_job(pjm_standins):
    """A job the PJM stand-in lists as running: a `sleep` in its own process group (what the
    stand-in's pjdel kills). (job id, its state file, the process)."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield "4711", _standin_job(pjm_standins, "4711", "RUN", pgid=proc.pid), proc
    proc.kill()
    proc.wait()


@pytest.fixture
def pjstat_down(tmp_path, pjm_standins):
    """The PJM stand-ins, but a pjstat that fails as one whose job manager does not answer
    (a stand-in for that: the real failure cannot be made here)."""
    bin_dir = tmp_path / "down"
    bin_dir.mkdir()
    (bin_dir / "pjstat").write_text('#!/bin/sh\necho "[ERR.] PJM 0007 pjstat Cannot connect to the job manager." >&2\n'
                                    "exit 1\n")
    (bin_dir / "pjstat").chmod(0o755)
    return {**pjm_standins, "PATH": f"{bin_dir}{os.pathsep}{pjm_standins['PATH']}"}


def test_cancel_of_a_job_that_already_ended_says_so_exit_0(tmp_path, pjm_standins):
    state = _standin_job(pjm_standins, "424242", "EXT")
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": "424242"})
    proc = kit_cli("cancel", str(b), env=pjm_standins)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pjm job 424242 already ended (completed); nothing to cancel" in proc.stdout
    assert f"kit collect {b}" in proc.stdout
    assert json.loads(state.read_text())["st"] == "EXT"  # no pjdel
    assert bundle_mod.read_manifest(b).status == "submitted"  # left for kit collect


def test_cancel_of_a_job_pjstat_no_longer_lists_sends_pjdel_and_exits_4_state_unknown(tmp_path, pjm_standins):
    # answered, but not listed: ended, how is unknown; the cancel is sent all the same (the
    # stand-in's pjdel refuses: no such job) and the bundle is left for kit collect
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": "424242"})
    proc = kit_cli("cancel", str(b), env=pjm_standins)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "pjm job 424242: the job manager no longer lists it (pjstat no longer lists job 424242)" in out
    assert "the cancel failed (" in out and "Job 424242 does not exist" in out and "already ended" not in out
    assert f"the bundle is left as it is: `kit collect {b}` finalizes it as such" in out
    assert bundle_mod.read_manifest(b).status == "submitted"


def test_cancel_when_pjstat_fails_still_sends_pjdel_and_does_not_collect(tmp_path, pjstat_down, running_pjm_job):
    jid, state, proc = running_pjm_job
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": jid})
    out = kit_cli("cancel", str(b), env={**pjstat_down, "KIT_CANCEL_WAIT_S": "1", "KIT_POLL_S": "0.2"})
    assert out.returncode == 4, out.stdout + out.stderr
    assert json.loads(state.read_text())["st"] == "CCL" and proc.wait(timeout=30) is not None  # pjdel reached it
    text = " ".join(out.stdout.split())
    assert f"pjm job {jid}: its state is unknown (could not ask PJM about job {jid}: pjstat: [ERR.] PJM 0007" in text
    assert "the bundle is left as it is" in text and "already ended" not in text
    assert bundle_mod.read_manifest(b).status == "submitted"  # not finalized as if the job had ended


def test_collect_and_status_when_pjstat_fails_wait_for_an_answer(tmp_path, pjstat_down, running_pjm_job):
    jid, state, _ = running_pjm_job
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": jid})
    out = kit_cli("collect", str(b), env=pjstat_down)
    assert out.returncode == 4, out.stdout + out.stderr
    assert f"pjm job {jid}: its state is unknown (could not ask PJM" in " ".join(out.stdout.split())
    assert bundle_mod.read_manifest(b).status == "submitted"
    st = kit_cli("status", "--json", str(b), env=pjstat_down)
    job = json.loads(st.stdout)["job"]
    assert st.returncode == 0 and job["state"] == "unknown" and job["ended"] is False, st.stdout
    assert json.loads(state.read_text())["st"] == "RUN"  # nothing was cancelled


def test_cancel_of_a_final_bundle_whose_job_still_runs_cancels_the_job_only(tmp_path, pjm_standins, running_pjm_job):
    jid, state, proc = running_pjm_job
    b = make_bundle(tmp_path / "r")
    (b / "job").mkdir()
    (b / "job" / "job.json").write_text(json.dumps({"launcher": "pjm", "job_id": jid}))
    bundle_mod.Bundle.open(b).finalize("stalled", "no progress for 600 s")  # as the kit in a job finalizes a stall
    manifest = (b / "manifest.json").read_bytes()
    out = kit_cli("cancel", str(b), env=pjm_standins)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"pjm job {jid} cancelled with pjm's cancel command: it was still running although its bundle is final " \
           "(stalled); the bundle is left as it is" in " ".join(out.stdout.split())
    assert json.loads(state.read_text())["st"] == "CCL" and proc.wait(timeout=30) is not None
    assert (b / "manifest.json").read_bytes() == manifest and bundle_mod.verify(b).ok
    again = kit_cli("cancel", str(b), env=pjm_standins)
    assert again.returncode == 0 and f"pjm job {jid} already ended (cancelled); nothing to cancel: the bundle is " \
        "final (stalled)" in " ".join(again.stdout.split()), again.stdout


@pytest.mark.parametrize("call", ["slurm.poll", "slurm.cancel", "slurm.submit", "pjm.poll", "pjm.cancel", "pjm.submit"])
def test_a_job_manager_command_that_hangs_is_one_line_naming_it(call, monkeypatch, tmp_path):
    name, method = call.split(".")

    def hang(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw.get("timeout"))

    monkeypatch.setattr(subprocess, "run", hang)
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/bin/{tool}")  # pjm.submit looks for pjsub first
    with pytest.raises(KitError) as e:
        getattr(schedulers.get(name), method)(str(tmp_path / "job.sh") if method == "submit" else "12")
    assert "` did not answer within " in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).split("`")[1].split()[0] in ("squeue", "scancel", "sbatch", "pjstat", "pjdel", "pjsub")


def test_run_command_stops_a_command_that_does_not_answer():
    with pytest.raises(KitError, match=r"`sleep 30` did not answer within 0.2 s"):
        schedulers.run_command(["sleep", "30"], timeout=0.2, where="test", fix="-")


@pytest.mark.parametrize("name, job_id", [("slurm", "\u0661\u0662\u0663"), ("slurm", "12_\u0663"), ("pjm", "\u0661\u0662"),
                                          ("pjm", "12[\u0663]"), ("slurm", "\uff11\uff12")])  # Arabic-Indic, fullwidth
def test_job_ids_are_ascii_digits(name, job_id):
    with pytest.raises(KitError, match="is not a .* job id"):
        schedulers.get(name).check_job_id(job_id, where="x")
    assert schedulers.get(name).check_job_id("123", where="x") == "123"


@pytest.mark.parametrize("tool, printed", [("sbatch", "\u0661\u0662\u0663"),
                                           ("pjsub", "[INFO] PJM 0000 pjsub Job \u0661\u0662\u0663 submitted.")])
def test_a_submission_that_prints_a_job_id_the_kit_refuses_is_not_recorded(tool, printed, tmp_path, monkeypatch):
    # a stand-in for a sbatch/pjsub that prints non-ASCII digits: the real ones cannot be made to
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / tool).write_text(f"#!{sys.executable}\nprint({printed!r})\n", encoding="utf-8")
    (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(KitError, match=f"'{printed.split()[-2] if tool == 'pjsub' else printed}' is not a"):
        schedulers.get("slurm" if tool == "sbatch" else "pjm").submit(tmp_path / "job.sh")


def test_a_bad_kit_seconds_variable_is_one_line_at_use_not_at_import(tmp_path, pjm_standins):
    env = {"KIT_CANCEL_WAIT_S": "2m"}
    imported = subprocess.run([sys.executable, "-c", "import kit.jobs"], env={**os.environ, **env},
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    _standin_job(pjm_standins, "4711", "RUN")
    b = _submitted(tmp_path / "r", {"launcher": "pjm", "job_id": "4711"})
    proc = kit_cli("cancel", str(b), env={**pjm_standins, **env})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stdout + proc.stderr
    assert "environment variable KIT_CANCEL_WAIT_S: '2m' is not a number of seconds" in proc.stderr
    assert "KIT_CANCEL_WAIT_S=120" in proc.stderr
    assert json.loads((Path(pjm_standins["PJM_STANDIN_DIR"]) / "4711" / "state.json").read_text())["st"] == "RUN"


def test_kit_run_wait_with_a_bad_poll_variable_submits_nothing(tmp_path, pjm_standins):
    proc = kit_cli("run", "tiny", "--preset", "baseline", "--launcher", "pjm", "--wait", "--out", str(tmp_path / "out"),
                   env={**pjm_standins, "KIT_POLL_S": "fast"})
    assert proc.returncode == 2 and "environment variable KIT_POLL_S: 'fast'" in proc.stderr, proc.stdout + proc.stderr
    assert not Path(pjm_standins["PJM_STANDIN_DIR"]).exists()  # pjsub never ran


@pytest.mark.parametrize("value, seconds", [(None, 5.0), ("", 5.0), ("0", 0.0), ("1.5", 1.5), (" 30 ", 30.0)])
def test_seconds_variable_reads_a_plain_number(value, seconds, monkeypatch):
    from kit.envvars import Seconds

    if value is None:
        monkeypatch.delenv("KIT_TEST_S", raising=False)
    else:
        monkeypatch.setenv("KIT_TEST_S", value)
    assert Seconds("KIT_TEST_S", 5.0).get() == seconds


@pytest.mark.parametrize("value", ["2m", "nan", "inf", "-1", "1e999", "5 s"])
def test_seconds_variable_refuses_anything_else(value, monkeypatch):
    from kit.envvars import Seconds

    monkeypatch.setenv("KIT_TEST_S", value)
    with pytest.raises(KitError, match="environment variable KIT_TEST_S: .* is not a number of seconds; set it"):
        Seconds("KIT_TEST_S", 5.0).get()


def _failed_pjm_bundle(tmp_path: Path, pjm_standins: dict, pjm_state: str) -> Path:
    """A bundle the kit in a PJM job finalized as failed (its ranks were killed), and the PJM
    stand-in's record of that job in state ``pjm_state``."""
    b = make_bundle(tmp_path / "r")
    jid = "4711"
    (b / "job").mkdir()
    (b / "job" / "job.json").write_text(json.dumps({"launcher": "pjm", "job_id": jid}))
    bundle_mod.Bundle.open(b).finalize("failed", "launcher exited with code 143; rank 0: signal 15")
    _standin_job(pjm_standins, jid, pjm_state)
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
