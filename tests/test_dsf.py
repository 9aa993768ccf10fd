"""DeepSpeedFugaku's program path (recipes dsf-*), tested with a STAND-IN for pretrain_gpt.py.

CI cannot fetch DeepSpeedFugaku, so the real-run tests here take the dsf-tiny recipe as
shipped and swap only its program for ``tests/standins/megatron_standin.py`` (a stand-in
that honours torchrun's contract, Megatron's flags and its log format, and nothing else:
see its docstring). Every launcher path the real program takes is covered: torchrun
(1 and 2 ranks), OpenMPI's mpirun, Slurm's srun, and PJM (pjsub/mpiexec stand-ins). The
real program's figures, measured on this machine, are in README.md ("DeepSpeedFugaku").

The unit tests pin the parts underneath: recipe vars/env/workdir, the parser's units and
skipped/NaN iterations, figures left None with a reason, program provenance.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, STANDINS, bundle_from_output, kit_cli, load
from kit import metrics, plan as plan_mod, provenance
from kit.bundle import read_manifest, verify
from kit.errors import KitError
from kit.logparse import parse_line

STANDIN = STANDINS / "megatron_standin.py"
ITERS = ["--set", "train.iters=6", "--set", "train.warmup_iters=1"]


# -- a dsf-tiny checkout and data, with the stand-in as its program ---------------------------
def dsf_standin_recipe(tmp_path: Path, *, prefix: list[str] | None = None, env: dict[str, str] | None = None) -> Path:
    """recipes/dsf-tiny.yaml with ``pretrain_gpt.py`` replaced by the stand-in (everything else,
    flags included, as shipped), its vars pointing at a fake checkout with tiny data files."""
    checkout, data = tmp_path / "DeepSpeedFugaku", tmp_path / "data"
    checkout.mkdir()
    data.mkdir()
    (data / "tiny_text_document.bin").write_bytes(b"\x01\x00" * 64)
    (data / "tiny_text_document.idx").write_bytes(b"MMIDIDX\x00\x00")
    (data / "tiny-vocab.json").write_text('{"a": 0}')
    (data / "tiny-merges.txt").write_text("#version: 0.2\n")
    doc = yaml.safe_load((REPO / "recipes" / "dsf-tiny.yaml").read_text())
    i = doc["command"].index("pretrain_gpt.py")
    doc["command"] = [*(prefix or []), *doc["command"][:i], str(STANDIN), *doc["command"][i + 1:]]
    doc["vars"].update(dsf=str(checkout), vocab_file=str(data / "tiny-vocab.json"),
                       merge_file=str(data / "tiny-merges.txt"))
    doc["data"] = str(data / "tiny_text_document")
    doc["env"].update(env or {})
    doc["train"]["startup_timeout_s"] = 300
    path = tmp_path / "dsf-standin.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run(recipe: Path, tmp_path: Path, *args: str, env: dict | None = None):
    proc = kit_cli("run", str(recipe), "--preset", "baseline", *ITERS, *args, "--out", str(tmp_path / "res"),
                   env=env)
    return proc, bundle_from_output(proc.stdout)


def _check_ranks(b: Path, n: int) -> dict:
    m = load(b, "metrics.json")
    assert verify(b).ok, verify(b).problems
    assert sorted(m["ranks"]) == [str(r) for r in range(n)]
    assert all(r["peak_rss_mib"] > 10 for r in m["ranks"].values())
    assert m["summary"]["sec_per_iter"] > 0 and m["summary"]["peak_mem_mib"] > 0
    return m


# -- real runs of the stand-in ------------------------------------------------------------------
@pytest.mark.slow
def test_dsf_standin_one_rank_env_wrapper_units_skips_and_provenance(tmp_path):
    """One run, torchrun: the command starts with an ``env`` wrapper (the monitor must still
    find the rank), the program logs seconds, iterations 4 and 5 are skipped / NaN."""
    recipe = dsf_standin_recipe(tmp_path, prefix=["env", "STANDIN_WRAPPED=1"],
                                env={"STANDIN_TIME_UNIT": "s", "STANDIN_SKIP_ITERS": "4", "STANDIN_NAN_ITERS": "5"})
    proc, b = _run(recipe, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_manifest(b).status == "ok"
    m = _check_ranks(b, 1)
    s = m["summary"]
    assert s["iterations_logged"] == 6 and s["iterations_timed"] == 3  # 6 - 1 warm-up - 1 skipped - 1 NaN
    assert (s["iterations_skipped"], s["iterations_nan"]) == (1, 1)
    assert s["sec_per_iter"] < 60  # seconds, not milliseconds read as seconds
    assert s["program_mem_used_mib"] > 0 and s["mem_column"] == "peak_mem_mib"
    assert m["ranks"]["0"]["program_cpu_memory_mib"]["total"] > 0
    prov = load(b, "provenance.json")
    prog = prov["program"]
    assert prog["script"]["path"] == str(STANDIN) and Path(prog["script"]["repository"]) == REPO
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prog["script"]["commit"] == head and isinstance(prog["script"]["dirty"], bool)
    digests = {Path(f["path"]).name: f["sha256"] for f in prog["files"]}
    vocab = tmp_path / "data" / "tiny-vocab.json"
    assert digests["tiny-vocab.json"] == hashlib.sha256(vocab.read_bytes()).hexdigest()
    assert {"tiny_text_document.bin", "tiny_text_document.idx", "tiny-merges.txt"} <= set(digests)
    assert prov["plan"]["workdir"] == str(tmp_path / "DeepSpeedFugaku")
    assert prov["environment"]["DS_ACCELERATOR"] == "cpu"  # the recipe's env reached the ranks' environment


@pytest.mark.slow
def test_dsf_standin_two_ranks_torchrun(tmp_path):
    proc, b = _run(dsf_standin_recipe(tmp_path), tmp_path, "--set", "parallel.dp=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_ranks(b, 2)


@pytest.mark.slow
def test_run_is_never_ok_when_its_figures_were_not_measured(tmp_path):
    """The rank hides from the monitor (``env -u KIT_RUN_ID``) and logs a time unit no fork
    uses: training ends well, but neither memory nor sec/it was measured, so the run is not
    ok, says why, and the figures stay empty (never 0)."""
    recipe = dsf_standin_recipe(tmp_path, prefix=["env", "-u", "KIT_RUN_ID"], env={"STANDIN_TIME_UNIT": "us"})
    proc, b = _run(recipe, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    man = read_manifest(b)
    assert man.status == "failed" and "not measured" in man.reason
    assert "sec_per_iter" in man.reason and "peak_mem_mib" in man.reason
    s = load(b, "metrics.json")["summary"]
    assert s["iterations_logged"] == 6
    assert s["sec_per_iter"] is None and s["peak_mem_mib"] is None and s["tflops"] is None
    assert {"sec_per_iter", "peak_mem_mib", "tflops"} <= set(s["not_measured"])
    assert "0.0 MiB" not in proc.stdout


needs_mpirun = pytest.mark.skipif(not shutil.which("mpirun"), reason="OpenMPI's mpirun is not installed")


@pytest.mark.slow
@pytest.mark.mpi
@needs_mpirun
def test_dsf_standin_two_ranks_mpirun(tmp_path):
    proc, b = _run(dsf_standin_recipe(tmp_path), tmp_path, "--launcher", "mpirun", "--set", "parallel.dp=2",
                   env={"KIT_MPI": "openmpi"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_ranks(b, 2)
    argv = load(b, "provenance.json")["run"]["argv"]
    assert argv[0] == "mpirun" and "kit.rankexec" in argv


@pytest.mark.slow
@pytest.mark.mpi
@needs_mpirun
def test_without_the_rank_wrapper_mpirun_ranks_lack_the_contract(tmp_path):
    """What the wrapper fixes: the same program started by mpirun alone dies on LOCAL_RANK,
    as DeepSpeedFugaku did (issue 16)."""
    from kit import recipe

    argv = recipe.load(str(dsf_standin_recipe(tmp_path)))[0].render_command(python=sys.executable)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631"}
    r = subprocess.run(["mpirun", *root, "-np", "2", "--bind-to", "none", *argv], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "LOCAL_RANK" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_dsf_standin_two_ranks_slurm(slurm_cluster, tmp_path):
    proc, b = _run(dsf_standin_recipe(tmp_path), tmp_path, "--launcher", "slurm", "--set", "parallel.dp=2", "--wait",
                   env=slurm_cluster)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_ranks(b, 2)
    assert load(b, "provenance.json")["run"]["argv"][0] == "srun"


@pytest.mark.slow
def test_dsf_standin_two_ranks_pjm_standins(pjm_standins, tmp_path):
    """PJM: pjsub and Fujitsu's mpiexec are stand-ins too (ranks get PMIX_RANK and
    PLE_RANK_ON_NODE only); the rank wrapper maps them with the job's PJM_MPI_PROC."""
    proc, b = _run(dsf_standin_recipe(tmp_path), tmp_path, "--launcher", "pjm", "--set", "parallel.dp=2", "--wait",
                   env=pjm_standins)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_ranks(b, 2)


