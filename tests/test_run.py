"""`kit run` end to end: real ranks (torchrun + DeepSpeed on gloo), real tcmalloc, a real bundle."""

import csv
import io

import pytest
import yaml

from kit.bundle import read_manifest, verify
from conftest import FAST, REPO, bundle_from_output, kit_cli, load

pytestmark = pytest.mark.slow


def check_bundle(bundle, world):
    v = verify(bundle)
    assert v.ok, v.problems
    m = read_manifest(bundle)
    assert m.status == "ok"
    metrics = load(bundle, "metrics.json")
    s = metrics["summary"]
    assert s["iterations_logged"] == 6 and s["iterations_timed"] == 5
    assert s["sec_per_iter"] > 0 and s["tflops"] > 0 and s["tokens_per_sec"] > 0
    assert s["tflops_per_rank"] * world == pytest.approx(s["tflops"])  # one node: per node = per rank x ranks
    assert s["est_aggr_pflops"] == pytest.approx(s["tflops"] / 1024)
    assert s["final_loss"] is not None
    ranks = metrics["ranks"]
    assert sorted(ranks) == [str(r) for r in range(world)]
    for r in ranks.values():
        assert r["peak_rss_mib"] > 50
        assert r["allocator"]["allocator"] == "tcmalloc", r   # seen in the rank's /proc/<pid>/maps
    assert s["peak_mem_mib"] == pytest.approx(sum(r["peak_rss_mib"] for r in ranks.values()), rel=0.01)
    (node,) = metrics["nodes"].values()
    # what the kit spent while the ranks ran: the monitor is part of it, and it is small
    assert 0 < node["monitor_cpu_s"] <= node["kit_cpu_s"] < 0.2 * s["duration_s"], node
    prov = load(bundle, "provenance.json")
    settings = {x["name"]: x for x in prov["plan"]["settings"]}
    assert settings["allocator"]["verified"] is True
    assert settings["freq_mhz"]["requested"] == 2200 and settings["freq_mhz"]["status"] == "not-applied"
    assert settings["freq_mhz"]["seen"]["source"]
    assert settings["ranks_per_node"]["verified"] is True
    assert prov["software"]["torch"].startswith("2.") and prov["software"]["deepspeed"]
    assert "PyTorch built with" in prov["software"]["torch_config"]
    assert any(p.startswith("deepspeed==") for p in prov["software"]["packages"])
    assert prov["kit"]["version"] and "git_commit" in prov["kit"]
    for key in ("cpu_model", "physical_cores", "numa_nodes", "frequency", "memory_total_mib", "kernel", "os", "hostname"):
        assert key in prov["host"]
    assert prov["environment"]["KIT_RUN_ID"] == m.id
    assert "libtcmalloc" in prov["environment"]["LD_PRELOAD"]
    assert prov["run"]["argv"][1:3] == ["-m", "torch.distributed.run"]
    assert (bundle / "recipe.yaml").is_file() and (bundle / "preset.yaml").is_file()
    assert (bundle / "logs" / "launcher.log").stat().st_size > 0
    rank_logs = list((bundle / "logs" / "torchrun").rglob("stdout.log"))
    assert len(rank_logs) == world


def test_one_rank_tuned(tiny_run_1rank):
    bundle, proc = tiny_run_1rank
    check_bundle(bundle, 1)
    # the run ends with the row in the sweep table's format and the bundle path
    assert "| Nodes | Size | DP | TP | PP |" in proc.stdout
    assert '1 (2.2Hz, LD_PRELOAD=libtcmalloc.so, "retention_state=0")' in proc.stdout
    assert "iteration 6/6" in proc.stdout


def test_two_ranks_tuned(tiny_run_2rank):
    bundle, proc = tiny_run_2rank
    check_bundle(bundle, 2)
    assert "max-proc-per-node=2" in proc.stdout


def test_secrets_in_the_environment_stay_out_of_the_bundle(tmp_path):
    secret = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    proc = kit_cli("run", "tiny", "--preset", "baseline", "--set", "train.iters=2", "--set", "train.warmup_iters=1",
                   "--out", str(tmp_path), env={"GITHUB_TOKEN": secret, "DATABASE_URL": "postgres://u:hunter2@db/x"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bundle = next(tmp_path.iterdir())
    for f in bundle.rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert secret not in text and "hunter2" not in text, f
    env = load(bundle, "provenance.json")["environment"]
    assert env["GITHUB_TOKEN"] == "<redacted>"
    # the baseline preset uses glibc malloc, and the monitor sees no tcmalloc
    ranks = load(bundle, "metrics.json")["ranks"]
    assert ranks["0"]["allocator"]["allocator"] == "glibc"


def test_bad_input_is_one_line_exit_2(tmp_path):
    proc = kit_cli("run", "tiny", "--set", "parallel.tp=3", "--out", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "parallel.tp 3 does not divide model.heads 4" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_device_memory_reports_reach_the_bundle(tmp_path):
    """Each rank's CUDA memory report (Megatron's report_memory line, printed by the stand-in
    tests/standins/cuda_rank.py: this machine has no GPU) lands in metrics.json per rank,
    with the largest as the run's device peak."""
    data = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    data.update(name="cuda-standin", command=["{python}", str(REPO / "tests" / "standins" / "cuda_rank.py"),
                                              "{train.iters}"])
    recipe = tmp_path / "cuda-standin.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = kit_cli("run", str(recipe), "--preset", "baseline", "--set", "parallel.dp=2", *FAST,
                   "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = load(bundle_from_output(proc.stdout), "metrics.json")
    assert m["ranks"]["0"]["device_memory_mib"] == {"allocated": 500.0, "max_allocated": 1000.0,
                                                    "reserved": 2048.0, "max_reserved": 2048.0}
    assert m["ranks"]["1"]["device_memory_mib"]["max_allocated"] == 1010.0
    assert m["summary"]["device_peak_allocated_mib"] == 1010.0
    assert m["summary"]["device_peak_reserved_mib"] == 2058.0
    report = kit_cli("report", str(tmp_path / "r"), "-f", "csv")
    assert report.returncode == 0, report.stderr
    (row,) = csv.DictReader(io.StringIO(report.stdout))
    assert row["device_mem_mib"] == "2058.0"
