"""Real images with podman: build the x86_64 image (tcmalloc), run the kit inside it.

The build is shared by the whole session (one ``kit image build`` per session; podman's
layer cache makes a rebuild with unchanged inputs take seconds). .ci/image.sh prepares
the machine: podman settings for the sandbox, the local base image
``localhost/kit-base:bookworm-amd64``; these tests skip, saying so, where that was not done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kit.image.recipe import RecipeOptions, render

CACHE = Path(os.environ.get("KIT_CI_CACHE", "/var/cache/kit-ci"))
BASE = {"amd64": "localhost/kit-base:bookworm-amd64", "arm64": "localhost/kit-base:bookworm-arm64"}
REPO = Path(__file__).resolve().parents[1]


def podman_ready(arch: str) -> str | None:
    """None when podman can build for ``arch`` here, else why not."""
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install podman; .ci/image.sh does it)"
    if "CONTAINERS_CONF" not in os.environ and (CACHE / "containers.conf").is_file():
        os.environ["CONTAINERS_CONF"] = str(CACHE / "containers.conf")
    r = subprocess.run(["podman", "image", "exists", BASE[arch]], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no base image {BASE[arch]} ({r.stderr.strip()[-200:]}): run .ci/image.sh / .ci/arm64.sh first"
    return None


def build_image(target: str, arch: str, wheelhouse: list[Path], *, staged: bool = False) -> dict:
    from kit.image import build as b

    plan = b.prepare(RecipeOptions(target, True, base=BASE[arch], staged=staged), engine="podman",
                     context=CACHE / "ctx" / f"{target}-tcmalloc", wheelhouse=wheelhouse,
                     pip_cache=CACHE / "pip", wheel_cache=CACHE / "wheels")
    return b.run(plan)


def kit_run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def only_bundle(out: Path) -> Path:
    bundles = [p for p in out.iterdir() if p.is_dir()]
    assert len(bundles) == 1, bundles
    return bundles[0]


@pytest.fixture(scope="session")
def x86_image():
    why = podman_ready("amd64")
    if why:
        pytest.skip(why)
    wh = [Path(p) for p in os.environ.get("KIT_WHEELHOUSE", "/opt/wheels").split(os.pathsep)]
    return build_image("x86_64", "amd64", wh)


@pytest.mark.podman
def test_x86_image_labels_and_digest(x86_image):
    info = x86_image
    r = render(RecipeOptions("x86_64", True, base=BASE["amd64"]))
    for k, v in r.labels.items():
        assert info["labels"].get(k) == v, k
    assert info["labels"]["org.kit.source.sha256"] == info["build"]["source_sha256"]
    assert info["digest"].startswith("sha256:") and info["arch"] == "amd64"
    # building again from the same inputs: same labels (and, layers cached, same image)
    again = build_image("x86_64", "amd64", [Path(info["build"]["wheel"]).parent])
    if again["build"]["source_sha256"] != info["build"]["source_sha256"]:
        pytest.skip("the kit's source changed between the two builds (someone edited kit/ meanwhile)")
    assert again["labels"] == info["labels"]
    assert again["digest"] == info["digest"]


@pytest.mark.podman
def test_x86_image_cli_inspect(x86_image):
    out = subprocess.run([sys.executable, "-m", "kit", "image", "inspect", x86_image["ref"]], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["digest"] == x86_image["digest"] and data["labels"]["org.kit.target"] == "x86_64"


@pytest.mark.podman
def test_tcmalloc_preloaded_inside_and_seen_from_host(x86_image, tmp_path):
    from kit import runtimes
    from kit.allocator import mapped_allocator

    rt = runtimes.get("podman", image=x86_image["ref"])
    assert rt.find_tcmalloc() == "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"
    run_id = f"test-{os.getpid()}-{time.monotonic_ns()}"
    argv = rt.wrap(["sh", "-c", "python3 -c 'import time; time.sleep(8)' & wait"],
                   {"LD_PRELOAD": "/somewhere/on/the/host/libtcmalloc.so", "KIT_RUN_ID": run_id},
                   cwd=tmp_path, binds=[tmp_path])
    proc = subprocess.Popen(argv)
    try:
        # found as the monitor finds a container's ranks: by the run id in their environment
        kids = []
        for _ in range(150):
            kids = [p for p in psutil.process_iter(["name"]) if "python3" in (p.info["name"] or "")
                    and _env_of(p).get("KIT_RUN_ID") == run_id]
            if kids:
                break
            time.sleep(0.2)
        assert kids and kids[0].pid != proc.pid, "the python3 inside the container, not podman run"
        seen = mapped_allocator(kids[0].pid)
        assert seen["allocator"] == "tcmalloc", seen
    finally:
        proc.wait(timeout=60)
        rt.close()
    d = rt.describe()
    assert d["digest"] == x86_image["digest"] and d["inside"]["machine"] == "x86_64"
    sw = rt.inspect_software()
    assert sw["torch"].startswith("2.13.0") and sw["arch"] == "x86_64", sw


@pytest.mark.podman
@pytest.mark.slow
def test_kit_run_tiny_tuned_inside_image(x86_image, tmp_path):
    r = kit_run("tiny", "--preset", "tuned", "--runtime", "podman", "--image", x86_image["ref"],
                "--set", "train.iters=6", "--set", "train.warmup_iters=2", "--out", str(tmp_path / "results"),
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    bundle = only_bundle(tmp_path / "results")
    prov = json.loads((bundle / "provenance.json").read_text())
    assert prov["runtime"]["runtime"] == "podman"
    assert prov["runtime"]["digest"] == x86_image["digest"]
    assert prov["runtime"]["labels"]["org.kit.tcmalloc"] == "libgoogle-perftools4"
    assert prov["software"]["executable"].startswith("/opt/kit/venv/")
    alloc = next(s for s in prov["plan"]["settings"] if s["name"] == "allocator")
    assert alloc["verified"] is True and set(alloc["seen"].values()) == {"tcmalloc"}, alloc


@pytest.mark.podman
@pytest.mark.slow
def test_reproduce_checks_the_image_digest(x86_image, tmp_path):
    """`kit reproduce` of a bundle that ran in an image: while the reference still names that
    image, the run is repeated (same digest recorded, loss equal); once the same reference
    names another image (rebuilt with one label changed), it refuses with exit 4 and both
    digests, and runs nothing. The image is passed explicitly: a reproduction never takes an
    image from a bundle (tests/test_reproduce_trust.py)."""
    from conftest import kit_cli

    ref = "localhost/kit-reproduce-test:current"
    subprocess.run(["podman", "tag", x86_image["ref"], ref], check=True, capture_output=True)
    try:
        r = kit_run("tiny", "--runtime", "podman", "--image", ref, "--set", "train.iters=4",
                    "--set", "train.warmup_iters=1", "--out", str(tmp_path / "a"), cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        bundle = only_bundle(tmp_path / "a")
        digest = json.loads((bundle / "provenance.json").read_text())["runtime"]["digest"]
        assert digest == x86_image["digest"]

        # timings of a 4-iteration run are noise: wide timing/memory tolerances, exact-ish loss
        tol = ["--tolerance", "5", "--mem-tolerance", "5", "--loss-tolerance", "1e-4", "--runtime", "podman",
               "--image", ref]
        r = kit_cli("reproduce", str(bundle), "--out", str(tmp_path / "b"), *tol, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "environment mismatch" not in r.stdout
        again = only_bundle(tmp_path / "b")
        assert json.loads((again / "provenance.json").read_text())["runtime"]["digest"] == digest

        ctx = tmp_path / "rebuild"
        ctx.mkdir()
        (ctx / "Containerfile").write_text(f"FROM {ref}\nLABEL org.kit.test=rebuilt\n")
        subprocess.run(["podman", "build", "-q", "-t", ref, "-f", str(ctx / "Containerfile"), str(ctx)],
                       check=True, capture_output=True, text=True, timeout=300)
        r = kit_cli("reproduce", str(bundle), "--out", str(tmp_path / "c"), *tol, cwd=tmp_path)
        assert r.returncode == 4, r.stdout[-3000:] + r.stderr[-3000:]
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("environment mismatch: image"))
        assert digest in line and ref in line
        assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)


@pytest.mark.podman
@pytest.mark.slow
def test_killed_kit_leaves_no_container_and_no_rank(x86_image, tmp_path):
    """The kit SIGKILLed while its ranks train in a container: nothing of the run is left,
    neither the container nor a rank. (Here the podman client already dies of the broken
    output pipe and takes the container with it, so this passes without the reaper too; the
    reaper's part, stopping the client and the ranks and running `podman rm -f`, is
    tested in test_reaper.py and, for torchrun on the host, in test_reliability.py.)"""
    import signal
    import time

    from conftest import run_pids

    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "kit", "run", "tiny", "--runtime", "podman", "--image", x86_image["ref"],
                             "--set", "train.iters=400", "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})
    bundle = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "kit run ended before its first iteration"
            if "iteration 1/" in line:
                break
        bundle = only_bundle(out)
        argv = (bundle / "logs" / "launcher.log").read_text().splitlines()[0].split()
        name = argv[argv.index("--name") + 1]
        assert subprocess.run(["podman", "container", "exists", name]).returncode == 0
        os.killpg(proc.pid, signal.SIGKILL)  # the kit dies without any chance to clean up
        proc.wait(timeout=30)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            gone = subprocess.run(["podman", "container", "exists", name]).returncode == 1
            if gone and not run_pids(bundle.name):
                break
            time.sleep(0.5)
        assert subprocess.run(["podman", "container", "exists", name]).returncode == 1, f"container {name} left"
        assert not run_pids(bundle.name)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if bundle is not None:
            for pid in run_pids(bundle.name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def _env_of(p) -> dict:
    try:
        return p.environ()
    except Exception:  # noqa: BLE001  (gone, or not ours to read)
        return {}


# -- kit image build --dsf: DeepSpeedFugaku set up in the image (kit/image/dsf.py) ---------------
DSF_STANDIN_REF = "localhost/kit-test:x86_64-tcmalloc-dsf-standin"


@pytest.fixture(scope="session")
def dsf_standin_image(tmp_path_factory):
    """The x86_64 image built with ``--dsf`` from the STAND-IN checkout of
    tests/standins/dsf_checkout.py (it stands in for DeepSpeedFugaku, which CI cannot fetch:
    the Megatron stand-in as pretrain_gpt.py, a training.py the real import-guard patch
    applies to, a pybind11 helpers Makefile, a preprocess_data.py). The image's set-up runs
    for real: the patch with git apply, g++ building the helpers for the image's Python, the
    tiny vocabulary and dataset. The checkout's commit has fixed dates, so a second build hits
    podman's layer cache."""
    from kit.image import build as b
    from kit.image import dsf
    from standins.dsf_checkout import make_checkout

    why = podman_ready("amd64")
    if why:
        pytest.skip(why)
    checkout = make_checkout(tmp_path_factory.mktemp("dsf") / "DeepSpeedFugaku")
    wh = [Path(p) for p in os.environ.get("KIT_WHEELHOUSE", "/opt/wheels").split(os.pathsep)]
    plan = b.prepare(RecipeOptions("x86_64", True, base=BASE["amd64"], dsf=dsf.checkout(checkout, REPO)),
                     engine="podman", context=CACHE / "ctx" / "x86_64-tcmalloc-dsf-standin", ref=DSF_STANDIN_REF,
                     wheelhouse=wh, pip_cache=CACHE / "pip")
    return {**b.run(plan), "checkout": checkout, "commit": plan.recipe.labels["org.kit.dsf.commit"]}