# -- units ----------------------------------------------------------------------------------------
def test_iteration_time_in_seconds_or_milliseconds():
    ms = parse_line(" iteration 3/ 10 | elapsed time per iteration (ms): 1500.0 | lm loss: 6.1 |")
    s = parse_line(" iteration 3/ 10 | elapsed time per iteration (s): 1.5 | lm loss: 6.1 |")
    assert ms.elapsed_s == s.elapsed_s == 1.5
    assert parse_line(" iteration 3/ 10 | elapsed time per iteration (us): 1500000 |").elapsed_s is None


def _summary(records, **kw):
    return metrics.summarize(records, layers=2, hidden=64, seq=128, vocab=640, global_batch=8,
                             checkpoint_activations=False, tp=1, world_size=1, ranks_per_node=1, nodes=1,
                             warmup_iters=1, **kw)


def test_skipped_and_nan_iterations_are_counted_not_timed():
    lines = [f" iteration {i}/ 5 | elapsed time per iteration (ms): {t} | number of skipped iterations: {sk} | "
             f"number of nan iterations: {nan} |" for i, t, sk, nan in
             [(1, 9000, 0, 0), (2, 1000, 0, 0), (3, 50, 1, 0), (4, 70, 0, 1), (5, 1000, 0, 0)]]
    s = _summary([parse_line(x) for x in lines])
    assert s["sec_per_iter"] == 1.0 and s["iterations_timed"] == 2
    assert (s["iterations_skipped"], s["iterations_nan"]) == (1, 1)


