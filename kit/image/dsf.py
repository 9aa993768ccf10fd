"""The DeepSpeedFugaku layer of an image (``kit image recipe|build --dsf DIR``).

``DIR`` is a DeepSpeedFugaku git checkout (what ``scripts/dsf-setup.sh`` step 1 makes).
The image gets the tree of its HEAD commit (``git archive``: never untracked files, never a
local change) at ``/opt/dsf/DeepSpeedFugaku``, and then the same set-up as on a host, by the
same script: ``scripts/dsf-setup.sh --step 3|4|5`` (the import-guard patch, the
``megatron/data`` helpers built for the image's Python, the tiny vocabulary and dataset in
``/opt/dsf/data``), after the ``dsf`` extra's packages (pinned in ``containers/versions.yaml``
``dsf.constraints``) and a compiler (``dsf.apt``: DeepSpeed JIT-builds an op at run time).

What the image holds is recorded twice, from the same values: as labels
(``org.kit.dsf.commit``, ``.remote``, ``.patch.sha256``) and in
``/opt/dsf/DeepSpeedFugaku/KIT_PROGRAM.json``, which ``kit.provenance`` reads for a program
tree without ``.git`` (a run's ``program.script`` then says ``"source": "KIT_PROGRAM.json"``).
The label ``org.kit.provides /opt/dsf`` tells the container runtimes that the image brings
that directory: a host directory of the same path is never bound over it, and a recipe
``workdir`` there need not exist on the host.

A checkout with uncommitted changes is refused (they would be left out silently), except
for exactly the import-guard patch that ``dsf-setup.sh`` applies: the image applies the same
patch to the same HEAD.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.image.labels import PROVIDES_LABEL
from kit.provenance import PROGRAM_RECORD, strip_credentials

ROOT = "/opt/dsf"  # the image's set-up prefix (dsf-setup.sh --prefix)
PROGRAM = f"{ROOT}/DeepSpeedFugaku"  # the recipes' vars.dsf
SETUP = f"{ROOT}/setup"  # the set-up scripts and the dsf pins, copied in
CONSTRAINTS = f"{SETUP}/constraints.txt"
#: the set-up files the image runs, from the kit checkout's scripts/
SETUP_FILES = ("dsf-setup.sh", "dsf-import-guards.patch", "dsf_make_data.py")
#: dsf-setup.sh's steps the image runs (1, the checkout, is the staged tree; 2, the packages,
#: is the image's pinned pip line)
IMAGE_STEPS = (3, 4, 5)
SHM_COMM_BUILD = ("from deepspeed.accelerator import get_accelerator; "
                  "get_accelerator().create_op_builder(\"ShareMemCommBuilder\").load()")
_FIX = "pass a DeepSpeedFugaku git checkout (scripts/dsf-setup.sh makes one)"


@dataclass(frozen=True)
class DsfSource:
    """The checkout an image stages: where, its HEAD commit and its origin remote."""

    path: str
    commit: str
    remote: str  # credentials stripped; "none" when the checkout has no origin


def scripts_dir(root: Path) -> Path:
    return root / "scripts"


def patch_sha256(root: Path) -> str:
    return hashlib.sha256((scripts_dir(root) / "dsf-import-guards.patch").read_bytes()).hexdigest()


def patch_files(root: Path) -> list[str]:
    """The files the import-guard patch changes (its ``diff --git a/X b/X`` lines)."""
    text = (scripts_dir(root) / "dsf-import-guards.patch").read_text()
    return re.findall(r"^diff --git a/\S+ b/(\S+)$", text, re.M)


def _git(path: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise KitError(f"cannot run git in {path} ({e})", where="--dsf", fix="install git") from e


def checkout(path: Path, root: Path) -> DsfSource:
    """The checkout at ``path``, refused with one line when it is missing, not a git checkout,
    or has uncommitted changes other than exactly the import-guard patch."""
    if not path.is_dir():
        raise KitError(f"{path} does not exist or is not a directory", where="--dsf", fix=_FIX)
    top = _git(path, "rev-parse", "--show-toplevel")
    head = _git(path, "rev-parse", "--verify", "HEAD^{commit}")
    if top.returncode != 0 or head.returncode != 0:
        raise KitError(f"{path} is not a git checkout with a commit (the image stages its HEAD)", where="--dsf",
                       fix=_FIX)
    if Path(top.stdout.decode().strip()).resolve() != path.resolve():
        raise KitError(f"{path} is inside the git checkout {top.stdout.decode().strip()}, not its top", where="--dsf",
                       fix="pass the checkout's top directory")
    diff = _git(path, "diff", "--binary", "HEAD")
    patch = (scripts_dir(root) / "dsf-import-guards.patch").read_bytes()
    if diff.returncode != 0 or (diff.stdout and diff.stdout != patch):
        names = _git(path, "diff", "--name-only", "HEAD").stdout.decode(errors="replace").split()
        raise KitError(f"{path} has uncommitted changes ({', '.join(names[:5]) or 'unreadable diff'}); the image "
                       "stages its HEAD commit, so they would be left out", where="--dsf",
                       fix=f"commit them, or drop them (git -C {path} stash); the import-guard patch alone is fine")
    remote = _git(path, "remote", "get-url", "origin")
    url = remote.stdout.decode(errors="replace").strip() if remote.returncode == 0 else ""
    return DsfSource(path=str(path.resolve()), commit=head.stdout.decode().strip(),
                     remote=strip_credentials(url) or "none")


def labels(source: DsfSource, root: Path) -> dict[str, str]:
    return {"org.kit.dsf.commit": source.commit, "org.kit.dsf.remote": source.remote,
            "org.kit.dsf.patch.sha256": patch_sha256(root), PROVIDES_LABEL: ROOT}


def constraints_text(versions: dict) -> str:
    return "".join(f"{c}\n" for c in versions["dsf"]["constraints"])


def packages(root: Path) -> list[str]:
    """The ``dsf`` extra of pyproject.toml: what DeepSpeedFugaku imports besides torch/DeepSpeed."""
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dsf"]


def post_lines(versions: dict, root: Path, *, pip: str, python: str) -> list[str]:
    """The ``%post`` lines of the layer, each one complete command (kit.image.recipe's rules)."""
    apt = " ".join(versions["dsf"]["apt"])
    setup = f"{SETUP}/dsf-setup.sh --prefix {ROOT} --python {python}"
    return [
        "export DEBIAN_FRONTEND=noninteractive && apt-get update && apt-get install -y "
        f"--no-install-recommends {apt} && apt-get clean && rm -rf /var/lib/apt/lists/*",
        f"{pip} --constraint {CONSTRAINTS} {' '.join(packages(root))}",
        *(f"{setup} --step {n}" for n in IMAGE_STEPS),
        # DeepSpeed's CPU accelerator JIT-builds its shared-memory comm op (-O2 -fopenmp: no
        # -march, so portable) when Megatron initialises; built here into root's torch
        # extension cache, a run as root finds it instead of compiling it again each time
        # (37-79 s here, and g++'s memory counted in rank 0's peak)
        f"DS_ACCELERATOR=cpu {python} -c '{SHM_COMM_BUILD}'",
    ]


def program_record(source: DsfSource, root: Path) -> dict:
    """``KIT_PROGRAM.json``: what ``kit.provenance`` records for the tree (git's fields)."""
    return {"remote": None if source.remote == "none" else source.remote, "commit": source.commit,
            "dirty": True, "diff_sha256": patch_sha256(root), "diff_files": patch_files(root),
            "staged_by": "kit image build --dsf (git archive of the commit, then scripts/dsf-import-guards.patch)"}


def stage(source: DsfSource, root: Path, context: Path, versions: dict) -> None:
    """Write ``context/dsf/``: the HEAD tree, its KIT_PROGRAM.json, the set-up scripts and pins."""
    # checked again here: the checkout may have changed since the recipe was rendered
    again = checkout(Path(source.path), root)
    if again.commit != source.commit:
        raise KitError(f"{source.path} moved from {source.commit} to {again.commit} while the context was written",
                       where="--dsf", fix="build again")
    dest = context / "dsf" / "DeepSpeedFugaku"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", source.path, "archive", "--format=tar", source.commit],
                               stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait() != 0 or untar.returncode != 0:
        raise KitError(f"git archive of {source.path} failed ({untar.stderr.decode(errors='replace')[-200:]})",
                       where="--dsf", fix="check the checkout with git -C DIR fsck")
    (dest / PROGRAM_RECORD).write_text(json.dumps(program_record(source, root), indent=1, sort_keys=True) + "\n")
    setup = context / "dsf" / "setup"
    setup.mkdir(parents=True, exist_ok=True)
    for name in SETUP_FILES:
        shutil.copy2(scripts_dir(root) / name, setup / name)
    (setup / "constraints.txt").write_text(constraints_text(versions))
