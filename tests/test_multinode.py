"""Multi-node runs on a real Slurm cluster: podman containers as nodes (.ci/cluster.sh).

Each node is a container with its own hostname running munged and slurmd (the controller is
another container); they share the bundle directory, the checkout and the kit's Python at the
host's paths, as compute nodes share a filesystem. Nothing here is a stand-in: sbatch, srun,
salloc, OpenMPI's mpirun and its daemons, py-spy and the kit's monitors run for real, across
the containers' network. What cannot be like a real cluster: the nodes share this machine's
two cores, so the figures are those of an oversubscribed machine (nothing here asserts a time).

The cluster comes from scripts/test.sh (KIT_CLUSTER_ENV names its cluster.env), or is started
here; without podman, root, Slurm's clients or the kit's x86_64 image (or with
KIT_TEST_CLUSTER=0) the tests skip, saying why.

`make test` runs the multi-node runs that cover a kind of path once each (slurm over 2 nodes
x 2 ranks, a rank stalled on the second node, a node killed) within its 30-minute budget on a
fresh 2-core machine; `KIT_TEST_CLUSTER=full` adds the direct launchers inside an allocation
(srun, mpirun) and the 1/2/4-node scaling sweep, which take minutes more each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, bundle_from_output, load
from kit.bundle import read_manifest, verify
from kit.recipe import DEFAULT_COMMAND


NODES = 4  # the cluster's size; each test uses what it needs
full_only = pytest.mark.skipif(os.environ.get("KIT_TEST_CLUSTER") != "full",
                               reason="KIT_TEST_CLUSTER=full runs it (minutes on a 2-core machine; not in make test's budget)")
FAST = ["--set", "train.iters=3", "--set", "train.warmup_iters=1"]
KIT_IMAGE = "localhost/kit:x86_64-tcmalloc"


def _why_not() -> str | None:
    if os.environ.get("KIT_TEST_CLUSTER") == "0":
        return "KIT_TEST_CLUSTER=0"
    if os.geteuid() != 0:
        return "needs root (podman, munged, SlurmUser=root)"
    for exe, what in (("podman", "podman"), ("sbatch", "slurm-wlm"), ("munged", "munge")):
        if not shutil.which(exe) and not Path(f"/usr/sbin/{exe}").exists():
            return f"{exe} is not installed (apt-get install {what})"
    r = subprocess.run(["podman", "image", "exists", KIT_IMAGE], capture_output=True,
                       env={**os.environ, **_containers_conf()})
    if r.returncode != 0:
        return f"the kit's image {KIT_IMAGE} is missing (bash .ci/image.sh builds it; make test does)"
    return None


def _containers_conf() -> dict[str, str]:
    conf = Path(os.environ.get("KIT_CI_CACHE", "/var/cache/kit-ci")) / "containers.conf"
    return {"CONTAINERS_CONF": str(conf)} if conf.is_file() and "CONTAINERS_CONF" not in os.environ else {}


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def cluster():
    """The cluster's client environment (SLURM_CONF, KIT_CLUSTER_SHARED, ...) for `kit` commands."""
    given = os.environ.get("KIT_CLUSTER_ENV")
    started = False
    if given and Path(given).is_file():
        env = _read_env(Path(given))
    else:
        why = _why_not()
        if why:
            pytest.skip(f"no multi-node cluster: {why}")
        t0 = time.monotonic()
        r = subprocess.run(["bash", str(REPO / ".ci" / "cluster.sh"), "start", str(NODES)], capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            msg = f".ci/cluster.sh start {NODES} failed: {r.stderr.strip()[-1500:]}"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        print(f"cluster of {NODES} nodes started in {time.monotonic() - t0:.1f}s")
        env = _read_env(Path(os.environ.get("KIT_CLUSTER_DIR", "/tmp/kit-cluster")) / "cluster.env")
        started = True
    env.update(KIT_POLL_S="1", KIT_COLLECT_GRACE_S="15", COLUMNS="200", **_containers_conf())
    yield env
    if started:
        subprocess.run(["bash", str(REPO / ".ci" / "cluster.sh"), "stop"], capture_output=True, timeout=120)


def kit(env: dict[str, str], *args: str, timeout: float = 840, wrap: list[str] | None = None):
    """``kit ARGS`` on this host against the cluster, from the shared directory (the jobs'
    working directory must exist on the nodes); ``wrap``: e.g. salloc's argv in front."""
    argv = [*(wrap or []), sys.executable, "-m", "kit", *args]
    return subprocess.run(argv, cwd=env["KIT_CLUSTER_SHARED"], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def node(env: dict[str, str], i: int) -> str:
    return f"{env['KIT_CLUSTER_NAME']}node{i}"


def node_names(env: dict[str, str], n: int) -> list[str]:
    return [node(env, i) for i in range(1, n + 1)]


def out_dir(env: dict[str, str], tmp_path: Path) -> str:
    """A new directory under the shared one (never an earlier session's: a sweep would resume it)."""
    import tempfile

    base = Path(env["KIT_CLUSTER_SHARED"]) / "results"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{tmp_path.name}-", dir=base)


def check_multinode_bundle(env: dict[str, str], b: Path, *, nodes: int, ranks_per_node: int) -> dict:
    """What every multi-node bundle must hold: every node named, with its ranks, memory and
    monitor figures; TFLOPs and Est. Aggr. as `kit flops` computes them for the layout."""
    v = verify(b)
    assert v.ok, v.problems
    assert read_manifest(b).status == "ok", read_manifest(b).reason
    m, prov = load(b, "metrics.json"), load(b, "provenance.json")
    names = node_names(env, nodes)
    assert sorted(m["nodes"]) == names, m["nodes"]
    world = nodes * ranks_per_node
    assert sorted(m["ranks"], key=int) == [str(r) for r in range(world)]
    for node, fig in m["nodes"].items():
        assert len(fig["ranks"]) == ranks_per_node, (node, fig)
        assert fig["peak_mem_mib"] > 50 and fig["monitor_cpu_s"] is not None and fig["kit_cpu_s"] is not None
        assert all(m["ranks"][str(r)]["node"] == node for r in fig["ranks"])
    assert m["summary"]["peak_mem_mib_per_node"] == {n: m["nodes"][n]["peak_mem_mib"] for n in names}
    seen = {s["name"]: s for s in prov["plan"]["settings"]}["ranks_per_node"]
    assert seen["seen"] == {n: ranks_per_node for n in names} and seen["verified"] is True
    s, r = m["summary"], yaml.safe_load((b / "recipe.yaml").read_text())
    flops = kit(env, "flops", "--layers", str(r["model"]["layers"]), "--hidden", str(r["model"]["hidden"]),
                "--seq", str(r["model"]["seq"]), "--vocab", str(r["model"]["vocab"]),
                "--global-batch", str(r["batch"]["global"]), "--sec-per-iter", repr(s["sec_per_iter"]),
                "--world-size", str(world), "--nodes", str(nodes), "--json")
    assert flops.returncode == 0, flops.stderr
    want = json.loads(flops.stdout)
    assert s["tflops"] == pytest.approx(want["tflops"], rel=1e-6)
    assert s["est_aggr_pflops"] == pytest.approx(want["est_aggr_pflops"], rel=1e-6)
    assert s["nodes"] == nodes and s["ranks_per_node"] == ranks_per_node
    return m


@pytest.mark.cluster
@pytest.mark.slow
def test_slurm_two_nodes_two_ranks_each(cluster, tmp_path):
    """`kit run --launcher slurm --nodes 2`, two ranks per node: sbatch, kit job-run on the
    first node, srun ranks on both, a kit job-monitor on the second node."""
    proc = kit(cluster, "run", "tiny", "--launcher", "slurm", "--nodes", "2", "--set", "parallel.dp=4", *FAST,
               "--wait", "--out", out_dir(cluster, tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = bundle_from_output(proc.stdout)
    check_multinode_bundle(cluster, b, nodes=2, ranks_per_node=2)
    prov = load(b, "provenance.json")
    assert prov["job"]["nodes"] == node_names(cluster, 2) and prov["job"]["head_node"] == node(cluster, 1)
    assert (b / "monitor" / f"{node(cluster, 2)}.json").is_file()
    assert "#SBATCH --nodes=2" in (b / "job" / "job.sh").read_text()


@pytest.mark.cluster
@pytest.mark.slow
@full_only
@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_direct_launcher_inside_an_allocation(cluster, tmp_path, launcher):
    """`salloc -N 2` then `kit run --launcher srun|mpirun --nodes 2` on this host (a login node,
    not one of the allocation's nodes): the ranks and a monitor run on each allocated node."""
    proc = kit(cluster, "run", "tiny", "--launcher", launcher, "--nodes", "2", "--set", "parallel.dp=2", *FAST,
               "--out", out_dir(cluster, tmp_path), wrap=["salloc", "--nodes", "2", "--exclusive"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = bundle_from_output(proc.stdout)
    m = check_multinode_bundle(cluster, b, nodes=2, ranks_per_node=1)
    assert os.uname().nodename not in m["nodes"]  # this host runs no rank and is not a node of the run
    assert load(b, "provenance.json")["run"]["argv"][0] == launcher


# -- the stacks of another node's ranks, asked through the shared bundle directory -----------
def test_job_monitor_takes_its_ranks_stacks_when_the_head_node_asks(tmp_path):
    """Without the cluster: a real sleeping process stands for a rank of this node; the
    head's request file makes the job-monitor's side take its stack with py-spy, and the
    head's side reads which node took it; a node that never answers is named after the wait."""
    from kit import jobs, plan as plan_mod

    if not shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"):
        pytest.skip("py-spy is not installed")
    plan = plan_mod.resolve(recipe_name="tiny", nodes=1)
    rank = subprocess.Popen([sys.executable, "-c", "import time\ndef waiting():\n    time.sleep(60)\nwaiting()"])
    try:
        class ThisNode:  # the job-monitor's Monitor, as far as stacks go: rank 3 is that process
            def pids(self):
                return {3: rank.pid}

        (tmp_path / "monitor").mkdir()
        assert not jobs._take_stacks_if_asked(tmp_path, "nodeB", ThisNode(), plan)  # nobody asked yet
        assert not (tmp_path / "logs" / "stacks").exists()
        (tmp_path / "monitor" / "nodeB.json").write_text(json.dumps({"node": "nodeB", "ranks": {"3": {}}}))
        (tmp_path / "monitor" / "nodeC.json").write_text(json.dumps({"node": "nodeC", "ranks": {"5": {}}}))
        time.sleep(0.5)  # let the interpreter reach the sleep
        (tmp_path / "monitor" / jobs.STACKS_REQUEST).write_text("asked\n")  # as the head node does
        assert jobs._take_stacks_if_asked(tmp_path, "nodeB", ThisNode(), plan)
        got = jobs.request_node_stacks(tmp_path, exclude={"nodeA"}, timeout_s=2)
        assert got["3"].startswith("py-spy") and got["3"].endswith(" on nodeB") and got["node nodeC"] == "no stacks within 2s", got
        text = (tmp_path / "logs" / "stacks" / "rank3.py-spy.txt").read_text()
        assert f"Process {rank.pid}:" in text and "waiting" in text, text
        # the answer is not a node's monitor snapshot
        assert [m["node"] for m in jobs.read_node_monitors(tmp_path)] == ["nodeB", "nodeC"]
    finally:
        rank.kill()
        rank.wait()


def hang_recipe(env: dict[str, str], tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    data["name"] = "tiny-hang"
    data["train"].update(iters=6, warmup_iters=1, stall_timeout_s=30)
    data["command"] = DEFAULT_COMMAND + ["--fault", "hang@3:1"]  # rank 1: on the second node
    p = Path(out_dir(env, tmp_path)) / "tiny-hang.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.cluster
@pytest.mark.slow
def test_rank_stopped_on_second_node_is_stalled_with_its_stack(cluster, tmp_path):
    proc = kit(cluster, "run", str(hang_recipe(cluster, tmp_path)), "--launcher", "slurm", "--nodes", "2",
               "--set", "parallel.dp=2", "--wait", "--out", out_dir(cluster, tmp_path))
    b = bundle_from_output(proc.stdout)
    m = read_manifest(b)
    assert m.status == "stalled" and "no new iteration" in m.reason, proc.stdout + proc.stderr
    assert proc.returncode == 3
    assert verify(b).ok
    ranks = load(b, "metrics.json")["ranks"]
    assert ranks["1"]["node"] == node(cluster, 2)
    # rank 1's stack was taken by py-spy on the second node (the job-monitor there), of its pid there
    stacks = load(b, "provenance.json")["run"]["stacks"]
    assert stacks["1"].startswith("py-spy") and stacks["1"].endswith(f"on {node(cluster, 2)}"), stacks
    text = (b / "logs" / "stacks" / "rank1.py-spy.txt").read_text()
    assert f"Process {ranks['1']['pid']}:" in text and "_inject" in text, text
    assert "rank0.py-spy.txt" in os.listdir(b / "logs" / "stacks")  # rank 0, on the head node, too


@pytest.mark.cluster
@pytest.mark.slow
def test_node_killed_mid_run_fails_naming_it_and_collect_keeps_the_others(cluster, tmp_path):
    """The first node's container (where kit job-run runs) is killed after two iterations: the
    job fails with that node named, and `kit collect` finalizes the bundle from what the job
    recorded on the shared filesystem (the log, the other node's monitor)."""
    proc = subprocess.Popen([sys.executable, "-m", "kit", "run", "tiny", "--launcher", "slurm", "--nodes", "2",
                             "--set", "parallel.dp=2", "--set", "train.iters=400", "--out", out_dir(cluster, tmp_path)],
                            cwd=cluster["KIT_CLUSTER_SHARED"], env={**os.environ, **cluster}, stdout=subprocess.PIPE,
                            text=True)
    out, _ = proc.communicate(timeout=120)
    b = bundle_from_output(out)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            log = b / "logs" / "launcher.log"
            if log.is_file() and len(re.findall(r"iteration +\d+/", log.read_text(errors="replace"))) >= 2 and \
                    (b / "monitor" / f"{node(cluster, 2)}.json").is_file():
                break
            time.sleep(2)
        else:
            pytest.fail("no two iterations within 600 s")
        subprocess.run(["podman", "kill", node(cluster, 1)], check=True, capture_output=True, env={**os.environ, **cluster})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            c = kit(cluster, "collect", str(b), timeout=300)
            if c.returncode != 4:  # 4: the job has not ended yet
                break
            time.sleep(3)
        m = read_manifest(b)
        assert m.status == "failed", (m.status, m.reason, c.stdout, c.stderr)
        assert node(cluster, 1) in m.reason and "NODE_FAIL" in m.reason, m.reason
        assert verify(b).ok
        metrics = load(b, "metrics.json")
        assert metrics["summary"]["iterations_logged"] >= 2
        assert node(cluster, 2) in metrics["nodes"] and metrics["ranks"]["1"]["node"] == node(cluster, 2)
        assert load(b, "provenance.json")["job"]["collected_by"] == "kit collect"
    finally:  # the cluster back as it was, for the tests after this one
        subprocess.run(["bash", str(REPO / ".ci" / "cluster.sh"), "start", str(NODES)], capture_output=True,
                       timeout=600)


@pytest.mark.cluster
@pytest.mark.slow
@full_only
def test_scaling_sweep_over_one_two_and_four_nodes(cluster, tmp_path):
    out = Path(out_dir(cluster, tmp_path))
    proc = kit(cluster, "sweep", str(REPO / "sweeps" / "scaling.yaml"), "--out", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bundles = sorted((p for p in out.iterdir() if (p / "manifest.json").is_file()),
                     key=lambda p: load(p, "metrics.json")["summary"]["nodes"])
    assert [load(p, "metrics.json")["summary"]["nodes"] for p in bundles] == [1, 2, 4]
    check_multinode_bundle(cluster, bundles[2], nodes=4, ranks_per_node=1)
    rep = kit(cluster, "report", str(out), "--plot", str(out / "plots"))
    assert rep.returncode == 0, rep.stderr
    lines = [ln for ln in rep.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| Nodes | Size | DP | TP | PP | MBS |")
    assert [ln.split("|")[1].strip().split()[0] for ln in lines[2:]] == ["1", "2", "4"]
    png = out / "plots" / "scaling.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