def test_figures_not_measured_are_none_with_a_reason():
    recs = [parse_line(f" iteration {i}/ 3 | lm loss: 6.0 |") for i in (1, 2, 3)]
    s = _summary(recs, rank_peak_rss_mib={"node1": {}})
    assert s["sec_per_iter"] is None and s["peak_mem_mib"] is None and s["peak_mem_mib_per_node"] is None
    assert "elapsed time" in s["not_measured"]["sec_per_iter"]
    assert "no rank process" in s["not_measured"]["peak_mem_mib"]
    assert s["not_measured"]["tflops"]


def test_program_memory_report_recorded_beside_peak_rss():
    from kit.logparse import device_memory_peaks

    lines = ["[Rank 0] (after 1 iterations) CPU memory (MB) | used: 4922.98 | total: 24105.05 | avail: 19182.07"]
    host = device_memory_peaks(lines, "cpu")
    assert host == {"0": {"used": 4922.98, "total": 24105.05, "avail": 19182.07}}
    assert device_memory_peaks(lines) == {}  # not a GPU figure
    s = _summary([], rank_peak_rss_mib={"n": {"0": 300.0}}, host_memory=host)
    assert s["program_mem_used_mib"] == 4922.98 and s["peak_mem_mib"] == 300.0 and s["mem_column"] == "peak_mem_mib"


def test_recipe_vars_env_and_workdir_reach_the_plan(tmp_path):
    p = plan_mod.resolve(recipe_name="dsf-tiny", overrides=[f"vars.dsf={tmp_path}", "vars.backend=mpi"],
                         preset_names=["baseline"])
    assert p.workdir == str(tmp_path)
    assert p.rank_argv[1] == "pretrain_gpt.py" and p.rank_argv[p.rank_argv.index("--distributed-backend") + 1] == "mpi"
    assert p.env["DS_ACCELERATOR"] == "cpu" and p.env["OMP_NUM_THREADS"]


