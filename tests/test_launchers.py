"""Launchers without running anything: rank variables, failure parsing, scripts, known-bad table."""

from __future__ import annotations

import pytest

from conftest import kit_cli
from kit import known_bad, launchers, plan as plan_mod, rankenv, runtimes, schedulers
from kit.errors import KitError
from kit.launchers.common import expand_slurm_nodelist, flavour
from kit.launchers.mpirun import MpirunLauncher
from kit.launchers.srun import SrunLauncher
from kit.schedulers.pjm import parse_pjstat, parse_stats


def test_registries_keep_launchers_and_schedulers_apart():
    assert set(launchers.names()) == {"local", "mpirun", "srun"}
    assert set(schedulers.names()) == {"slurm", "pjm"}
    assert schedulers.get("slurm").launcher == "srun" and schedulers.get("pjm").launcher == "mpirun"
    assert isinstance(plan_mod.backend("pjm"), schedulers.Scheduler)
    assert isinstance(plan_mod.backend("local"), launchers.Launcher)
    with pytest.raises(KitError, match="local, mpirun, pjm, slurm, srun"):
        plan_mod.backend("nosuch")


@pytest.mark.parametrize("registry, kind, option, valid", [
    (schedulers, "scheduler", "--launcher", "pjm, slurm"),
    (launchers, "launcher", "--launcher", "local, mpirun, srun"),
    (runtimes, "runtime", "--runtime", "apptainer, docker, host, podman, singularity"),
])
def test_an_unknown_name_in_a_registry_is_one_line_naming_the_option_and_the_valid_names(registry, kind, option, valid):
    with pytest.raises(KitError) as e:
        registry.get("nosuch")
    assert str(e.value) == f"{option}: unknown {kind} 'nosuch'; use one of: {valid}"
    assert e.value.exit_code == 2 and registry.names() == valid.split(", ")


def test_registries_make_an_instance_named_as_registered():
    assert schedulers.get("pjm").name == "pjm" and launchers.get("srun").name == "srun"
    assert runtimes.get("host").name == "host"


def test_an_unknown_runtime_on_the_command_line_is_one_line_exit_2():
    proc = kit_cli("run", "tiny", "--runtime", "nosuch", "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kit: error: --runtime: unknown runtime 'nosuch'; use one of: apptainer, docker, host, podman, singularity"]


def test_srun_task_maps_to_rank():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
           "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NTASKS_PER_NODE": "4"}
    assert rankenv.resolve(env) == "slurm"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("1", "2", "1", "2")


