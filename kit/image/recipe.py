"""Render the kit's Singularity definition file for a target and options.

The definition file is the one source of an image: Singularity/Apptainer build it as it
is; podman/docker build the Dockerfile that ``kit.image.convert`` makes from it with
spython. Every version comes from ``containers/versions.yaml``; every value that went
into the file is a label, and so is the file's own sha256 (``org.kit.recipe.sha256``,
computed over the text with that label's value blanked).

Rules the text follows so that spython's conversion stays faithful (it turns each
``%post`` line into its own ``RUN`` and drops comments):

- every ``%post`` line is one complete shell command (no if/fi, no continuation lines,
  no variables carried from one line to the next);
- ``%post`` never relies on ``%environment`` (Singularity does not apply it at build time):
  it names ``/opt/kit/venv/bin/pip`` in full;
- build-time-only inputs (``wheelhouse``, the pip cache) are removed at the end unless
  they are mounted (podman builds mount them, so they never reach a layer).

Where torch comes from (``RecipeOptions.torch``):

- ``pypi`` (default): the pinned wheel by pip (PyPI, or the wheelhouse for x86_64's CPU build);
- ``source``: built in the image from the target's ``source`` pins (a64fx: OpenBLAS for
  A64FX, oneDNN with the Arm Compute Library, ``-mcpu=a64fx``), each component in one
  ``%post`` line that fetches, builds and cleans up; the wheel it makes stays in
  ``/opt/kit/dist`` (take it out and reuse it with ``--torch-wheel``);
- ``wheel``: a wheel the user brings (``--torch-wheel PATH``, e.g. RIKEN's or one built by
  ``source``), put in the wheelhouse and installed after checking its sha256.

``RecipeOptions.dsf`` (``--dsf DIR``) adds DeepSpeedFugaku, set up as on a host, after
DeepSpeed and before the kit (``kit.image.dsf``); the default recipes are unchanged by it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit.digest import sha256_file
from kit.errors import KitError
from kit.image import dsf as dsf_layer
from kit.image.labels import HASH_PLACEHOLDER, RECIPE_HASH_LABEL

TARGETS = ("x86_64", "a64fx")

VENV = "/opt/kit/venv"
PIP_CACHE = "/var/cache/kit-pip"
WHEELHOUSE = "/opt/kit/wheelhouse"
STAGED_VENV = f"{WHEELHOUSE}/venv"  # the host-staged tree (--staged), laid out like VENV
SRC = "/opt/kit/src"
BUILD = "/opt/kit/build"  # --torch source: sources being built (removed by the line that builds them)
DIST = "/opt/kit/dist"  # --torch source: the torch wheel built in the image, kept
OPENBLAS = "/opt/openblas"
ACL = "/opt/acl"
TORCH_SOURCES = ("pypi", "source", "wheel")


def repo_root() -> Path:
    """The kit checkout that holds ``containers/`` (the package's parent directory)."""
    return Path(__file__).resolve().parents[2]


def versions_path() -> Path:
    return repo_root() / "containers" / "versions.yaml"


def load_versions(path: Path | None = None) -> dict[str, Any]:
    path = path or versions_path()
    if not path.is_file():
        raise KitError(f"{path} not found", where="kit image",
                       fix="run kit image from a kit checkout (containers/versions.yaml pins the image versions)")
    data = yaml.safe_load(path.read_text())
    for key in ("debian", "python", "deepspeed", "tcmalloc_package", "targets", "constraints"):
        if key not in data:
            raise KitError(f"missing key {key!r}", where=str(path), fix="see the comments in containers/versions.yaml")
    return data


@dataclass(frozen=True)
class RecipeOptions:
    target: str
    tcmalloc: bool = True
    base: str | None = None  # None: the target's base from versions.yaml
    # torch, DeepSpeed and their dependencies unpacked on the build host (kit.image.stage)
    # into wheelhouse/venv and copied into the venv: for emulated builds, where pip is slow
    staged: bool = False
    torch: str = "pypi"  # one of TORCH_SOURCES
    # torch == "wheel": the wheel's file name and sha256 (see ``torch_wheel_options``)
    torch_wheel: str | None = None
    torch_wheel_sha256: str | None = None
    # --dsf DIR: the DeepSpeedFugaku checkout staged into the image (``kit.image.dsf.checkout``)
    dsf: dsf_layer.DsfSource | None = None

    def tag(self) -> str:
        """The default local image name, e.g. ``localhost/kit:a64fx-tcmalloc``."""
        return f"localhost/kit:{self.variant()}"

    def variant(self) -> str:
        """``<target>-<tcmalloc|glibc>``, with ``-torch-source``/``-torch-wheel`` when torch is not pip's."""
        torch = "" if self.torch == "pypi" else f"-torch-{self.torch}"
        return f"{self.target}-{'tcmalloc' if self.tcmalloc else 'glibc'}{torch}{'-dsf' if self.dsf else ''}"

    def command(self) -> str:
        """The ``kit image recipe`` options that render this recipe (quoted in its header)."""
        parts = [f"--target {self.target}", f"--{'' if self.tcmalloc else 'no-'}tcmalloc"]
        if self.staged:
            parts.append("--staged")
        if self.torch == "source":
            parts.append("--torch source")
        elif self.torch == "wheel":
            parts.append(f"--torch-wheel {self.torch_wheel}")
        if self.dsf:
            parts.append("--dsf DIR")  # the checkout's path is no input: its commit is a label
        return " ".join(parts)


@dataclass
class Recipe:
    options: RecipeOptions
    text: str
    sha256: str
    labels: dict[str, str]
    constraints: str
    target: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.target["arch"]


def tcmalloc_path(machine: str) -> str:
    return f"/usr/lib/{machine}-linux-gnu/libtcmalloc.so.4"


def constraints_text(versions: dict[str, Any]) -> str:
    return "".join(f"{c}\n" for c in versions["constraints"])


def torch_wheel_options(path: Path) -> dict[str, str]:
    """``RecipeOptions`` fields for ``--torch-wheel PATH``: the file's name and sha256."""
    if not path.is_file():
        raise KitError(f"{path} is not a file", where="--torch-wheel", fix="pass the path of a torch .whl file")
    return {"torch": "wheel", "torch_wheel": path.name, "torch_wheel_sha256": sha256_file(path)[0]}


def wheel_torch_version(name: str, *, python: str, machine: str) -> str:
    """The torch version a wheel file name carries, after checking that the image can install
    it (``torch-<version>-cp311-cp311-<platform>_<machine>.whl`` for Python 3.11)."""
    # the name goes into a %post shell line and a label: wheel-name characters only
    parts = name[:-4].split("-") if re.fullmatch(r"[A-Za-z0-9_.+!]+(-[A-Za-z0-9_.+!]+)+\.whl", name) else []
    tag = "cp" + python.replace(".", "")
    if len(parts) not in (5, 6) or parts[0] != "torch":
        raise KitError(f"{name} is not a torch wheel file name", where="--torch-wheel",
                       fix="pass a file named torch-<version>-<python>-<abi>-<platform>.whl")
    if parts[-3] != tag or not parts[-1].endswith(machine):
        raise KitError(f"{name} is not for CPython {python} on {machine}, which the image has", where="--torch-wheel",
                       fix=f"use a wheel tagged {tag}-{tag}-..._{machine} (e.g. build one with --torch source)")
    return parts[1]


def _check_torch_options(options: RecipeOptions, t: dict[str, Any]) -> None:
    if options.torch not in TORCH_SOURCES:
        raise KitError(f"unknown torch source {options.torch!r}", where="--torch",
                       fix=f"use one of: {', '.join(TORCH_SOURCES)} (wheel: pass --torch-wheel PATH)")
    if options.torch == "source" and not t.get("source"):
        raise KitError(f"no source build of torch is pinned for {options.target}", where="--torch",
                       fix="build --torch source for a64fx, or add a source: block to the target in containers/versions.yaml")
    if options.torch == "wheel" and not (options.torch_wheel and options.torch_wheel_sha256):
        raise KitError("--torch wheel needs the wheel itself", where="--torch", fix="pass --torch-wheel PATH")
    if options.torch != "pypi" and options.staged:
        raise KitError(f"--staged unpacks PyPI's torch; it does not combine with --torch {options.torch}",
                       where="--staged", fix="drop --staged (a source build or a brought wheel has no pip step to stage)")


def render(options: RecipeOptions, versions: dict[str, Any] | None = None) -> Recipe:
    versions = versions or load_versions()
    if options.target not in versions["targets"]:
        raise KitError(f"unknown target {options.target!r}", where="--target",
                       fix=f"use one of: {', '.join(versions['targets'])}")
    t = versions["targets"][options.target]
    _check_torch_options(options, t)
    if options.dsf and "dsf" not in versions:
        raise KitError("no dsf: block (its packages' pins)", where="containers/versions.yaml",
                       fix="restore the dsf: block of containers/versions.yaml")
    base = options.base or t["base"]
    if base != base.lower():
        # spython lowercases the From: line; an upper-case name would build something else
        raise KitError(f"base image {base!r} has upper-case letters", where="--base",
                       fix="use an all-lower-case image reference")
    if re.search(r"\s", base):
        raise KitError(f"base image {base!r} has blanks", where="--base", fix="pass one image reference")
    constraints = constraints_text(versions)
    tc_path = tcmalloc_path(t["machine"])
    src = t.get("source") or {}
    if options.torch == "source":
        torch_version = str(src["torch"])
    elif options.torch == "wheel":
        torch_version = wheel_torch_version(options.torch_wheel or "", python=str(versions["python"]),
                                            machine=t["machine"])
    else:
        torch_version = str(t["torch"])

    labels = {
        "org.kit.target": options.target,
        "org.kit.arch": t["arch"],
        "org.kit.base": base,
        "org.kit.debian": versions["debian"],
        "org.kit.python": str(versions["python"]),
        "org.kit.torch": torch_version,
        "org.kit.deepspeed": str(versions["deepspeed"]),
        "org.kit.deepspeed.build_ops": "0",
        "org.kit.tcmalloc": versions["tcmalloc_package"] if options.tcmalloc else "none",
        "org.kit.tcmalloc.path": tc_path if options.tcmalloc else "",
        "org.kit.constraints.sha256": hashlib.sha256(constraints.encode()).hexdigest(),
    }
    if not options.tcmalloc:
        del labels["org.kit.tcmalloc.path"]
    if options.staged:
        labels["org.kit.staged"] = "host"
    if options.torch == "source":
        labels.update({
            "org.kit.torch.build": "source",
            "org.kit.torch.cflags": str(src["cflags"]),
            "org.kit.openblas": f"{src['openblas']} TARGET={src['openblas_target']}",
            "org.kit.onednn": str(src["onednn"]),
            "org.kit.acl": str(src["acl"]),
        })
    elif options.torch == "wheel":
        labels.update({"org.kit.torch.build": "wheel", "org.kit.torch.wheel": str(options.torch_wheel),
                       "org.kit.torch.wheel.sha256": str(options.torch_wheel_sha256)})
    root = repo_root()
    if options.dsf:
        labels.update(dsf_layer.labels(options.dsf, root))
        labels["org.kit.dsf.constraints.sha256"] = hashlib.sha256(
            dsf_layer.constraints_text(versions).encode()).hexdigest()
    labels[RECIPE_HASH_LABEL] = HASH_PLACEHOLDER

    env = {
        "PATH": f"{VENV}/bin:$PATH",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "KIT_IMAGE_TARGET": options.target,
    }
    if options.tcmalloc:
        env["KIT_TCMALLOC"] = tc_path

    apt = ["python3", "python3-venv", "ca-certificates", "procps"]
    if options.tcmalloc:
        apt.append(versions["tcmalloc_package"])
    if options.torch == "source":
        apt += [a for a in src["apt"] if a not in apt]
    pip = (f"{VENV}/bin/pip install --no-input --progress-bar off --cache-dir {PIP_CACHE} "
           f"--find-links {WHEELHOUSE} --constraint /opt/kit/constraints.txt "
           "$(test -f /host-ca.crt && echo --cert /host-ca.crt)")
    deepspeed = f"DS_BUILD_OPS=0 {pip} --no-build-isolation 'deepspeed=={versions['deepspeed']}'"
    if options.staged:
        # the host unpacked the pinned wheels (kit image build --staged); the image's pip
        # then only confirms, offline, that every pin and dependency is there
        packages = [
            f"cp -a {STAGED_VENV}/. {VENV}/",
            f"{pip} --no-index 'torch=={t['torch']}' 'deepspeed=={versions['deepspeed']}'",
            f"{pip} setuptools wheel",
        ]
    elif options.torch == "source":
        packages = [*_source_build(src, pip), f"{pip} {DIST}/torch-{torch_version}-*.whl", deepspeed]
    elif options.torch == "wheel":
        wheel = f"{WHEELHOUSE}/{options.torch_wheel}"
        packages = [
            f"echo '{options.torch_wheel_sha256}  {wheel}' | sha256sum -c - && {pip} {wheel}",
            f"{pip} setuptools wheel",
            deepspeed,
        ]
    else:
        packages = [f"{pip} 'torch=={t['torch']}'", f"{pip} setuptools wheel", deepspeed]
    check = "import torch, kit; print(\"torch\", torch.__version__, \"kit\", kit.__version__)"
    if options.torch != "pypi":
        # what the brought or built torch is: its build settings and BLAS in the build log
        check += "; print(torch.__config__.show())"
    if options.dsf:
        packages += dsf_layer.post_lines(versions, root, pip=pip, python=f"{VENV}/bin/python3")
    post = [
        "export DEBIAN_FRONTEND=noninteractive && apt-get update && apt-get install -y "
        f"--no-install-recommends {' '.join(apt)} && apt-get clean && rm -rf /var/lib/apt/lists/*",
        f"python3 -m venv {VENV}",
        *packages,
        f"{pip} --no-build-isolation {SRC}",
        f"grep -qs ' {WHEELHOUSE} ' /proc/mounts || rm -rf {WHEELHOUSE}",
        f"grep -qs ' {PIP_CACHE} ' /proc/mounts || rm -rf {PIP_CACHE}",
        f"{VENV}/bin/python -c '{check}'",
    ]
    if options.tcmalloc:
        post.append(f"test -f {tc_path}")

    lines = [
        "Bootstrap: docker",
        f"From: {base}",
        "",
        f"# kit image {options.variant()}: generated by `kit image recipe {options.command()}` "
        "from containers/versions.yaml.",
        "# Do not edit: change containers/versions.yaml or kit/image/recipe.py and re-render.",
        "# Build: kit image build (podman/docker use the spython conversion of this file).",
    ]
    if options.torch == "source":
        lines += ["# torch is built from source here: hours on an aarch64 machine with SVE (containers/README.md).",
                  "# Never emulated: under qemu-user the compile alone would take days."]
    lines += [
        "",
        "%labels",
        *(f"    {k} {v}" for k, v in labels.items()),
        "",
        "%files",
        "    constraints.txt /opt/kit/constraints.txt",
        f"    wheelhouse {WHEELHOUSE}",
        f"    kit-src {SRC}",
        *([f"    dsf/DeepSpeedFugaku {dsf_layer.PROGRAM}", f"    dsf/setup {dsf_layer.SETUP}"] if options.dsf else []),
        "",
        "%environment",
        *(f"    export {k}={v}" for k, v in env.items()),
        "",
        "%post",
        *(f"    {line}" for line in post),
        "",
    ]
    text = "\n".join(lines)
    digest = hashlib.sha256(text.encode()).hexdigest()
    text = text.replace(HASH_PLACEHOLDER, digest)
    labels[RECIPE_HASH_LABEL] = digest
    return Recipe(options=options, text=text, sha256=digest, labels=labels, constraints=constraints, target=t)


def _source_build(src: dict[str, Any], pip: str) -> list[str]:
    """The ``%post`` lines of ``--torch source``: build requirements, OpenBLAS (LAPACK from its
    C translation: no Fortran compiler), the Arm Compute Library, then torch's wheel into
    DIST. Each line fetches, builds and removes its sources,
    so no layer keeps them; OpenBLAS and ACL stay installed (torch links them). OpenBLAS's
    TARGET sets its own flags (-march=armv8.2-a+sve -mtune=a64fx for A64FX); ``cflags`` are
    torch's. Singularity runs ``%post`` as one script: a line that changes directory goes
    back to ``/`` (pip must not start in a removed directory)."""
    ob = f"{BUILD}/openblas"
    pt = f"{BUILD}/pytorch"
    flags = src["cflags"]
    openblas = (
        f"git clone --depth 1 --branch v{src['openblas']} {src['openblas_git']} {ob} && "
        f"make -C {ob} -j$(nproc) TARGET={src['openblas_target']} USE_OPENMP=1 NUM_THREADS=64 NOFORTRAN=1 libs netlib shared && "
        f"make -C {ob} TARGET={src['openblas_target']} USE_OPENMP=1 NUM_THREADS=64 NOFORTRAN=1 PREFIX={OPENBLAS} install && "
        f"echo {OPENBLAS}/lib > /etc/ld.so.conf.d/kit-openblas.conf && ldconfig && rm -rf {ob}"
    )
    acl = (
        f"git clone --depth 1 --branch v{src['acl']} {src['acl_git']} {ACL} && cd {ACL} && "
        "scons -j$(nproc) Werror=0 debug=0 neon=1 opencl=0 os=linux openmp=1 cppthreads=0 "
        "arch=armv8.2-a multi_isa=1 build=native fixed_format_kernels=1 && "
        f"find {ACL}/build -name '*.o' -delete && echo {ACL}/build > /etc/ld.so.conf.d/kit-acl.conf && ldconfig && cd /"
    )
    torch = (
        f"git clone --depth 1 --branch v{src['torch']} {src['torch_git']} {pt} && "
        f"git -C {pt} submodule update --init --recursive && "
        f"git -C {pt}/third_party/ideep/mkl-dnn checkout v{src['onednn']} && cd {pt} && "
        f"CFLAGS='{flags}' CXXFLAGS='{flags}' MAX_JOBS={src['max_jobs']} "
        f"PYTORCH_BUILD_VERSION={src['torch']} PYTORCH_BUILD_NUMBER=1 USE_CUDA=0 USE_ROCM=0 USE_XPU=0 "
        f"USE_MKLDNN=1 USE_MKLDNN_ACL=1 ACL_ROOT_DIR={ACL} BLAS=OpenBLAS OpenBLAS_HOME={OPENBLAS} "
        f"USE_OPENMP=1 USE_MPI=0 USE_DISTRIBUTED=1 USE_GLOO=1 BUILD_TEST=0 "
        f"{VENV}/bin/python setup.py bdist_wheel --dist-dir {DIST} && cd / && rm -rf {pt}"
    )
    return [f"{pip} {' '.join(src['build_requires'])}", openblas, acl, torch]


def committed_path(target: str) -> Path:
    """Where the rendered default recipe of ``target`` is committed."""
    return repo_root() / "containers" / f"{target}.def"