@pytest.mark.parametrize("key", ["OMP_NUM_THREADS", "LD_PRELOAD", "KIT_RUN_ID", "RANK"])
def test_recipe_env_refuses_machine_settings(tmp_path, key):
    r = kit_cli("run", "dsf-tiny", "--set", f"vars.dsf={tmp_path}", "--set", f"env.{key}=1", "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert key in r.stderr and "preset" in r.stderr


def test_missing_workdir_is_bad_input(tmp_path):
    with pytest.raises(KitError, match="workdir"):
        plan_mod.resolve(recipe_name="dsf-tiny", overrides=[f"vars.dsf={tmp_path / 'absent'}"],
                         preset_names=["baseline"])


def test_unknown_placeholder_in_env_names_the_fix(tmp_path):
    r = kit_cli("run", "dsf-tiny", "--set", f"vars.dsf={tmp_path}", "--set", "env.X=\"{vars.nope}\"", "--dry-run")
    assert r.returncode == 2 and "vars.nope" in r.stderr and "Traceback" not in r.stderr


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_program_provenance_repository_commit_diff_and_files(tmp_path):
    repo = tmp_path / "prog"
    repo.mkdir()
    (repo / "train.py").write_text("print('hi')\n")
    _git(repo, "init", "-q")
    _git(repo, "remote", "add", "origin", "https://user:secret@example.org/prog.git")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-qm", "one")
    big = tmp_path / "shard.bin"
    big.write_bytes(b"x" * 2048)
    (tmp_path / "d_text_document.bin").write_bytes(b"ab")
    (tmp_path / "d_text_document.idx").write_bytes(b"cd")
    argv = ["env", "A=1", "python", "train.py", "--data-path", str(tmp_path / "d_text_document"),
            f"--extra={big}", "--split", "949,50,1"]
    clean = provenance.program(argv, workdir=repo, env={}, max_bytes=1024)
    sc = clean["script"]
    assert sc["path"] == str(repo / "train.py") and sc["remote"] == "https://example.org/prog.git"
    assert len(sc["commit"]) == 40 and sc["dirty"] is False and sc["diff_sha256"] is None
    files = {Path(f["path"]).name: f for f in clean["files"]}
    assert files["d_text_document.bin"]["sha256"] == hashlib.sha256(b"ab").hexdigest()
    assert files["d_text_document.idx"]["sha256"] == hashlib.sha256(b"cd").hexdigest()
    assert files["shard.bin"]["sha256"] is None and files["shard.bin"]["size"] == 2048 and files["shard.bin"]["why"]
    (repo / "train.py").write_text("print('patched')\n")
    one = provenance.program(argv, workdir=repo, env={})["script"]
    (repo / "train.py").write_text("print('patched again')\n")
    two = provenance.program(argv, workdir=repo, env={})["script"]
    assert one["dirty"] is True and one["diff_files"] == ["train.py"]
    assert one["diff_sha256"] and one["diff_sha256"] != two["diff_sha256"]


def test_program_provenance_of_a_module(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("")
    out = provenance.program(["python", "-m", "mypkg.train"], workdir=Path("/"), env={"PYTHONPATH": str(tmp_path)})
    assert out["script"]["path"] == str(pkg / "train.py") and out["script"]["git"] is None


def test_recipes_without_vars_env_workdir_keep_their_hash():
    """The new keys are left out of a recipe's hash while unset: bundles made before them
    still reproduce (kit reproduce compares recipe_sha256)."""
    import hashlib as h
    import json

    from kit import recipe

    tiny = recipe.load("tiny")[0]
    doc = tiny.model_dump(by_alias=True)
    for key in ("vars", "env", "workdir"):
        del doc[key]
    assert tiny.content_hash() == h.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    assert recipe.load("dsf-tiny")[0].content_hash() != recipe.load("dsf-tiny", ["vars.dsf=/elsewhere"])[0].content_hash()


def test_nan_and_inf_values_are_named_not_stored():
    """A bundle holds finite numbers only (its reader refuses NaN): a NaN loss is named in
    the record, and the iteration is not timed even without Megatron's NaN counter."""
    rec = parse_line(" iteration 4/ 9 | elapsed time per iteration (ms): 70.0 | lm loss: nan | grad norm: inf |")
    assert "loss" not in rec.fields and "grad_norm" not in rec.fields
    assert rec.as_dict()["nonfinite"] == ["loss", "grad_norm"] and rec.untimed == "NaN"
    assert parse_line(" iteration 4/ 9 | lm loss: 6.5 |").as_dict() == {"iteration": 4, "loss": 6.5}