def test_batch_script_is_not_a_rank():
    """sbatch's own environment has SLURM_PROCID=0 and SLURM_NTASKS=N but no step: not rank 0 of N."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7"}
    assert rankenv.detect(env) is None
    assert rankenv.resolve(env) == "single" and env["WORLD_SIZE"] == "1"


def test_openmpi_maps_to_rank():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert rankenv.resolve(env) == "mpi"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")


def test_fujitsu_mpi_maps_to_rank():
    env = {"PMIX_RANK": "5", "PJM_MPI_PROC": "8", "PLE_RANK_ON_NODE": "1", "PJM_PROC_BY_NODE": "4",
           "PJM_JOBID": "123"}
    assert rankenv.resolve(env) == "fjmpi"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")
    env = {"OMPI_MCA_orte_ess_vpid": "2", "PJM_MPI_PROC": "4", "FLIB_RANK_ON_NODE": "2"}
    assert rankenv.resolve(env) == "fjmpi" and env["RANK"] == "2" and env["LOCAL_RANK"] == "2"


def test_mpi_flavour():
    assert flavour({}) == "openmpi"
    assert flavour({"PJM_JOBID": "1"}) == "fujitsu"
    assert flavour({"PJM_JOBID": "1", "KIT_MPI": "openmpi"}) == "openmpi"


def test_nodelist_expansion():
    assert expand_slurm_nodelist("node[01-03,07],gpu5") == ["node01", "node02", "node03", "node07", "gpu5"]
    assert expand_slurm_nodelist("localhost") == ["localhost"]


def test_srun_failures_per_task():
    log = ("srun: error: n1: task 1: Exited with exit code 3\n"
           "srun: error: n2: tasks 2-3: Killed\n")
    f = SrunLauncher().failures(log)
    assert f[1]["exit_code"] == 3 and f[2]["signal"] == 9 and f[3]["signal"] == 9 and 0 not in f


def test_openmpi_failures():
    log = ("mpirun detected that one or more processes exited with non-zero status, thus causing\n"
           "the job to be terminated. The first process to do so was:\n\n"
           "  Process name: [[20697,1],1]\n  Exit code:    7\n")
    assert MpirunLauncher().failures(log) == {1: {"exit_code": 7}}


def test_pjstat_and_stats_parsing():
    table = ("  JOB_ID     JOB_NAME   MD ST  USER     START_DATE      ELAPSE_LIM NODE_REQUIRE\n"
             "  4242       run.sh     NM RUN u01234   06/01 10:00:00  0001:00:00 1\n")
    assert parse_pjstat(table, "4242") == "RUN" and parse_pjstat(table, "1") is None
    s = parse_stats(" JOB ID  : 4242\n EXIT CODE : 137\n PJM CODE : 20\n REASON : elapse limit exceeded\n")
    assert s["EXIT CODE"] == "137" and s["REASON"] == "elapse limit exceeded"


def test_slurm_script():
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["boost"], overrides=["parallel.dp=2"], launcher="slurm",
                         job=plan_mod.JobOptions(time_limit="00:30:00", queue="debug", account="proj"))
    text = schedulers.get("slurm").render(p, plan_mod.Path("/r/b1"))
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2", f"#SBATCH --cpus-per-task={p.threads_per_rank}",
                 "#SBATCH --cpu-freq=2200000", "#SBATCH --time=00:30:00", "#SBATCH --partition=debug",
                 "#SBATCH --account=proj", "#SBATCH --output=/r/b1/logs/slurm-%j.out", "#SBATCH --no-requeue"):
        assert line in text.splitlines()
    # every setting Slurm applies is in the script exactly as the plan records it
    for s in p.settings:
        if s.by == "slurm":
            assert s.applied_by in text.splitlines()
    assert text.rstrip().endswith("-m kit job-run /r/b1")
    assert p.setting("freq_mhz").applied_by == "#SBATCH --cpu-freq=2200000"
    assert p.setting("retention_state").status == "not-applied"  # Slurm has no such knob


def test_srun_command_sets_rendezvous_and_freq(tmp_path):
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["boost"], overrides=["parallel.dp=2"], launcher="srun")
    argv = SrunLauncher().command(p, p.rank_argv, python=p.python, log_dir=tmp_path)
    assert argv[argv.index("--ntasks") + 1] == "2" and "--cpu-freq=2200000" in argv
    export = next(a for a in argv if a.startswith("--export="))
    assert "MASTER_ADDR=127.0.0.1" in export and "MASTER_PORT=" in export
    assert argv[-len(p.rank_argv):] == p.rank_argv


def test_known_bad_table_cites_sources():
    for kb in known_bad.TABLE:
        assert kb.source and kb.seen and kb.what


@pytest.mark.parametrize("recipe,presets,overrides,key", [
    ("gpt-124m", ["mpn4"], ["parallel.tp=4"], "tp-with-4-ranks-per-node"),
    ("gpt-1.3b", ["baseline"], ["parallel.tp=2", "parallel.dp=2"], "tp-with-dp-1.3b"),
    ("gpt-1.3b", ["tcmalloc"], [], "tcmalloc-1.3b"),
])
def test_known_bad_matches(recipe, presets, overrides, key):
    p = plan_mod.resolve(recipe_name=recipe, preset_names=presets, overrides=overrides, launcher="pjm")
    assert key in [kb.key for kb in known_bad.check(p)]
    with pytest.raises(KitError, match="--force"):
        known_bad.enforce(p)
    forced = p.model_copy(update={"force": True})
    assert key in [m["key"] for m in known_bad.enforce(forced)]


def test_known_good_rows_pass():
    for presets, overrides in ((["mpn4"], ["parallel.dp=4"]), (["tuned"], []), (["baseline"], ["parallel.tp=2"])):
        p = plan_mod.resolve(recipe_name="gpt-124m", preset_names=presets, overrides=overrides, launcher="pjm")
        assert known_bad.check(p) == []
    p = plan_mod.resolve(recipe_name="gpt-1.3b", preset_names=["boost"], launcher="pjm")
    assert known_bad.check(p) == []


def test_cli_refuses_known_bad_without_force(tmp_path):
    proc = kit_cli("run", "tiny", "--preset", "mpn4", "--set", "parallel.tp=4", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "known to hang or fail" in proc.stderr and "--force" in proc.stderr and "source:" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing ran, no bundle


def test_cli_pjm_dry_run_prints_script_and_warns():
    proc = kit_cli("run", "gpt-1.3b", "--preset", "tcmalloc", "--launcher", "pjm", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert '#PJM --mpi "proc=1"' in proc.stdout and "known to hang or fail" in proc.stdout


def test_cli_pjm_without_pjsub_is_a_clear_error(tmp_path, monkeypatch):
    from conftest import STANDINS

    proc = kit_cli("run", "tiny", "--launcher", "pjm", "--out", str(tmp_path),
                   env={"PATH": "/usr/bin:/bin", "KIT_SITE": str(STANDINS / "site.yaml")})
    assert proc.returncode == 2
    assert "pjsub was not found" in proc.stderr and "--dry-run" in proc.stderr
    assert not any(tmp_path.iterdir())
