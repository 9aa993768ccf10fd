"""The rank wrapper (kit.rankexec): torchrun's contract from each launcher's variables, and
the rank process *becomes* the program (same pid, exit code passed through)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kit import rankexec
from kit.monitor import program_words

# a program that reports its pid and the contract it sees
REPORT = ("import json, os; print(json.dumps({'pid': os.getpid(), **{k: os.environ.get(k) for k in "
          "('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'KIT_RANK_SOURCE')}}))")
CONTRACT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("OMPI_", "PMIX_", "SLURM_", "PJM_", "PLE_"))}
    return {**env, **extra}


def _wrapped(env: dict[str, str], *cmd: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(rankexec.wrap(list(cmd), python=sys.executable), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


def test_openmpi_ranks_get_torchrun_contract():
    env = rankexec.environment({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
                                "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})
    assert tuple(env[k] for k in CONTRACT) == ("3", "4", "1", "2") and env["KIT_RANK_SOURCE"] == "mpi"


def test_srun_tasks_get_torchrun_contract():
    env = rankexec.environment({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1",
                                "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2(x1)"})
    assert tuple(env[k] for k in CONTRACT) == ("1", "2", "1", "2") and env["KIT_RANK_SOURCE"] == "slurm"


def test_fujitsu_mpi_under_pjm_gets_torchrun_contract():
    env = rankexec.environment({"PMIX_RANK": "5", "PJM_MPI_PROC": "8", "PLE_RANK_ON_NODE": "1",
                                "PJM_PROC_BY_NODE": "4", "PJM_JOBID": "42"})
    assert tuple(env[k] for k in CONTRACT) == ("5", "8", "1", "4") and env["KIT_RANK_SOURCE"] == "fjmpi"


def test_launcher_variables_win_over_inherited_ones():
    """A Fugaku job script's `export WORLD_SIZE=512` (and a stray RANK) reach every rank
    alike: the launcher's own numbers must win, or every rank would claim rank 0."""
    env = rankexec.environment({"RANK": "0", "WORLD_SIZE": "512", "LOCAL_RANK": "0",
                                "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("1", "2", "0", "2")


def test_wrapper_becomes_the_program_with_the_contract():
    env = _clean_env(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK="1",
                     OMPI_COMM_WORLD_LOCAL_SIZE="2", MASTER_ADDR="127.0.0.9", MASTER_PORT="4242")
    proc, out, err = _wrapped(env, sys.executable, "-c", REPORT)
    assert proc.returncode == 0, err
    seen = json.loads(out)
    assert seen["pid"] == proc.pid  # exec'd: the rank process is the program itself
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"], seen["LOCAL_WORLD_SIZE"]) == ("1", "2", "1", "2")
    assert (seen["MASTER_ADDR"], seen["MASTER_PORT"], seen["KIT_RANK_SOURCE"]) == ("127.0.0.9", "4242", "mpi")


def test_wrapper_passes_the_exit_code_through():
    proc, _, _ = _wrapped(_clean_env(), sys.executable, "-c", "raise SystemExit(7)")
    assert proc.returncode == 7


def test_wrapper_without_launcher_is_a_single_process():
    proc, out, err = _wrapped(_clean_env(), sys.executable, "-c", REPORT)
    seen = json.loads(out)
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"], seen["KIT_RANK_SOURCE"]) == ("0", "1", "0", "single")


def test_wrapper_bad_command_is_one_line_not_a_traceback():
    proc, out, err = _wrapped(_clean_env(), "/nonexistent/program")
    assert proc.returncode == 127 and "Traceback" not in err
    assert err.count("\n") == 1 and "/nonexistent/program" in err
    none = subprocess.run([sys.executable, "-m", "kit.rankexec", "--"], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "usage" in none.stderr and "Traceback" not in none.stderr


def test_program_words_skip_what_execs_the_program():
    """The monitor matches only the program's own words: env wrappers and the rank wrapper vanish."""
    prog = ["pretrain_gpt.py", "--num-layers", "2"]
    assert program_words(["/v/bin/python", *prog]) == prog
    assert program_words(["env", "PYTHONPATH=/x", "-u", "FOO", "python3", *prog]) == prog
    assert program_words(rankexec.wrap(["env", "A=1", "--", "/usr/bin/python", *prog], python="py")) == prog
    assert program_words(["A=1", "B=2", "python", "-m", "kit.workload"]) == ["-m", "kit.workload"]
    assert program_words(["./train.sh"]) == ["./train.sh"]


def test_mpirun_and_srun_wrap_each_rank_torchrun_does_not():
    from kit import launchers

    argv = ["python", "pretrain_gpt.py"]
    assert launchers.get("local").rank_argv(argv, python="py") == argv
    for name in ("mpirun", "srun"):
        assert launchers.get(name).rank_argv(argv, python="py") == ["py", "-m", "kit.rankexec", "--", *argv]
