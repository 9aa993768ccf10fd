"""`.ci/slurm.sh`'s conf writer, sourced as scripts/test.sh sources it (no `set -e`): every
setting slurm_conf needs is checked, and a write_conf that fails returns 1 and leaves no
half-written slurm.conf for a later `start` to take as written. Needs only bash."""

from __future__ import annotations

import subprocess

import pytest

from conftest import REPO

ALL = ["title=t", "cluster=c", "ctl=h", "state=/s", "spool=/sp", "pids=/p", "logs=/l", "slurmd_log=d.log",
       "kill_wait=5"]


def _sourced(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source {REPO / '.ci' / 'slurm.sh'}; {script}"], capture_output=True,
                          text=True, timeout=60)


def test_slurm_conf_writes_every_setting_it_is_given():
    out = _sourced("slurm_conf " + " ".join(ALL))
    assert out.returncode == 0, out.stderr
    assert "ClusterName=c\n" in out.stdout and "KillWait=5\n" in out.stdout and "SlurmdLogFile=/l/d.log\n" in out.stdout


@pytest.mark.parametrize("missing", ["cluster", "kill_wait", "slurmd_log"])
def test_slurm_conf_refuses_a_missing_or_empty_setting(missing):
    given = [kv for kv in ALL if not kv.startswith(f"{missing}=")]
    for args in (given, given + [f"{missing}="]):
        out = _sourced("slurm_conf " + " ".join(args))
        assert out.returncode == 2 and out.stdout == "", out.stdout
        assert f"slurm_conf: setting {missing} is missing" in out.stderr


def test_write_conf_that_fails_returns_1_and_leaves_no_conf(tmp_path):
    # slurm_conf failing inside write_conf's redirected group: swallowed before, when sourced
    out = _sourced(f"DIR={tmp_path}; CONF=$DIR/slurm.conf; slurm_conf() {{ return 2; }}; write_conf; echo rc=$?")
    assert "rc=1" in out.stdout and f"could not write {tmp_path}/slurm.conf" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "slurm.conf").exists() and not (tmp_path / "slurm.conf.tmp").exists()
    ok = _sourced(f"DIR={tmp_path}; CONF=$DIR/slurm.conf; write_conf; echo rc=$?")
    assert "rc=0" in ok.stdout and "ClusterName=kitci" in (tmp_path / "slurm.conf").read_text()