@pytest.mark.podman
@pytest.mark.slow
def test_dsf_image_runs_dsf_tiny_with_nothing_from_the_host(dsf_standin_image, tmp_path):
    """`kit run dsf-tiny` in the --dsf image (stand-in program, see the fixture) with the
    recipe's own defaults, /opt/dsf/...: the program, its patch, the helpers and the data
    are the image's; the run records the checkout's commit from the image (no .git there)
    and hashes the image's data files, as a host run records its checkout."""
    from kit.image import dsf

    info = dsf_standin_image
    assert info["labels"]["org.kit.dsf.commit"] == info["commit"]
    assert info["labels"]["org.kit.dsf.patch.sha256"] == dsf.patch_sha256(REPO)
    # inside: the patch applied, the helpers built for the image's Python, the data made
    probe = subprocess.run(["podman", "run", "--rm", info["ref"], "sh", "-c",
                            "grep -c 'kit dsf-setup' /opt/dsf/DeepSpeedFugaku/megatron/training.py; "
                            "ls /opt/dsf/DeepSpeedFugaku/megatron/data/ /opt/dsf/data/; "
                            "python3 -c 'import sysconfig; print(sysconfig.get_config_var(\"EXT_SUFFIX\"))'; "
                            "command -v g++"], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    out = probe.stdout.split()
    assert out[0] == "2" and f"helpers{out[-2]}" in out and out[-1].endswith("g++"), probe.stdout
    assert {"tiny-vocab.json", "tiny-merges.txt", "tiny_text_document.bin", "tiny_text_document.idx"} <= set(out)
    assert not (tmp_path / "opt").exists()
    r = kit_run("dsf-tiny", "--preset", "baseline", "--runtime", "podman", "--image", info["ref"],
                "--set", "train.iters=4", "--set", "train.warmup_iters=1", "--out", str(tmp_path / "results"),
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    bundle = only_bundle(tmp_path / "results")
    launch = (bundle / "logs" / "launcher.log").read_text().splitlines()[0]
    assert "--workdir /opt/dsf/DeepSpeedFugaku" in launch and "-v /opt/dsf" not in launch, launch
    prog = json.loads((bundle / "provenance.json").read_text())["program"]
    assert prog["taken"] == "inside the image"
    script = prog["script"]
    assert script["path"] == "/opt/dsf/DeepSpeedFugaku/pretrain_gpt.py"
    assert script["commit"] == info["commit"] and script["remote"] == "https://github.com/Fugaku-LLM/DeepSpeedFugaku"
    assert script["diff_sha256"] == dsf.patch_sha256(REPO) and script["dirty"] is True
    assert "KIT_PROGRAM.json" in script["source"]
    files = {f["path"]: f for f in prog["files"]}
    assert set(files) == {"/opt/dsf/data/tiny_text_document.bin", "/opt/dsf/data/tiny_text_document.idx",
                          "/opt/dsf/data/tiny-vocab.json", "/opt/dsf/data/tiny-merges.txt"}
    assert all(len(f["sha256"]) == 64 for f in files.values())
