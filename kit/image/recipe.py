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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit.errors import KitError

TARGETS = ("x86_64", "a64fx")
RECIPE_HASH_LABEL = "org.kit.recipe.sha256"
_HASH_PLACEHOLDER = "-" * 64

VENV = "/opt/kit/venv"
PIP_CACHE = "/var/cache/kit-pip"
WHEELHOUSE = "/opt/kit/wheelhouse"
STAGED_VENV = f"{WHEELHOUSE}/venv"  # the host-staged tree (--staged), laid out like VENV
SRC = "/opt/kit/src"


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

    def tag(self) -> str:
        """The default local image name, e.g. ``localhost/kit:a64fx-tcmalloc``."""
        return f"localhost/kit:{self.variant()}"

    def variant(self) -> str:
        return f"{self.target}-{'tcmalloc' if self.tcmalloc else 'glibc'}"


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


def render(options: RecipeOptions, versions: dict[str, Any] | None = None) -> Recipe:
    versions = versions or load_versions()
    if options.target not in versions["targets"]:
        raise KitError(f"unknown target {options.target!r}", where="--target",
                       fix=f"use one of: {', '.join(versions['targets'])}")
    t = versions["targets"][options.target]
    base = options.base or t["base"]
    if base != base.lower():
        # spython lowercases the From: line; an upper-case name would build something else
        raise KitError(f"base image {base!r} has upper-case letters", where="--base",
                       fix="use an all-lower-case image reference")
    if re.search(r"\s", base):
        raise KitError(f"base image {base!r} has blanks", where="--base", fix="pass one image reference")
    constraints = constraints_text(versions)
    tc_path = tcmalloc_path(t["machine"])

    labels = {
        "org.kit.target": options.target,
        "org.kit.arch": t["arch"],
        "org.kit.base": base,
        "org.kit.debian": versions["debian"],
        "org.kit.python": str(versions["python"]),
        "org.kit.torch": str(t["torch"]),
        "org.kit.deepspeed": str(versions["deepspeed"]),
        "org.kit.deepspeed.build_ops": "0",
        "org.kit.tcmalloc": versions["tcmalloc_package"] if options.tcmalloc else "none",
        "org.kit.tcmalloc.path": tc_path if options.tcmalloc else "",
        "org.kit.constraints.sha256": hashlib.sha256(constraints.encode()).hexdigest(),
        RECIPE_HASH_LABEL: _HASH_PLACEHOLDER,
    }
    if not options.tcmalloc:
        del labels["org.kit.tcmalloc.path"]
    if options.staged:
        labels = {**{k: v for k, v in labels.items() if k != RECIPE_HASH_LABEL},
                  "org.kit.staged": "host", RECIPE_HASH_LABEL: _HASH_PLACEHOLDER}

    env = {
        "PATH": f"{VENV}/bin:$PATH",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "KIT_IMAGE_TARGET": options.target,
    }
    if options.tcmalloc:
        env["KIT_TCMALLOC"] = tc_path
    env.update({k: str(v) for k, v in (t.get("env") or {}).items()})

    apt = ["python3", "python3-venv", "ca-certificates", "procps"]
    if options.tcmalloc:
        apt.append(versions["tcmalloc_package"])
    pip = (f"{VENV}/bin/pip install --no-input --progress-bar off --cache-dir {PIP_CACHE} "
           f"--find-links {WHEELHOUSE} --constraint /opt/kit/constraints.txt "
           "$(test -f /host-ca.crt && echo --cert /host-ca.crt)")
    if options.staged:
        # the host unpacked the pinned wheels (kit image build --staged); the image's pip
        # then only confirms, offline, that every pin and dependency is there
        packages = [
            f"cp -a {STAGED_VENV}/. {VENV}/",
            f"{pip} --no-index 'torch=={t['torch']}' 'deepspeed=={versions['deepspeed']}'",
            f"{pip} setuptools wheel",
        ]
    else:
        packages = [
            f"{pip} 'torch=={t['torch']}'",
            f"{pip} setuptools wheel",
            f"DS_BUILD_OPS=0 {pip} --no-build-isolation 'deepspeed=={versions['deepspeed']}'",
        ]
    post = [
        "export DEBIAN_FRONTEND=noninteractive && apt-get update && apt-get install -y "
        f"--no-install-recommends {' '.join(apt)} && apt-get clean && rm -rf /var/lib/apt/lists/*",
        f"python3 -m venv {VENV}",
        *packages,
        f"{pip} --no-build-isolation {SRC}",
        f"grep -qs ' {WHEELHOUSE} ' /proc/mounts || rm -rf {WHEELHOUSE}",
        f"grep -qs ' {PIP_CACHE} ' /proc/mounts || rm -rf {PIP_CACHE}",
        f"{VENV}/bin/python -c 'import torch, kit; print(\"torch\", torch.__version__, \"kit\", kit.__version__)'",
    ]
    if options.tcmalloc:
        post.append(f"test -f {tc_path}")

    lines = [
        "Bootstrap: docker",
        f"From: {base}",
        "",
        f"# kit image {options.variant()}: generated by `kit image recipe --target {options.target} "
        f"--{'' if options.tcmalloc else 'no-'}tcmalloc{' --staged' if options.staged else ''}` "
        "from containers/versions.yaml.",
        "# Do not edit: change containers/versions.yaml or kit/image/recipe.py and re-render.",
        "# Build: kit image build (podman/docker use the spython conversion of this file).",
        "",
        "%labels",
        *(f"    {k} {v}" for k, v in labels.items()),
        "",
        "%files",
        "    constraints.txt /opt/kit/constraints.txt",
        f"    wheelhouse {WHEELHOUSE}",
        f"    kit-src {SRC}",
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
    text = text.replace(_HASH_PLACEHOLDER, digest)
    labels[RECIPE_HASH_LABEL] = digest
    return Recipe(options=options, text=text, sha256=digest, labels=labels, constraints=constraints, target=t)


def verify_hash(text: str) -> bool:
    """Whether a definition file's ``org.kit.recipe.sha256`` label matches its text."""
    m = re.search(rf"^\s*{re.escape(RECIPE_HASH_LABEL)} ([0-9a-f]{{64}})\s*$", text, re.M)
    if not m:
        return False
    blank = text.replace(m.group(1), _HASH_PLACEHOLDER, 1)
    return hashlib.sha256(blank.encode()).hexdigest() == m.group(1)


def committed_path(target: str) -> Path:
    """Where the rendered default recipe of ``target`` is committed."""
    return repo_root() / "containers" / f"{target}.def"
