"""kit image: recipe rendering (golden files), spython conversion, engine command lines.

No container engine needed: Singularity and podman are stood in for by small scripts on
PATH where a command line must be composed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit.errors import KitError
from kit.image import build as b
from kit.image import spy
from kit.image.cli import app
from kit.image.convert import spython_dockerfile, to_dockerfile
from kit.image.labels import verify_hash
from kit.image.recipe import RecipeOptions, committed_path, load_versions, render

GOLDEN = Path(__file__).parent / "golden" / "image"
CASES = {
    "x86_64-tcmalloc": RecipeOptions("x86_64", True),
    "a64fx-tcmalloc": RecipeOptions("a64fx", True),
    "x86_64-glibc-localbase": RecipeOptions("x86_64", False, base="localhost/kit-base:bookworm-amd64"),
    "a64fx-glibc-localbase": RecipeOptions("a64fx", False, base="localhost/kit-base:bookworm-arm64"),
    "a64fx-tcmalloc-localbase-staged": RecipeOptions("a64fx", True, base="localhost/kit-base:bookworm-arm64",
                                                     staged=True),
    "a64fx-tcmalloc-torch-source": RecipeOptions("a64fx", True, torch="source"),
}
# --torch-wheel: a file with fixed bytes stands in for a torch wheel (a recipe reads only its
# name and sha256; the image's pip would install the real one)
STANDIN_WHEEL = "torch-2.5.0-cp311-cp311-linux_aarch64.whl"
STANDIN_WHEEL_BYTES = b"a stand-in for a torch wheel\n"
STANDIN_WHEEL_SHA256 = "59abcbf11085bbedd1fc2cc5dc36f80484ca0d57ec1cd57af1d5d2160485cb55"
CASES["a64fx-glibc-torch-wheel"] = RecipeOptions("a64fx", False, torch="wheel", torch_wheel=STANDIN_WHEEL,
                                                 torch_wheel_sha256=STANDIN_WHEEL_SHA256)


@pytest.mark.parametrize("case", sorted(CASES))
def test_recipe_matches_golden(case):
    r = render(CASES[case])
    assert r.text == (GOLDEN / f"{case}.def").read_text(), "re-render with kit image recipe -o tests/golden/image/..."
    assert to_dockerfile(r.text) == (GOLDEN / f"{case}.Dockerfile").read_text()


@pytest.mark.parametrize("target", ["x86_64", "a64fx"])
def test_committed_definition_files_are_current(target):
    r = render(RecipeOptions(target, True))
    assert committed_path(target).read_text() == r.text, f"run kit image recipe --target {target} --write"
    assert committed_path(target).with_suffix(".Dockerfile").read_text() == to_dockerfile(r.text)


def test_render_is_stable_and_self_hashed():
    a, b2 = render(RecipeOptions("a64fx", True)), render(RecipeOptions("a64fx", True))
    assert a.text == b2.text and a.sha256 == b2.sha256
    assert verify_hash(a.text)
    assert not verify_hash(a.text.replace("deepspeed==", "deepspeed>="))
    assert f"org.kit.recipe.sha256 {a.sha256}" in a.text


def test_labels_carry_the_pinned_versions():
    v = load_versions()
    for target in ("x86_64", "a64fx"):
        r = render(RecipeOptions(target, True))
        t = v["targets"][target]
        assert r.labels["org.kit.torch"] == str(t["torch"])
        assert r.labels["org.kit.deepspeed"] == str(v["deepspeed"])
        assert r.labels["org.kit.arch"] == t["arch"]
        assert r.labels["org.kit.tcmalloc.path"] == f"/usr/lib/{t['machine']}-linux-gnu/libtcmalloc.so.4"
        for k, val in r.labels.items():
            assert f"    {k} {val}" in r.text
        assert f"torch=={t['torch']}" in r.text
        assert "DS_BUILD_OPS=0" in r.text
    # the x86 torch is the CPU wheel, the glibc variant has no tcmalloc
    assert "+cpu" in render(RecipeOptions("x86_64", True)).labels["org.kit.torch"]
    g = render(RecipeOptions("x86_64", False))
    assert g.labels["org.kit.tcmalloc"] == "none" and "libgoogle-perftools4" not in g.text
    # torch's aarch64 wheel picks OpenBLAS's A64FX kernels by itself (tests/test_a64fx_blas.py)
    assert "OPENBLAS_CORETYPE" not in render(RecipeOptions("a64fx", True)).text


def test_base_must_be_lower_case_one_reference():
    with pytest.raises(KitError, match="upper-case"):
        render(RecipeOptions("x86_64", True, base="localhost/Kit-base:x"))
    with pytest.raises(KitError, match="unknown target"):
        render(RecipeOptions("power9", True))


def test_post_lines_are_one_run_each_and_kit_source_comes_late():
    r = render(RecipeOptions("x86_64", True))
    post = r.text.split("%post\n", 1)[1].strip().splitlines()
    df = to_dockerfile(r.text, mount_build_inputs=True).splitlines()
    runs = [ln for ln in df if ln.startswith("RUN ")]
    assert [ln[4:] for ln in runs] == [p.strip() for p in post]
    # spython's own conversion puts all %files first; ours moves the kit source down
    raw = spython_dockerfile(r.text).splitlines()
    assert raw.index("ADD kit-src /opt/kit/src") < raw.index(next(x for x in raw if x.startswith("RUN ")))
    i = df.index("ADD kit-src /opt/kit/src")
    assert "/opt/kit/src" in df[i + 1] and df[i + 1].startswith("RUN ")
    assert all("torch==" not in x for x in df[i:]), "torch must be installed before the kit source is added"
    assert not any(x.startswith("ADD wheelhouse") for x in df)
    assert "ADD wheelhouse /opt/kit/wheelhouse" in to_dockerfile(r.text, mount_build_inputs=False)
    assert sum(x.startswith("LABEL ") for x in df) == len(r.labels)


def test_cli_recipe_prints_golden_and_writes(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["recipe", "--target", "a64fx", "--tcmalloc"])
    assert res.exit_code == 0, res.output
    assert res.output == (GOLDEN / "a64fx-tcmalloc.def").read_text()
    res = runner.invoke(app, ["recipe", "--target", "x86_64", "--no-tcmalloc", "--base",
                              "localhost/kit-base:bookworm-amd64", "-o", str(tmp_path / "x.def")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.def").read_text() == (GOLDEN / "x86_64-glibc-localbase.def").read_text()
    assert (tmp_path / "x.Dockerfile").read_text() == (GOLDEN / "x86_64-glibc-localbase.Dockerfile").read_text()


def test_torch_source_recipe_builds_openblas_for_a64fx_onednn_with_acl_and_torch_with_mcpu():
    """--torch source: every pin of the target's source: block is in the text and the labels,
    OpenBLAS is built for A64FX before torch, which is built against it and ACL with
    -mcpu=a64fx, installed from the wheel it made (kept in /opt/kit/dist)."""
    src = load_versions()["targets"]["a64fx"]["source"]
    r = render(RecipeOptions("a64fx", True, torch="source"))
    assert r.options.variant() == "a64fx-tcmalloc-torch-source"
    assert r.options.tag() == "localhost/kit:a64fx-tcmalloc-torch-source"
    assert r.labels["org.kit.torch"] == str(src["torch"]) and r.labels["org.kit.torch.build"] == "source"
    assert r.labels["org.kit.openblas"] == f"{src['openblas']} TARGET=A64FX"
    assert r.labels["org.kit.onednn"] == str(src["onednn"]) and r.labels["org.kit.acl"] == str(src["acl"])
    assert r.labels["org.kit.torch.cflags"] == "-mcpu=a64fx"
    assert verify_hash(r.text)
    post = [ln.strip() for ln in r.text.split("%post\n", 1)[1].strip().splitlines()]
    ob = next(i for i, ln in enumerate(post) if f"--branch v{src['openblas']} {src['openblas_git']}" in ln)
    acl = next(i for i, ln in enumerate(post) if f"--branch v{src['acl']} {src['acl_git']}" in ln)
    pt = next(i for i, ln in enumerate(post) if f"--branch v{src['torch']} {src['torch_git']}" in ln)
    inst = next(i for i, ln in enumerate(post) if f"/opt/kit/dist/torch-{src['torch']}-*.whl" in ln)
    ds = next(i for i, ln in enumerate(post) if "deepspeed==" in ln)
    assert ob < acl < pt < inst < ds
    assert "TARGET=A64FX" in post[ob] and "PREFIX=/opt/openblas install" in post[ob]
    assert f"mkl-dnn checkout v{src['onednn']}" in post[pt]
    for setting in ("CFLAGS='-mcpu=a64fx'", "CXXFLAGS='-mcpu=a64fx'", "USE_MKLDNN_ACL=1", "ACL_ROOT_DIR=/opt/acl",
                    "BLAS=OpenBLAS", "OpenBLAS_HOME=/opt/openblas", f"MAX_JOBS={src['max_jobs']}",
                    f"PYTORCH_BUILD_VERSION={src['torch']}", "--dist-dir /opt/kit/dist"):
        assert setting in post[pt], setting
    # sources are removed by the line that built them (no layer keeps them); no pip torch
    assert post[pt].endswith("cd / && rm -rf /opt/kit/build/pytorch") and post[ob].endswith("rm -rf /opt/kit/build/openblas")
    assert not any("'torch==" in ln for ln in post)
    # spython keeps it one RUN per line
    runs = [ln[4:] for ln in to_dockerfile(r.text).splitlines() if ln.startswith("RUN ")]
    assert runs == post


def test_torch_wheel_recipe_installs_the_brought_wheel_after_checking_its_sha256(tmp_path):
    wheel = tmp_path / STANDIN_WHEEL
    wheel.write_bytes(STANDIN_WHEEL_BYTES)
    res = CliRunner().invoke(app, ["recipe", "--target", "a64fx", "--no-tcmalloc", "--torch-wheel", str(wheel)])
    assert res.exit_code == 0, res.output
    assert res.output == (GOLDEN / "a64fx-glibc-torch-wheel.def").read_text()
    r = render(CASES["a64fx-glibc-torch-wheel"])
    assert r.labels["org.kit.torch"] == "2.5.0" and r.labels["org.kit.torch.wheel.sha256"] == STANDIN_WHEEL_SHA256
    line = next(ln.strip() for ln in r.text.splitlines() if STANDIN_WHEEL in ln and "sha256sum" in ln)
    assert line.startswith(f"echo '{STANDIN_WHEEL_SHA256}  /opt/kit/wheelhouse/{STANDIN_WHEEL}' | sha256sum -c - && ")
    # the build context carries that very file; another file under the same name is refused
    plan = b.prepare(r.options, engine="podman", context=tmp_path / "ctx", torch_wheel=wheel, ca_bundle="none")
    assert (tmp_path / "ctx" / "wheelhouse" / STANDIN_WHEEL).read_bytes() == STANDIN_WHEEL_BYTES
    assert plan.argv[plan.argv.index("-t") + 1] == "localhost/kit:a64fx-glibc-torch-wheel"
    other = tmp_path / "other" / STANDIN_WHEEL
    other.parent.mkdir()
    other.write_bytes(b"another file\n")
    with pytest.raises(KitError, match="not the wheel the recipe names"):
        b.prepare(r.options, engine="podman", context=tmp_path / "ctx2", torch_wheel=other, ca_bundle="none")


def test_torch_source_needs_no_wheelhouse(tmp_path):
    plan = b.prepare(RecipeOptions("a64fx", True, torch="source"), engine="podman", context=tmp_path / "ctx",
                     wheelhouse=[tmp_path], ca_bundle="none")
    assert plan.wheel is None and not any((tmp_path / "ctx" / "wheelhouse").iterdir())


@pytest.mark.parametrize("args, where", [
    (["--target", "x86_64", "--torch", "source"], "--torch"),
    (["--target", "a64fx", "--torch", "conda"], "--torch"),
    (["--target", "a64fx", "--torch", "wheel"], "--torch"),
    (["--target", "a64fx", "--torch", "source", "--staged"], "--staged"),
    (["--target", "a64fx", "--torch", "source", "--write"], "--write"),
    (["--target", "a64fx", "--torch-wheel", "WHEEL:torch-2.5.0-cp312-cp312-linux_aarch64.whl"], "--torch-wheel"),
    (["--target", "a64fx", "--torch-wheel", "WHEEL:torch-2.5.0-cp311-cp311-linux_x86_64.whl"], "--torch-wheel"),
    (["--target", "a64fx", "--torch-wheel", "WHEEL:numpy-2.0-cp311-cp311-linux_aarch64.whl"], "--torch-wheel"),
    (["--target", "a64fx", "--torch-wheel", "WHEEL:torch-2.5$(id)-cp311-cp311-linux_aarch64.whl"], "--torch-wheel"),
    (["--target", "a64fx", "--torch-wheel", "WHEEL:torch-2.5 x-cp311-cp311-linux_aarch64.whl"], "--torch-wheel"),
    (["--target", "a64fx", "--torch-wheel", "WHEEL:torch-2.5.0-cp311-cp311-linux_aarch64.whl", "--torch", "source"],
     "--torch-wheel"),
    (["--target", "a64fx", "--torch-wheel", "/nonexistent/torch-2.5.0-cp311-cp311-linux_aarch64.whl"], "--torch-wheel"),
])
def test_bad_torch_options_are_one_line_errors(args, where, tmp_path):
    from conftest import kit_cli

    for i, a in enumerate(args):
        if a.startswith("WHEEL:"):
            args[i] = str(tmp_path / a[6:])
            Path(args[i]).write_bytes(STANDIN_WHEEL_BYTES)
    proc = kit_cli("image", "recipe", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and where in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# -- engines ------------------------------------------------------------------------------

def _fake(bin_dir: Path, name: str, script: str) -> Path:
    p = bin_dir / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def test_no_singularity_binary_is_a_clear_error(empty_path):
    with pytest.raises(KitError) as e:
        b.detect_engine("singularity")
    assert "no singularity binary on PATH" in str(e.value) and "apptainer" in str(e.value).lower()
    with pytest.raises(KitError, match="no container engine found"):
        b.detect_engine(None)
    from kit import runtimes
    rt = runtimes.get("singularity", image="kit.sif")
    with pytest.raises(KitError, match="no apptainer or singularity binary on PATH"):
        rt.wrap(["python3"], {}, cwd=Path.cwd(), binds=[])


def test_engine_preference_order(empty_path):
    _fake(empty_path, "podman", "exit 0\n")
    _fake(empty_path, "docker", "exit 0\n")
    assert b.detect_engine(None) == "podman"
    _fake(empty_path, "apptainer", "exit 0\n")
    assert b.detect_engine(None) == "apptainer"
    assert b.detect_engine("docker") == "docker"
    with pytest.raises(KitError, match="unknown engine"):
        b.detect_engine("lxc")


def test_singularity_build_argv_is_spythons(empty_path, tmp_path, monkeypatch):
    sing = _fake(empty_path, "singularity", "exit 0\n")
    wheel_dir = tmp_path / "wh"
    wheel_dir.mkdir()
    name = load_versions()["targets"]["x86_64"]["torch_wheel"]
    (wheel_dir / name).write_bytes(b"not really a wheel")
    monkeypatch.chdir(tmp_path)
    plan = b.prepare(RecipeOptions("x86_64", True), engine="singularity", context=tmp_path / "ctx",
                     wheelhouse=[wheel_dir])
    fakeroot = [] if os.geteuid() == 0 else ["--fakeroot"]
    sif = str(tmp_path / "kit-x86_64-tcmalloc.sif")
    # the documented `singularity build [--force] [--fakeroot] IMAGE RECIPE`
    assert plan.argv == [str(sing), "build", "--force", *fakeroot, sif, "kit.def"]
    # ... and exactly what spython's Client.build composes
    from spython.main import get_client
    import spython.utils
    got = []
    client = get_client(quiet=True)
    client._run_command = lambda cmd, **kw: got.append(cmd)
    monkeypatch.setattr(spython.utils, "check_install", lambda *a, **k: True)
    client.build(recipe="kit.def", image=sif, sudo=False, force=True, options=fakeroot, quiet=True)
    assert [str(sing), *got[0][1:]] == plan.argv
    assert plan.cwd == tmp_path / "ctx"
    for f in ("kit.def", "Dockerfile", "constraints.txt", f"wheelhouse/{name}", "kit-src/pyproject.toml",
              "kit-src/kit/__init__.py", "kit-src/KIT_SOURCE.json"):
        assert (tmp_path / "ctx" / f).exists(), f


def test_x86_without_cpu_wheel_says_where_to_put_it(tmp_path):
    with pytest.raises(KitError) as e:
        b.prepare(RecipeOptions("x86_64", True), engine="podman", context=tmp_path / "ctx", wheelhouse=[tmp_path])
    assert "--wheelhouse" in str(e.value) and "+cpu" in str(e.value)


def test_podman_build_argv(tmp_path):
    wheel_dir = tmp_path / "wh"
    wheel_dir.mkdir()
    plan = b.prepare(RecipeOptions("a64fx", True, base="localhost/kit-base:bookworm-arm64"), engine="podman",
                     context=tmp_path / "ctx", wheelhouse=[wheel_dir], pip_cache=tmp_path / "pip", ca_bundle="none")
    a = plan.argv
    assert a[:2] == ["podman", "build"] and a[-1] == str(tmp_path / "ctx")
    assert a[a.index("--arch") + 1] == "arm64"
    assert a[a.index("-t") + 1] == "localhost/kit:a64fx-tcmalloc"
    assert f"{tmp_path / 'ctx' / 'wheelhouse'}:/opt/kit/wheelhouse:ro" in a
    assert f"{tmp_path / 'pip'}:/var/cache/kit-pip" in a
    assert f"org.kit.source.sha256={plan.source_sha256}" in a
    assert "/host-ca.crt" not in " ".join(a)
    # the same inputs give the same source hash (labels stable across builds)
    again = b.prepare(RecipeOptions("a64fx", True, base="localhost/kit-base:bookworm-arm64"), engine="podman",
                      context=tmp_path / "ctx2", wheelhouse=[wheel_dir], ca_bundle="none")
    assert again.source_sha256 == plan.source_sha256 and again.recipe.text == plan.recipe.text


# -- runtimes -----------------------------------------------------------------------------

LABELS = {"org.kit.tcmalloc.path": "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4", "org.kit.arch": "arm64"}


def test_singularity_exec_argv(empty_path, tmp_path):
    labels = json.dumps({"data": {"attributes": {"labels": LABELS}}})
    sing = _fake(empty_path, "singularity", f"[ \"$1\" = inspect ] && echo '{labels}'\nexit 0\n")
    sif = tmp_path / "kit.sif"
    sif.write_bytes(b"SIF")
    from kit import runtimes
    rt = runtimes.get("singularity", image=str(sif))
    argv = rt.wrap(["torchrun", "--nproc-per-node", "2", "-m", "kit.workload"],
                   {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "OMP_NUM_THREADS": "2"},
                   cwd=tmp_path, binds=[tmp_path / "bundle"])
    assert argv[:2] == ["sh", "-c"] and argv[3] == "kit-singularity"
    inner = argv[4:]
    expected_opts = ["--cleanenv", "--pwd", str(tmp_path), "--bind", f"{tmp_path / 'bundle'}:{tmp_path / 'bundle'}",
                     "--bind", f"{tmp_path}:{tmp_path}", *sum((["--bind", f"{p}:{p}"] for p in rt.host_binds()), []),
                     "--env", "LD_PRELOAD=/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4", "--env", "OMP_NUM_THREADS=2"]
    assert inner == [str(sing), "exec", *expected_opts, str(sif), "torchrun", "--nproc-per-node", "2", "-m", "kit.workload"]
    assert spy.exec_argv(str(sing), image=str(sif), command=["torchrun", "--nproc-per-node", "2", "-m", "kit.workload"],
                         options=expected_opts) == inner
    assert rt.find_tcmalloc() == LABELS["org.kit.tcmalloc.path"]


def test_singularity_shim_passes_launcher_variables(empty_path):
    from kit.runtimes.singularity import SHIM
    env = {"PATH": "/usr/bin:/bin", "SLURM_PROCID": "3", "RANK": "1", "OMPI_COMM_WORLD_RANK": "2", "HOME_X": "no"}
    out = subprocess.run(["sh", "-c", SHIM, "kit-singularity", "env"], env=env, capture_output=True, text=True).stdout
    for k, v in (("SLURM_PROCID", "3"), ("RANK", "1"), ("OMPI_COMM_WORLD_RANK", "2")):
        assert f"SINGULARITYENV_{k}={v}" in out and f"APPTAINERENV_{k}={v}" in out
    assert "ENV_HOME_X" not in out


def test_podman_wrap_and_roots(empty_path, tmp_path):
    inspect = json.dumps([{"Id": "sha256:" + "a" * 64, "Digest": "sha256:" + "b" * 64, "Architecture": "arm64",
                           "Os": "linux", "Labels": LABELS}])
    _fake(empty_path, "podman", f"[ \"$1\" = image ] && echo '{inspect}' && exit 0\n"
                                f"[ \"$1\" = inspect ] && echo $$ && exit 0\nexec /bin/sleep 5\n")
    from kit import runtimes
    rt = runtimes.get("podman", image="localhost/kit:a64fx-tcmalloc")
    argv = rt.wrap(["python3", "-V"], {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"},
                   cwd=tmp_path, binds=[tmp_path / "b"])
    assert argv[:3] == ["podman", "run", "--rm"]
    assert argv[argv.index("--arch") + 1] == "arm64"
    assert argv[-3:] == ["localhost/kit:a64fx-tcmalloc", "python3", "-V"]
    assert "LD_PRELOAD=/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4" in argv
    assert "--env=SLURM_*" in argv and "--env=QEMU_CPU" in argv
    assert argv[argv.index("--workdir") + 1] == str(tmp_path)
    assert f"{tmp_path / 'b'}:{tmp_path / 'b'}" in argv
    assert rt.describe.__func__  # noqa: B018
    assert rt.image_info()["digest"] == "sha256:" + "a" * 64


def test_singularity_exec_argv_is_spythons(monkeypatch):
    """The exec line the singularity runtime runs is the one spython's Client.execute composes
    (spython's private _run_command is captured here, in the test only, to read it)."""
    from spython.main import get_client
    import spython.utils

    opts = ["--bind", "/work:/work", "--env", "OMP_NUM_THREADS=2", "--pwd", "/work"]
    ours = spy.exec_argv("/usr/bin/singularity", image="kit.sif", command=["python", "-m", "kit.workload"],
                         options=opts)
    got = []
    client = get_client(quiet=True)
    client._run_command = lambda cmd, **kw: got.append(list(cmd)) or {"return_code": 0, "message": ""}
    monkeypatch.setattr(spython.utils, "check_install", lambda *a, **k: True)
    client.execute(image="kit.sif", command=["python", "-m", "kit.workload"], options=opts, quiet=True)
    assert ["/usr/bin/singularity", *got[0][1:]] == ours


def test_a_site_adds_its_fakeroot_flags_and_tmpdir_for_a_user(empty_path, tmp_path, monkeypatch):
    """Fugaku's SingularityPRO builds as a user with --fakeroot --no-setgroups in TMPDIR=/worktmp
    (sites/fugaku.yaml); as root neither is needed. A stand-in singularity binary on PATH (no
    Singularity can be installed here); nothing is built."""
    from kit import site as site_mod

    sing = _fake(empty_path, "singularity", "exit 0\n")
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(b.os, "geteuid", lambda: 1000)
    opts = RecipeOptions("a64fx", True)
    plan = b.prepare(opts, engine="singularity", context=tmp_path / "ctx", site=site_mod.load("fugaku"))
    assert plan.argv[:5] == [str(sing), "build", "--force", "--fakeroot", "--no-setgroups"]
    assert plan.env["TMPDIR"] == plan.env["SINGULARITY_TMPDIR"] == "/worktmp"
    assert plan.describe()["env"] == plan.env  # recorded with the build
    monkeypatch.setattr(b.os, "geteuid", lambda: 0)
    root = b.prepare(opts, engine="singularity", context=tmp_path / "ctx2", site=site_mod.load("fugaku"))
    assert "--fakeroot" not in root.argv and "--no-setgroups" not in root.argv and not root.env


def test_inspect_of_a_sif_verifies_its_definition_file_against_the_recipe_label(empty_path, tmp_path):
    """`kit image inspect X.sif` (and a run's provenance) says whether the def the SIF was
    built from is the one its org.kit.recipe.sha256 label names. The singularity here is a
    STAND-IN script answering `inspect --json --labels` and `inspect --deffile` (no
    singularity can be installed on this CI)."""
    from kit.image.inspect import inspect_sif

    r = render(RecipeOptions("a64fx", True))
    deffile = tmp_path / "embedded.def"
    labels = json.dumps({"data": {"attributes": {"labels": r.labels}}})
    _fake(empty_path, "singularity", f"[ \"$2\" = --json ] && echo '{labels}' && exit 0\n"
                                     f"[ \"$2\" = --deffile ] && exec /bin/cat {deffile}\nexit 1\n")
    sif = tmp_path / "kit.sif"
    sif.write_bytes(b"SIF")
    deffile.write_text(r.text)
    got = inspect_sif(str(sif), "singularity")
    assert got["labels"]["org.kit.recipe.sha256"] == r.sha256 and got["recipe_verified"] is True
    deffile.write_text(r.text.replace("deepspeed==", "deepspeed>="))  # edited after rendering
    assert inspect_sif(str(sif), "singularity")["recipe_verified"] is False
    labels = json.dumps({"data": {"attributes": {"labels": {"org.kit.arch": "arm64"}}}})
    _fake(empty_path, "singularity", f"[ \"$2\" = --json ] && echo '{labels}' && exit 0\nexit 1\n")
    got = inspect_sif(str(sif), "singularity")
    assert got["recipe_verified"] is None and "no org.kit.recipe.sha256 label" in got["recipe_why"]
