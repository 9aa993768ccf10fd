"""Site files (kit.site, sites/*.yaml): what belongs to a machine, validated; the job's Python;
Fujitsu MPI's rank variables and the rendezvous on the site's interface."""

from __future__ import annotations

import platform

import pytest

from conftest import kit_cli
from kit import plan as plan_mod, rankenv, site as site_mod
from kit.errors import KitError
from kit.launchers.common import interface_address, mpiexec_argv, rendezvous


def test_fugaku_site_file_is_valid_and_holds_fugakus_values():
    s = site_mod.load("fugaku")
    assert (s.scheduler, s.rscunit, s.interface, s.job_arch) == ("pjm", "rscunit_ft01", "tofu1", "aarch64")
    assert s.volumes == ["/vol0003", "/vol0004"] and "/sys/fs/cgroup" in s.binds


def test_unknown_site_key_is_a_one_line_error(tmp_path):
    bad = tmp_path / "mysite.yaml"
    bad.write_text("scheduler: pjm\nrscunit: x\ninterfce: tofu1\n")
    with pytest.raises(KitError) as e:
        site_mod.load(str(bad))
    assert "interfce" in str(e.value) and str(bad) in str(e.value)
    r = kit_cli("run", "tiny", "--launcher", "pjm", "--site", str(bad), "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "interfce" in r.stderr


def test_site_of_another_scheduler_is_refused(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text("scheduler: slurm\n")
    with pytest.raises(KitError, match="uses the slurm scheduler"):
        plan_mod.resolve(recipe_name="tiny", launcher="pjm", site=str(f))


def _other_arch_site(tmp_path):
    other = "x86_64" if platform.machine() == "aarch64" else "aarch64"
    f = tmp_path / "far.yaml"
    f.write_text(f"scheduler: pjm\njob_arch: {other}\n")
    return f, other


def test_login_node_python_for_other_arch_compute_nodes_is_refused(tmp_path, pjm_standins):
    """Fugaku: pjsub on x86-64 login nodes, the job on A64FX: this host's venv cannot run there."""
    site, other = _other_arch_site(tmp_path)
    out = tmp_path / "results"
    r = kit_cli("run", "tiny", "--launcher", "pjm", "--site", str(site), "--out", str(out), env=pjm_standins)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and other in lines[0] and "job_python" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir()), "nothing submitted, no bundle left"


def test_site_job_python_starts_the_kit_and_the_ranks(tmp_path):
    f = tmp_path / "far.yaml"
    f.write_text("scheduler: pjm\njob_arch: aarch64\njob_python: /vol0004/me/venv/bin/python3\n")
    p = plan_mod.resolve(recipe_name="tiny", launcher="pjm", site=str(f))
    assert p.rank_argv[0] == "/vol0004/me/venv/bin/python3"
    from kit import schedulers

    assert schedulers.get("pjm").job_python(p) == ("/vol0004/me/venv/bin/python3", None)


def test_fujitsu_ranks_from_pmix_rank_alone():
    """Only PMIX_RANK per rank (as in a public Fugaku user's log) plus the kit's -x variables."""
    env = {"PMIX_RANK": "5", "KIT_WORLD_SIZE": "8", "KIT_RANKS_PER_NODE": "4"}
    assert rankenv.resolve(env) == "fjmpi"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")


def test_rendezvous_on_the_sites_interface(tmp_path):
    """MASTER_ADDR is this (master) node's address on the site's interface: here the real lo."""
    f = tmp_path / "lo.yaml"
    f.write_text("scheduler: pjm\ninterface: lo\n")
    p = plan_mod.resolve(recipe_name="tiny", launcher="pjm", site=str(f), nodes=2,
                         overrides=["parallel.dp=2", "batch.global=2"])
    assert interface_address("lo") == "127.0.0.1"
    assert rendezvous(p, {})[0] == "127.0.0.1"
    assert p.env["GLOO_SOCKET_IFNAME"] == "lo"
    argv = mpiexec_argv(p, p.rank_argv, tmp_path, addr="a", port=1)
    assert argv[argv.index("-std-proc") + 1] == str(tmp_path / "stdproc" / "out")
    assert "GLOO_SOCKET_IFNAME" in argv and "KIT_WORLD_SIZE=2" in argv


def test_singularity_keeps_fujitsu_and_gloo_variables():
    """RIKEN's Singularity guide keeps PLE_*, PMIX_*, GLOO_*, TP_SOCKET_IFNAME, XOS_MMM_* under --cleanenv."""
    import subprocess

    from kit.runtimes.singularity import SHIM

    env = {"PATH": "/usr/bin:/bin", "PLE_RANK_ON_NODE": "3", "GLOO_SOCKET_IFNAME": "tofu1", "TP_SOCKET_IFNAME": "tofu1",
           "XOS_MMM_L_PAGING_POLICY": "demand:demand:demand", "HOME_SECRET": "x"}
    out = subprocess.run(["sh", "-c", SHIM, "kit-singularity", "env"], env=env, capture_output=True, text=True).stdout
    for name in ("PLE_RANK_ON_NODE", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "XOS_MMM_L_PAGING_POLICY"):
        assert f"SINGULARITYENV_{name}=" in out and f"APPTAINERENV_{name}=" in out
    assert "SINGULARITYENV_HOME_SECRET" not in out


def test_site_binds_only_those_present(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"scheduler: pjm\nbinds: [{tmp_path}, /no/such/FJSVtcs]\n")
    assert site_mod.load(str(f)).host_binds() == [tmp_path]
