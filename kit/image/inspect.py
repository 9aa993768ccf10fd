"""What an image is: digest, labels, architecture (``kit image inspect REF``).

- A SIF file (``*.sif`` or any existing file): ``digest`` is the sha256 of the file;
  labels come from ``singularity|apptainer inspect --json --labels`` where one is installed,
  and ``recipe_verified`` says whether the definition file the SIF was built from
  (``inspect --deffile``) hashes to its ``org.kit.recipe.sha256`` label
  (``kit.image.labels.verify_hash``): false for a def edited after ``kit image recipe``
  rendered it, null with ``recipe_why`` where it cannot be told.
- An OCI image in podman's or docker's local store: ``digest`` is the image id (the sha256
  of its config, what ``podman images --no-trunc`` shows); ``manifest_digest`` and
  ``repo_digests`` as the engine reports them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kit.digest import sha256_file
from kit.engines import OCI_ENGINES, SIF_ENGINES, first_on_path
from kit.errors import KitError
from kit.image.labels import RECIPE_HASH_LABEL, verify_hash



def is_sif(ref: str) -> bool:
    return ref.endswith(".sif") or Path(ref).is_file()


def file_sha256(path: Path) -> str:
    return "sha256:" + sha256_file(path)[0]


def inspect_sif(path: str, engine: str | None = None) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise KitError(f"image {path} does not exist", where="--image", fix="build it with kit image build --engine singularity")
    out: dict[str, Any] = {"ref": str(p.resolve()), "format": "sif", "digest": file_sha256(p),
                           "size_bytes": p.stat().st_size, "labels": {}}
    engine = engine or first_on_path(SIF_ENGINES)
    if engine and shutil.which(engine):
        proc = subprocess.run([engine, "inspect", "--json", "--labels", str(p)], capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            try:
                data = json.loads(proc.stdout)
                out["labels"] = data.get("data", {}).get("attributes", {}).get("labels", data)
            except json.JSONDecodeError:
                out["labels_error"] = "unparseable inspect output"
        else:
            out["labels_error"] = proc.stderr.strip()[-300:]
        out["engine"] = engine
    else:
        out["labels_error"] = "no singularity/apptainer binary to read the labels"
    if "org.kit.arch" in out["labels"]:
        out["arch"] = out["labels"]["org.kit.arch"]
    out.update(_recipe_check(p, engine, out["labels"]))
    return out


def _recipe_check(path: Path, engine: str | None, labels: dict[str, Any]) -> dict[str, Any]:
    """Whether the SIF's own definition file matches its recipe hash label."""
    if RECIPE_HASH_LABEL not in labels:
        return {"recipe_verified": None, "recipe_why": f"no {RECIPE_HASH_LABEL} label (not built from a kit recipe)"}
    if not engine or not shutil.which(engine):
        return {"recipe_verified": None, "recipe_why": "no singularity/apptainer binary to read the definition file"}
    proc = subprocess.run([engine, "inspect", "--deffile", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"recipe_verified": None, "recipe_why": f"inspect --deffile failed: {proc.stderr.strip()[-200:]}"}
    # the text as the engine prints it, or with the one final newline the def was written with
    return {"recipe_verified": verify_hash(proc.stdout) or verify_hash(proc.stdout.rstrip("\n") + "\n")}


def inspect_oci(ref: str, engine: str | None = None) -> dict[str, Any]:
    engine = engine or first_on_path(OCI_ENGINES)
    if engine is None or not shutil.which(engine):
        raise KitError(f"cannot inspect {ref}: neither podman nor docker is installed", where="kit image inspect",
                       fix="install podman (apt-get install podman) or pass a .sif file")
    proc = subprocess.run([engine, "image", "inspect", ref], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise KitError(f"{engine} has no image {ref} ({proc.stderr.strip()[-200:]})", where="--image",
                       fix="build it with kit image build, or name an image in `podman images`")
    data = json.loads(proc.stdout)[0]
    labels = data.get("Labels") or (data.get("Config") or {}).get("Labels") or {}
    return {
        "ref": ref,
        "format": "oci",
        "engine": engine,
        "digest": data.get("Id") if str(data.get("Id", "")).startswith("sha256:") else f"sha256:{data.get('Id')}",
        "manifest_digest": data.get("Digest"),
        "repo_digests": data.get("RepoDigests") or [],
        "repo_tags": data.get("RepoTags") or [],
        "arch": data.get("Architecture"),
        "os": data.get("Os"),
        "size_bytes": data.get("Size"),
        "labels": dict(sorted(labels.items())),
    }


def inspect_image(ref: str, engine: str | None = None) -> dict[str, Any]:
    if engine in SIF_ENGINES or (engine is None and is_sif(ref)):
        return inspect_sif(ref, engine)
    return inspect_oci(ref, engine)
