"""``kit image recipe|build --dsf DIR``: DeepSpeedFugaku set up in the image (kit/image/dsf.py).

CI cannot fetch DeepSpeedFugaku: DIR here is ``tests/standins/dsf_checkout.py``'s STAND-IN
checkout, a git repository holding the Megatron stand-in (``megatron_standin.py``) as
``pretrain_gpt.py`` and just the files the set-up steps touch. It stands in for the real
checkout's git facts (commit, remote, clean/dirty), its tree (what ``git archive`` stages)
and its layout. No container engine is needed here; the real podman build of a dsf image
is in test_image_podman.py, the real program's build is in README.md ("DeepSpeedFugaku").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit.errors import KitError
from kit.image import build as b
from kit.image import dsf
from kit.image.convert import to_dockerfile
from kit.image.recipe import RecipeOptions, load_versions, render, repo_root
from standins.dsf_checkout import make_checkout

REPO = repo_root()


@pytest.fixture
def checkout(tmp_path):
    """The stand-in DeepSpeedFugaku checkout (stands in for dsf-setup.sh step 1's clone)."""
    return make_checkout(tmp_path / "DeepSpeedFugaku")


def _head(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("target", ["x86_64", "a64fx"])
def test_dsf_recipe_stages_the_tree_labels_the_commit_and_runs_the_setup_steps(checkout, target):
    source = dsf.checkout(checkout, REPO)
    r = render(RecipeOptions(target, True, dsf=source))
    assert source.commit == _head(checkout)
    patch_sha = dsf.patch_sha256(REPO)
    assert r.labels["org.kit.dsf.commit"] == source.commit
    assert r.labels["org.kit.dsf.remote"] == "https://github.com/Fugaku-LLM/DeepSpeedFugaku"
    assert r.labels["org.kit.dsf.patch.sha256"] == patch_sha
    assert r.labels["org.kit.provides"] == "/opt/dsf"
    for k, v in r.labels.items():
        assert f"    {k} {v}" in r.text
    files = r.text.split("%files\n", 1)[1].split("\n\n", 1)[0]
    assert "    dsf/DeepSpeedFugaku /opt/dsf/DeepSpeedFugaku" in files and "    dsf/setup /opt/dsf/setup" in files
    post = [ln.strip() for ln in r.text.split("%post\n", 1)[1].strip().splitlines()]
    # the packages (the dsf extra, pinned by their own constraints file), then dsf-setup.sh's
    # steps 3 (the patch), 4 (helpers) and 5 (tiny data), after DeepSpeed and before the kit
    pip = next(i for i, ln in enumerate(post) if "sentencepiece nltk regex six pybind11" in ln)
    assert "--constraint /opt/dsf/setup/constraints.txt" in post[pip]
    steps = [i for i, ln in enumerate(post) if ln.startswith("/opt/dsf/setup/dsf-setup.sh --prefix /opt/dsf ")]
    assert [post[i].rsplit(" ", 1)[1] for i in steps] == ["3", "4", "5"]
    assert all("--python /opt/kit/venv/bin/python3" in post[i] for i in steps)
    deepspeed = next(i for i, ln in enumerate(post) if "'deepspeed==" in ln)
    kit_src = next(i for i, ln in enumerate(post) if ln.endswith(" /opt/kit/src"))
    apt = next(i for i, ln in enumerate(post) if "g++" in ln)
    assert deepspeed < apt < pip < steps[0] < kit_src
    assert "python3-dev" in post[apt] and "git" in post[apt].split()
    # the header names the option, not this machine's path
    assert "--dsf DIR" in r.text and str(checkout) not in r.text
    assert r.options.variant() == f"{target}-tcmalloc-dsf" and r.options.tag() == f"localhost/kit:{target}-tcmalloc-dsf"


def test_staged_dsf_recipe_unpacks_the_kit_packages_and_pip_installs_the_dsf_ones(checkout):
    """--staged --dsf (CI's emulated a64fx build): torch, DeepSpeed and the kit's packages come
    from the host-staged tree as without --dsf; the few small dsf wheels are installed by the
    image's pip, pinned, after the offline check of the staged ones."""
    r = render(RecipeOptions("a64fx", True, staged=True, dsf=dsf.checkout(checkout, REPO)))
    post = [ln.strip() for ln in r.text.split("%post\n", 1)[1].strip().splitlines()]
    offline = next(i for i, ln in enumerate(post) if "--no-index" in ln)
    pip = next(i for i, ln in enumerate(post) if ln.endswith("sentencepiece nltk regex six pybind11"))
    assert post[offline - 1].startswith("cp -a /opt/kit/wheelhouse/venv/. ") and offline < pip
    assert "--no-index" not in post[pip] and r.labels["org.kit.staged"] == "host"
    assert r.options.variant() == "a64fx-tcmalloc-dsf" and "--staged --dsf DIR" in r.text


def test_dsf_dockerfile_adds_the_program_late_and_labels_last(checkout):
    r = render(RecipeOptions("x86_64", True, dsf=dsf.checkout(checkout, REPO)))
    df = to_dockerfile(r.text).splitlines()
    runs = [ln for ln in df if ln.startswith("RUN ")]
    post = [p.strip() for p in r.text.split("%post\n", 1)[1].strip().splitlines()]
    assert [ln[4:] for ln in runs] == post  # still one RUN per %post line
    add = df.index("ADD dsf/DeepSpeedFugaku /opt/dsf/DeepSpeedFugaku")
    assert df[add + 1] == "ADD dsf/setup /opt/dsf/setup" and "/opt/dsf/setup/constraints.txt" in df[add + 2]
    assert all("torch==" not in x and "deepspeed==" not in x for x in df[add:]), "torch/DeepSpeed layers come first"
    labels = [i for i, ln in enumerate(df) if ln.startswith("LABEL ")]
    assert len(labels) == len(r.labels) and labels == list(range(len(df) - len(labels), len(df)))
    # without --dsf the conversion is as before: labels where spython writes them
    plain = to_dockerfile(render(RecipeOptions("x86_64", True)).text).splitlines()
    assert plain[3].startswith("ADD constraints.txt") and plain[4].startswith("LABEL ")


def test_dsf_pins_have_their_own_file_and_leave_the_default_constraints_alone(checkout):
    v = load_versions()
    r = render(RecipeOptions("x86_64", True, dsf=dsf.checkout(checkout, REPO)))
    assert r.constraints == render(RecipeOptions("x86_64", True)).constraints
    pinned = {c.split("==")[0].lower() for c in v["dsf"]["constraints"]}
    assert set(dsf.packages(REPO)) <= pinned
    assert not pinned & {c.split("==")[0].lower() for c in v["constraints"]}, "one pin per package"
    # dsf-setup.sh's own step 2 installs the same list as the extra (pyproject.toml's dsf)
    setup = (REPO / "scripts" / "dsf-setup.sh").read_text()
    assert f'pip install --quiet {" ".join(dsf.packages(REPO))}' in setup


def test_build_context_holds_the_head_tree_not_untracked_files_and_the_setup(checkout, tmp_path):
    (checkout / "untracked.txt").write_text("not committed")
    (checkout / "megatron" / "data" / "helpers.cpython-311-x86_64-linux-gnu.so").write_bytes(b"built here")
    source = dsf.checkout(checkout, REPO)
    ctx = tmp_path / "ctx"
    dsf.stage(source, REPO, ctx, load_versions())
    tree = ctx / "dsf" / "DeepSpeedFugaku"
    tracked = subprocess.run(["git", "-C", str(checkout), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    got = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert got == sorted([*tracked, "KIT_PROGRAM.json"])
    record = json.loads((tree / "KIT_PROGRAM.json").read_text())
    assert record["commit"] == source.commit and record["diff_sha256"] == dsf.patch_sha256(REPO)
    assert record["diff_files"] == ["megatron/training.py"] and record["dirty"] is True
    setup = ctx / "dsf" / "setup"
    assert (setup / "dsf-setup.sh").read_bytes() == (REPO / "scripts" / "dsf-setup.sh").read_bytes()
    assert (setup / "dsf-setup.sh").stat().st_mode & 0o111
    assert (setup / "dsf-import-guards.patch").read_bytes() == (REPO / "scripts" / "dsf-import-guards.patch").read_bytes()
    assert (setup / "constraints.txt").read_text() == dsf.constraints_text(load_versions())


def test_podman_build_plan_stages_dsf_and_tags_it(checkout, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    v = load_versions()
    (wheels / v["targets"]["x86_64"]["torch_wheel"]).write_bytes(b"stand-in for the CPU torch wheel")
    plan = b.prepare(RecipeOptions("x86_64", True, dsf=dsf.checkout(checkout, REPO)), engine="podman",
                     context=tmp_path / "ctx", wheelhouse=[wheels], pip_cache=None, ca_bundle="none")
    assert plan.ref == "localhost/kit:x86_64-tcmalloc-dsf"
    assert (tmp_path / "ctx" / "dsf" / "DeepSpeedFugaku" / "pretrain_gpt.py").is_file()
    assert "ADD dsf/DeepSpeedFugaku /opt/dsf/DeepSpeedFugaku" in (tmp_path / "ctx" / "Dockerfile").read_text()


# -- refusals: one line naming --dsf and the fix, exit 2 -----------------------------------------
def _refused(args: list[str]) -> str:
    r = subprocess.run([sys.executable, "-m", "kit", "image", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


@pytest.mark.parametrize("command", ["recipe", "build"])
def test_missing_not_git_and_dirty_checkouts_are_refused_in_one_line(checkout, tmp_path, command):
    # build: the checkout is refused before any engine is looked for (none needs to be installed)
    args = [command, "--target", "x86_64", *(["--dry-run", "--engine", "docker-not-installed"] if command == "build" else [])]
    plain = tmp_path / "plain"
    plain.mkdir()
    (checkout / "pretrain_gpt.py").write_text("# a local change\n")
    for path, words in ((tmp_path / "missing", "does not exist"), (plain, "is not a git checkout"),
                        (checkout, "has uncommitted changes (pretrain_gpt.py)")):
        line = _refused([*args, "--dsf", str(path)])
        assert "error: --dsf: " in line and words in line and "; " in line, line  # where; what; the fix


def test_a_checkout_dirty_by_exactly_the_import_guard_patch_is_accepted(checkout, tmp_path):
    """dsf-setup.sh leaves its checkout patched: the image applies the same patch to the same
    HEAD, so that checkout is accepted; any other change is not. (The stand-in's training.py
    is not the real one, so the patch here is the stand-in's own diff, in a kit root of its own.)"""
    subprocess.run(["git", "-C", str(checkout), "apply", str(REPO / "scripts" / "dsf-import-guards.patch")],
                   check=True)
    root = tmp_path / "kitroot"
    (root / "scripts").mkdir(parents=True)
    diff = subprocess.run(["git", "-C", str(checkout), "diff", "--binary", "HEAD"], capture_output=True,
                          check=True).stdout
    (root / "scripts" / "dsf-import-guards.patch").write_bytes(diff)
    assert dsf.checkout(checkout, root).commit == _head(checkout)
    with pytest.raises(KitError, match="uncommitted changes"):  # the kit's real patch is not this diff
        dsf.checkout(checkout, REPO)
    (checkout / "megatron" / "training.py").write_text("changed again\n")
    with pytest.raises(KitError, match="uncommitted changes"):
        dsf.checkout(checkout, root)


def test_credentials_are_stripped_from_the_remote_label(tmp_path):
    co = make_checkout(tmp_path / "co", remote="https://user:token@example.invalid/DeepSpeedFugaku")
    assert dsf.checkout(co, REPO).remote == "https://example.invalid/DeepSpeedFugaku"


def test_write_refuses_a_dsf_recipe(checkout):
    out = _refused(["recipe", "--target", "x86_64", "--dsf", str(checkout), "--write"])
    assert "--write" in out


def test_dsf_tiny_vars_are_the_image_paths():
    """The image puts the program and the tiny data where dsf-tiny's defaults point, so
    `kit run dsf-tiny --runtime podman --image <dsf image>` needs no --set."""
    doc = yaml.safe_load((REPO / "recipes" / "dsf-tiny.yaml").read_text())
    assert doc["vars"]["dsf"] == dsf.PROGRAM
    assert doc["data"] == f"{dsf.ROOT}/data/tiny_text_document"
    assert doc["vars"]["vocab_file"] == f"{dsf.ROOT}/data/tiny-vocab.json"
    assert doc["vars"]["merge_file"] == f"{dsf.ROOT}/data/tiny-merges.txt"


# -- running in the image: its own /opt/dsf, never the host's ------------------------------------
DSF_LABELS = {"org.kit.arch": "amd64", "org.kit.provides": "/opt/dsf"}


def _oci(labels: dict):
    from kit.runtimes.oci import OciRuntime

    rt = OciRuntime(image="localhost/kit:x86_64-tcmalloc-dsf")
    rt._info = {"digest": "sha256:" + "a" * 64, "arch": "amd64", "labels": labels}  # what podman inspect says
    return rt


def test_a_directory_the_image_provides_is_its_own_not_the_hosts(tmp_path):
    """The host may have its own /opt/dsf (dsf-setup.sh's default prefix, as on this machine):
    in the dsf image the ranks must see the image's, so a provided path is never bound."""
    rt = _oci(DSF_LABELS)
    assert rt.provides("/opt/dsf/DeepSpeedFugaku") and rt.provides("/opt/dsf")
    assert not rt.provides("/opt/dsfx") and not rt.provides(tmp_path)
    argv = rt.wrap(["python3", "pretrain_gpt.py"], {}, cwd=Path("/opt/dsf/DeepSpeedFugaku"), binds=[tmp_path])
    assert argv[argv.index("--workdir") + 1] == "/opt/dsf/DeepSpeedFugaku"
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert binds == [f"{tmp_path}:{tmp_path}"]
    # an image without the label binds the workdir from the host, as before
    plain = _oci({"org.kit.arch": "amd64"})
    argv = plain.wrap(["python3"], {}, cwd=tmp_path / "w", binds=[])
    assert f"{tmp_path / 'w'}:{tmp_path / 'w'}" in argv and not plain.provides("/opt/dsf")
    from kit.runtimes.host import HostRuntime

    assert not HostRuntime().provides("/opt/dsf")


@pytest.mark.parametrize("label", ["/", "/tmp", "/opt/../etc", "/home/alice", "/tmp/x/y"])
def test_a_too_broad_provides_label_is_ignored_with_a_warning(tmp_path, capsys, monkeypatch, label):
    """An image's labels are untrusted: ``/`` (an empty prefix once stripped), a top-level
    directory or a path with ``..`` would keep the bundle and the workdir from being bound and
    skip the workdir check. Such an entry counts for nothing, and a warning line names it."""
    from kit.runtimes import base

    monkeypatch.setattr(base, "_WARNED", set())  # once per process: this test's own
    rt = _oci({"org.kit.arch": "amd64", "org.kit.provides": f"{label} /opt/dsf"})
    bundle, work = tmp_path / "bundle", tmp_path / "w"
    assert not rt.provides(work) and not rt.provides("/etc/ssl") and not rt.provides("/opt/../etc/ssl")
    assert rt.provides("/opt/dsf/DeepSpeedFugaku")  # the entry that counts still does
    argv = rt.wrap(["python3"], {}, cwd=work, binds=[bundle])
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-v"] == [f"{bundle}:{bundle}", f"{work}:{work}"]
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and f"org.kit.provides entry {label!r} ignored" in warning[0]


def test_the_bundle_and_the_sites_binds_are_bound_even_under_a_provided_directory(tmp_path):
    """``provides`` is asked of the workdir only: the bundle and a site's binds always reach
    the container, whatever the image's label says."""
    provided = Path("/opt/kit-test-provided")  # a path, never created: only the label names it
    rt = _oci({"org.kit.arch": "amd64", "org.kit.provides": str(provided)})
    site_bind = provided / "site"
    argv = rt.wrap(["python3"], {}, cwd=provided / "w", binds=[provided / "bundle", site_bind])
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-v"] == [
        f"{provided / 'bundle'}:{provided / 'bundle'}", f"{site_bind}:{site_bind}"]
    assert argv[argv.index("--workdir") + 1] == str(provided / "w")  # the image's own, not bound


def test_a_bundle_directory_under_a_provided_directory_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from kit import cli
    from kit.runtimes import oci

    provided = Path("/opt/kit-test-provided")  # a path, never created: only the label names it
    labels = {"org.kit.arch": "amd64", "org.kit.provides": str(provided)}
    monkeypatch.setattr(oci.OciRuntime, "image_info", lambda self: {"arch": "amd64", "labels": labels})
    out = provided / "results"
    monkeypatch.setattr(sys, "argv", ["kit", "run", "dsf-tiny", "--preset", "baseline", "--runtime", "podman",
                                      "--image", "localhost/kit:x86_64-tcmalloc-dsf", "--out", str(out),
                                      "--set", f"vars.dsf={provided}/DeepSpeedFugaku"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"the bundle directory {out} lies under {provided}" in lines[0], lines
    assert not out.exists()  # refused before any bundle was made


def test_singularity_does_not_bind_what_the_image_provides(tmp_path, monkeypatch):
    import stat

    from kit.runtimes.singularity import SingularityRuntime

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "singularity"  # stands in for the singularity binary: only its path is used
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    rt = SingularityRuntime(image=str(tmp_path / "kit.sif"), bind_fujitsu_mpi=False)
    rt._info = {"digest": "sha256:x", "labels": DSF_LABELS}
    argv = rt.wrap(["python3"], {}, cwd=Path("/opt/dsf/DeepSpeedFugaku"), binds=[tmp_path / "bundle"])
    assert argv[argv.index("--pwd") + 1] == "/opt/dsf/DeepSpeedFugaku"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"] == [f"{tmp_path / 'bundle'}:{tmp_path / 'bundle'}"]


def test_plan_accepts_a_workdir_only_the_image_has(tmp_path, monkeypatch):
    from kit import plan as plan_mod
    from kit.runtimes import oci

    absent = "/opt/dsf/absent-on-this-host"
    monkeypatch.setattr(oci.OciRuntime, "image_info", lambda self: {"arch": "amd64", "labels": DSF_LABELS})
    p = plan_mod.resolve(recipe_name="dsf-tiny", overrides=[f"vars.dsf={absent}"], preset_names=["baseline"],
                         runtime="podman", image="localhost/kit:x86_64-tcmalloc-dsf")
    assert p.workdir == absent
    monkeypatch.setattr(oci.OciRuntime, "image_info", lambda self: {"arch": "amd64", "labels": {}})
    with pytest.raises(KitError, match="workdir"):
        plan_mod.resolve(recipe_name="dsf-tiny", overrides=[f"vars.dsf={absent}"], preset_names=["baseline"],
                         runtime="podman", image="localhost/kit:x86_64-tcmalloc")


def test_program_provenance_reads_the_staged_trees_record(checkout, tmp_path):
    """A tree staged without .git (the image's /opt/dsf/DeepSpeedFugaku) is described by the
    KIT_PROGRAM.json the build wrote, inside the image that provides it (``provided``; here
    the staged context's ``dsf`` directory stands in for the image's /opt/dsf): the same git
    fields a host checkout gives."""
    from kit import provenance

    source = dsf.checkout(checkout, REPO)
    ctx = tmp_path / "ctx"
    dsf.stage(source, REPO, ctx, load_versions())
    tree = ctx / "dsf" / "DeepSpeedFugaku"
    provided = [str(ctx / "dsf")]
    out = provenance.program(["python3", "pretrain_gpt.py", "--vocab-file", "README.md"], workdir=tree, env={},
                             provided=provided)
    sc = out["script"]
    assert sc["commit"] == source.commit and sc["remote"] == "https://github.com/Fugaku-LLM/DeepSpeedFugaku"
    assert sc["dirty"] is True and sc["diff_sha256"] == dsf.patch_sha256(REPO)
    assert sc["repository"] == str(tree) and "KIT_PROGRAM.json" in sc["source"]
    assert [f["path"] for f in out["files"]] == [str(tree / "README.md")]
    # on the host (nothing provided) the same tree's record is not taken
    assert provenance.program(["python3", "pretrain_gpt.py"], workdir=tree, env={})["script"]["git"] is None
    # a malformed record gives no git facts, never a crash or a wrong type
    (tree / "KIT_PROGRAM.json").write_text('{"commit": 5, "remote": ["x"], "dirty": "yes"}')
    sc = provenance.program(["python3", "pretrain_gpt.py"], workdir=tree, env={}, provided=provided)["script"]
    assert sc["commit"] is None and sc["remote"] is None and sc["dirty"] is None
    (tree / "KIT_PROGRAM.json").unlink()
    assert provenance.program(["python3", "pretrain_gpt.py"], workdir=tree, env={}, provided=provided)["script"]["git"] is None


def _record(commit: str) -> str:
    return json.dumps({"commit": commit, "remote": "https://example.org/forged", "dirty": False,
                       "diff_sha256": None, "diff_files": []})


def test_a_stray_program_record_outside_the_provided_tree_is_never_taken(tmp_path):
    """A KIT_PROGRAM.json in /tmp, a home or a shared directory above a program that is not in
    a git checkout is not its git record: not on the host, not above the provided directory,
    not through a symbolic link, not when nested deeper than the bundle reader takes."""
    from kit import provenance

    prog = tmp_path / "prog"
    (prog / "tools").mkdir(parents=True)
    (prog / "tools" / "train.py").write_text("")
    (tmp_path / "KIT_PROGRAM.json").write_text(_record("f" * 40))  # the stray file, above the tree
    argv = ["python3", "tools/train.py"]

    def script(**kw):
        return provenance.program(argv, workdir=prog, env={}, **kw)["script"]

    assert script()["git"] is None  # on the host
    assert script(provided=[str(prog)])["git"] is None  # above the provided directory
    (prog / "KIT_PROGRAM.json").symlink_to(tmp_path / "KIT_PROGRAM.json")
    assert script(provided=[str(prog)]).get("commit") is None  # a link is not the build's file
    (prog / "KIT_PROGRAM.json").unlink()
    (prog / "KIT_PROGRAM.json").write_text("[" * 100 + "]" * 100)
    assert script(provided=[str(prog)]).get("commit") is None
    (prog / "KIT_PROGRAM.json").write_text(_record("a" * 40))  # the build's own, at the tree's top
    got = script(provided=[str(prog)])
    assert got["commit"] == "a" * 40 and got["repository"] == str(prog)


# what an image's Python may print for program_inside / software_info (the stand-in for the
# wrapped image Python: a script that ignores the kit's arguments and prints this)
HOSTILE = {
    "extra keys and wrong types": 'print("KIT-PROGRAM-JSON " + json.dumps({"argv": ["rm", "-rf"], "workdir": "/x", '
                                  '"evil": "yes", "taken": "on the host", "script": {"path": "/opt/dsf/t.py", '
                                  '"commit": 5, "dirty": "no", "diff_files": ["a", 1], "note": "x"}, '
                                  '"files": [{"path": "v.json", "size": "big", "sha256": None, "x": 1}]}))',
    "too deep": 'print("KIT-PROGRAM-JSON {\\"script\\": " + "[" * 100 + "]" * 100 + "}")',
    "too much": 'print("KIT-PROGRAM-JSON " + json.dumps({"script": None, "files": ["x" * (2 << 20)]}))',
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_program_inside_takes_only_the_records_fields_checked_and_capped(tmp_path, case):
    from kit import provenance

    fake = tmp_path / "image_python.py"
    fake.write_text("import json\n" + HOSTILE[case] + "\n")
    got = provenance.program_inside([sys.executable, str(fake)], ["python3", "train.py"], workdir=tmp_path,
                                    env={}, provided=[])
    assert got["argv"] == ["python3", "train.py"] and got["workdir"] == str(tmp_path)  # the host's
    if case == "extra keys and wrong types":
        assert set(got) == {"argv", "workdir", "script", "files", "taken"} and got["taken"] == "inside the image"
        assert got["script"] == {"path": "/opt/dsf/t.py", "commit": None, "dirty": None, "diff_files": None}
        assert got["files"] == [{"path": "v.json", "size": None, "sha256": None}]
    else:
        assert set(got) == {"argv", "workdir", "error"}
        assert ("nested deeper" if case == "too deep" else "printed more than") in got["error"]
        # the software inventory reads the image's answer through the same door
        fake.write_text("import json\n" + HOSTILE[case].replace("KIT-PROGRAM-JSON", "KIT-SOFTWARE-JSON") + "\n")
        assert set(provenance.software_info([sys.executable, str(fake)])) == {"error"}


def test_program_provenance_inside_an_image_uses_its_python(tmp_path):
    """``program_inside`` runs the image's kit (here: this Python, standing in for the wrapped
    image Python) and takes its record; a Python that cannot do it gives an error, not a crash."""
    from kit import provenance

    (tmp_path / "train.py").write_text("")
    got = provenance.program_inside([sys.executable], ["python3", "train.py"], workdir=tmp_path, env={}, provided=[])
    assert got["taken"] == "inside the image" and got["script"]["path"] == str(tmp_path / "train.py")
    bad = provenance.program_inside(["/bin/false"], ["python3", "train.py"], workdir=tmp_path, env={}, provided=[])
    assert bad["error"].startswith("exit 1") and bad["argv"] == ["python3", "train.py"]
