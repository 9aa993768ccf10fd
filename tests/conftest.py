"""Shared fixtures. Real runs use the real kit CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def kit_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m kit ARGS`` and capture its output."""
    e = {**os.environ, **(env or {})}
    e.setdefault("COLUMNS", "200")
    proc = subprocess.run([sys.executable, "-m", "kit", *args], cwd=cwd or REPO, env=e, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def bundle_from_output(output: str) -> Path:
    for line in output.splitlines():
        if line.startswith("bundle: "):
            return Path(line.split(": ", 1)[1].strip())
    raise AssertionError(f"no bundle path in output:\n{output}")


def load(bundle: Path, name: str) -> dict:
    return json.loads((bundle / name).read_text())


FAST = ["--set", "train.iters=6", "--set", "train.warmup_iters=1"]


#: a run that does not end by itself however fast the machine (the test ends it); the job's
#: time limit (Slurm) ends one a failed test left behind, and so does `long_run`'s teardown
LONG_RUN = ["--set", "train.iters=10000000", "--time", "00:20:00"]


@pytest.fixture
def long_run():
    """``long_run(LAUNCHER, ENV, OUT)``: a ``tiny`` run that does not end by itself, submitted
    with ``--launcher LAUNCHER`` (slurm, pjm); its bundle. Each job it submitted is cancelled
    (scancel, pjdel) after the test, whatever the test did: an endless job must not outlive it."""
    submitted: list[tuple[str, dict, Path]] = []

    def submit(launcher: str, env: dict, out: Path) -> Path:
        proc = kit_cli("run", "tiny", "--preset", "baseline", "--launcher", launcher, *LONG_RUN, "--out", str(out),
                       env=env)
        assert proc.returncode == 0, proc.stderr
        b = bundle_from_output(proc.stdout)
        submitted.append((launcher, env, b))
        return b

    yield submit
    for launcher, env, b in submitted:
        job_id = load(b, "job/job.json")["job_id"]
        subprocess.run(["scancel" if launcher == "slurm" else "pjdel", job_id], env={**os.environ, **env},
                       capture_output=True, timeout=60)


def wait_for_iteration(bundle: Path, timeout_s: float = 300) -> None:
    """Until the bundle's launcher log shows an iteration (fails after ``timeout_s``)."""
    import time

    log = bundle / "logs" / "launcher.log"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if log.exists() and " iteration " in log.read_text(errors="replace"):
            return
        time.sleep(1)
    pytest.fail(f"no iteration within {timeout_s:.0f} s")


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def tiny_run_1rank(results_dir):
    """A real 1-rank `kit run tiny --preset tuned` (torchrun, DeepSpeed on gloo)."""
    proc = kit_cli("run", "tiny", "--preset", "tuned", *FAST, "--out", str(results_dir), check=True)
    return bundle_from_output(proc.stdout), proc


@pytest.fixture(scope="session")
def tiny_run_2rank(results_dir):
    """A real 2-rank data-parallel run."""
    proc = kit_cli("run", "tiny", "--preset", "tuned", "--set", "parallel.dp=2", *FAST, "--out", str(results_dir), check=True)
    return bundle_from_output(proc.stdout), proc


# -- results (kit.results: bundle pack/verify/import, report, compare, sweep, reproduce) -----------
@pytest.fixture(scope="session")
def tiny_run_baseline(results_dir):
    """A real 1-rank `kit run tiny --preset baseline` (glibc malloc; compare with tiny_run_1rank)."""
    proc = kit_cli("run", "tiny", "--preset", "baseline", *FAST, "--out", str(results_dir), check=True)
    return bundle_from_output(proc.stdout), proc


@pytest.fixture(scope="session")
def real_bundles(tiny_run_baseline, tiny_run_1rank):
    """Two finished bundles from real runs: (baseline, tuned). Read them; copy before changing them."""
    return tiny_run_baseline[0], tiny_run_1rank[0]


# -- job managers (tests/test_jobs_*.py, tests/test_launch_mpirun.py) --------------------------
STANDINS = REPO / "tests" / "standins"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm cluster (.ci/slurm.sh): yields the environment that points at it.

    Skips with the reason when Slurm is not installed or cannot start here (needs root);
    in CI (CI=1 set) a cluster that cannot start is a failure, not a skip.
    """
    import shutil

    if not shutil.which("slurmctld") or not shutil.which("sbatch"):
        if os.environ.get("CI"):
            pytest.fail("slurmctld/sbatch not installed (apt-get install slurm-wlm munge)")
        pytest.skip("Slurm is not installed (apt-get install slurm-wlm munge)")
    proc = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh"), "start"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        msg = f".ci/slurm.sh start failed: {proc.stderr.strip()[-800:]}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    conf = proc.stdout.strip().split("SLURM_CONF=", 1)[1].split()[0]
    yield {"SLURM_CONF": conf, "KIT_POLL_S": "1"}


@pytest.fixture
def pjm_standins(tmp_path):
    """PATH with the PJM/Fujitsu-MPI stand-ins (tests/standins, not the real tools) first."""
    return {"PATH": f"{STANDINS}{os.pathsep}{os.environ.get('PATH', '')}", "PJM_STANDIN_DIR": str(tmp_path / "pjm"),
            "KIT_POLL_S": "1", "KIT_SITE": str(Path(STANDINS) / "site.yaml")}


def run_pids(run_id: str) -> list[int]:
    """Live (not zombie) processes of run ``run_id``, seen from the host (the kit puts
    ``KIT_RUN_ID`` in their environment)."""
    import psutil

    pids = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("KIT_RUN_ID") == run_id:
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids
