"""kit image build --staged: resolving for the target platform and installing wheels as pip does.

No network: the wheels are small synthetic ones written into the wheel cache.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import zipfile
from pathlib import Path

import pytest

from kit.errors import KitError
from kit.image import stage
from kit.image.recipe import repo_root
from kit.image.convert import to_dockerfile
from kit.image.recipe import RecipeOptions, render


def make_wheel(d: Path, name: str, version: str, *, requires: list[str] = (), files: dict[str, bytes] | None = None,
               entry_points: str = "", tag: str = "py3-none-any") -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    p = d / f"{dist}-{tag}.whl"
    d.mkdir(parents=True, exist_ok=True)
    md = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(p, "w") as z:
        for n, data in (files or {f"{name.replace('-', '_')}/__init__.py": b"X = 1\n"}).items():
            info = zipfile.ZipInfo(n)
            info.external_attr = (0o755 if n.endswith(".sh") else 0o644) << 16
            z.writestr(info, data)
        z.writestr(f"{dist}.dist-info/METADATA", md)
        z.writestr(f"{dist}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        if entry_points:
            z.writestr(f"{dist}.dist-info/entry_points.txt", entry_points)
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return p


def test_markers_are_evaluated_for_the_target_not_the_host(tmp_path):
    wd = tmp_path / "aarch64"
    make_wheel(wd, "torch", "2.10.0", requires=['filelock', 'nvidia-cublas; platform_machine == "x86_64"',
                                               'setuptools; python_version >= "3.12"', 'sympy>=1.13',
                                               'opt-einsum; extra == "opt-einsum"'])
    make_wheel(wd, "filelock", "4.3.1")
    make_wheel(wd, "sympy", "1.14.0", requires=["mpmath<1.4,>=1.1.0", 'pytest; extra == "dev"'])
    make_wheel(wd, "mpmath", "1.3.0")
    make_wheel(wd, "rich", "15.0.0", requires=["pygments"])
    make_wheel(wd, "pygments", "2.21.0")
    pins = {"torch": "2.10.0", "filelock": "4.3.1", "sympy": "1.14.0", "mpmath": "1.3.0", "rich": "15.0.0",
            "pygments": "2.21.0"}
    got = stage.resolve(["torch==2.10.0", "rich>=13", "setuptools"], pins, wheel_dir=wd, python="3.11",
                        machine="aarch64")
    assert sorted(got) == ["filelock", "mpmath", "pygments", "rich", "sympy", "torch"]
    # an unpinned dependency is an error, not a silent latest version
    make_wheel(wd, "typer", "0.29.2", requires=["click>=8"])
    with pytest.raises(KitError, match="click.*no pin"):
        stage.resolve(["typer"], {**pins, "typer": "0.29.2"}, wheel_dir=wd, python="3.11", machine="aarch64")
    with pytest.raises(KitError, match="does not satisfy"):
        stage.resolve(["rich>=16"], pins, wheel_dir=wd, python="3.11", machine="aarch64")


def test_install_wheel_lays_out_the_venv_like_pip(tmp_path):
    w = make_wheel(tmp_path / "w", "torch", "2.10.0", files={
        "torch/__init__.py": b"__version__ = '2.10.0'\n",
        "torch/_C.so": b"\x7fELF",
        "torch/bin/helper.sh": b"#!/bin/sh\n",
        "torch-2.10.0.data/scripts/tool": b"#!python\nprint('tool')\n",
        "torch-2.10.0.data/data/share/man/torch.1": b".TH torch\n",
        "torch-2.10.0.data/headers/t.h": b"int x;\n",
    }, entry_points="[console_scripts]\ntorchrun = torch.distributed.run:main\n[gui_scripts]\n", tag="cp311-cp311-manylinux_2_28_aarch64")
    st = tmp_path / "stage"
    stage.install_wheel(w, st, prefix="/opt/kit/venv", python="3.11", requested=True)
    site = st / "lib/python3.11/site-packages"
    assert (site / "torch/__init__.py").read_text() == "__version__ = '2.10.0'\n"
    pyc = site / "torch/__pycache__/__init__.cpython-311.pyc"
    assert pyc.is_file()
    assert (site / "torch/bin/helper.sh").stat().st_mode & 0o777 == 0o755
    assert (site / "torch/_C.so").stat().st_mode & 0o777 == 0o644
    assert (st / "bin/tool").read_text() == "#!/opt/kit/venv/bin/python3\nprint('tool')\n"
    run = (st / "bin/torchrun").read_text()
    assert run.startswith("#!/opt/kit/venv/bin/python3\n# -*- coding: utf-8 -*-\n")
    assert "from torch.distributed.run import main\n" in run and "sys.exit(main())" in run
    assert (st / "bin/torchrun").stat().st_mode & 0o777 == 0o755
    assert (st / "share/man/torch.1").is_file() and (st / "include/site/python3.11/torch/t.h").is_file()
    di = site / "torch-2.10.0.dist-info"
    assert (di / "INSTALLER").read_text() == "kit-image-stage\n" and (di / "REQUESTED").exists()
    rows = {r[0]: r for r in csv.reader((di / "RECORD").read_text().splitlines())}
    assert rows["../../../bin/torchrun"][1].startswith("sha256=")
    assert "torch/__pycache__/__init__.cpython-311.pyc" in rows
    data = (st / "bin/torchrun").read_bytes()
    assert rows["../../../bin/torchrun"][1] == "sha256=" + base64.urlsafe_b64encode(
        hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert rows["torch-2.10.0.dist-info/RECORD"][1:] == ["", ""]
    # the compiled code names the in-image path (tracebacks inside the image)
    import marshal
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename == "/opt/kit/venv/lib/python3.11/site-packages/torch/__init__.py"


def test_platform_args_cover_bookworms_glibc():
    a = stage.pip_platform_args("aarch64", "3.11")
    plats = [a[i + 1] for i, x in enumerate(a) if x == "--platform"]
    assert "manylinux_2_28_aarch64" in plats and "manylinux_2_17_aarch64" in plats and "manylinux2014_aarch64" in plats
    assert "manylinux_2_36_aarch64" in plats and "manylinux_2_38_aarch64" not in plats
    assert a[a.index("--abi") + 1] == "cp311" and "--only-binary=:all:" in a


def test_staged_recipe_copies_the_tree_and_checks_the_pins_offline():
    plain = render(RecipeOptions("a64fx", True))
    r = render(RecipeOptions("a64fx", True, staged=True))
    assert r.labels["org.kit.staged"] == "host" and "org.kit.staged" not in plain.labels
    assert {k: v for k, v in r.labels.items() if k not in ("org.kit.staged", "org.kit.recipe.sha256")} == \
        {k: v for k, v in plain.labels.items() if k != "org.kit.recipe.sha256"}
    df = to_dockerfile(r.text).splitlines()
    runs = [x[4:] for x in df if x.startswith("RUN ")]
    assert runs[1] == "python3 -m venv /opt/kit/venv"
    assert runs[2] == "cp -a /opt/kit/wheelhouse/venv/. /opt/kit/venv/"
    assert "--no-index 'torch==2.10.0' 'deepspeed==0.19.8'" in runs[3]
    assert "--staged" in r.text.splitlines()[3]
    # the rest (kit install, clean-up, import check) is the unstaged recipe's
    assert runs[5:] == [x[4:] for x in to_dockerfile(plain.text).splitlines() if x.startswith("RUN ")][5:]


def test_deepspeed_torch_info_names_the_targets_torch():
    src = (b"version='0.19.8'\ninstalled_ops={'cpu_adam': False}\naccelerator_name='cpu'\n"
           b"torch_info={'version': '0.0', 'bf16_support': False, 'cuda_version': '0.0', 'nccl_version': '0.0', "
           b"'hip_version': '0.0'}\n")
    out = stage.deepspeed_torch_info("2.10.0")(src)
    assert b"torch_info={'version': '2.10', 'bf16_support': False, 'cuda_version': '0.0'" in out
    assert out.replace(b"'2.10'", b"'0.0'", 1) == src
    assert stage.deepspeed_torch_info("2.13.0+cpu")(src).count(b"'version': '2.13'") == 1
    with pytest.raises(KitError, match="torch_info"):
        stage.deepspeed_torch_info("2.10.0")(b"version='x'\n")


@pytest.mark.parametrize("dsf", [False, True], ids=["kit", "dsf"])
@pytest.mark.parametrize("target", ["a64fx", "x86_64"])
def test_every_dependency_of_the_image_is_pinned(target, dsf):
    """The staged image build needs a pin for every package it installs. Walked here through
    the host venv's installed metadata (the same versions, so the same requirements) with the
    target's markers: a new dependency without a pin fails in seconds, not after the image's
    base was built (as `cryptography` did on a cold run). With ``dsf``: the packages
    ``kit image build --dsf`` adds (pyproject's dsf extra), pinned by versions.yaml's dsf block."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    from kit.image import dsf as dsf_layer
    from kit.image.recipe import load_versions

    versions = load_versions()
    pins = stage.pins_from(versions, target)
    env = stage.marker_env(versions["python"], versions["targets"][target]["machine"])
    roots = stage.staged_roots(repo_root(), target, versions)
    if dsf:
        pins.update(stage.pins_from({**versions, "constraints": versions["dsf"]["constraints"]}, target))
        roots = dsf_layer.packages(repo_root())
    queue = [Requirement(r) for r in roots]
    seen: set[tuple[str, str]] = set()
    unpinned: set[str] = set()
    while queue:
        req = queue.pop()
        name = stage.canonical(req.name)
        if name in stage.NOT_STAGED:
            continue
        if name not in pins:
            unpinned.add(name)
            continue
        for extra in req.extras | {""}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                requires = md.requires(req.name) or []
            except md.PackageNotFoundError:
                continue  # not installed here (e.g. the target's own torch deps): checked by the real build
            for r in map(Requirement, requires):
                if r.marker is None or r.marker.evaluate({**env, "extra": extra}):
                    queue.append(r)
    assert not unpinned, f"add pins to containers/versions.yaml for: {', '.join(sorted(unpinned))}"
