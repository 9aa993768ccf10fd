"""Finding and reading bundles: a bundle directory, a results directory, or several.

``find(paths)`` accepts bundle directories and directories holding bundles (searched two
levels deep, so ``results/`` finds ``results/<sweep>/<id>/`` too); hidden directories
(``.import-*`` temporaries, ``.sweep`` state) are never taken for bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kit import bundle as bundle_mod, bundle_reader
from kit.bundle_reader import BundleReadError
from kit.errors import KitError


@dataclass
class BundleDocs:
    """A bundle's documents, parsed."""
    path: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    plan: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.manifest.get("id", self.path.name)

    @property
    def status(self) -> str:
        return self.manifest.get("status", "?")


def dotted(doc: dict[str, Any] | None, key: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; None where a part is missing or not a mapping."""
    node: Any = doc or {}
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def is_bundle(path: Path) -> bool:
    """A directory (not a link) holding a manifest (not a link either)."""
    m = path / bundle_mod.MANIFEST
    return path.is_dir() and not path.is_symlink() and not m.is_symlink() and m.exists()


def find(paths: list[Path], depth: int = 2) -> list[Path]:
    """Bundle directories named by ``paths`` (bundles, or directories holding bundles), no duplicates."""
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(p)

    def walk(d: Path, level: int) -> None:
        try:
            children = sorted(c for c in d.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith("."))
        except OSError as e:
            raise KitError(f"cannot list: {e}", where=str(d)) from None
        for c in children:
            if is_bundle(c):
                add(c)
            elif level < depth:
                walk(c, level + 1)

    for p in paths:
        if not p.exists():
            raise KitError("no such file or directory", where=str(p), fix="name a bundle directory or a results directory")
        if p.is_file():
            if p.name.endswith((".tar.gz", ".tgz")):
                raise KitError("is an archive", where=str(p), fix=f"import it first: kit bundle import {p}")
            raise KitError("not a bundle directory", where=str(p), fix="name a bundle directory or a results directory")
        if is_bundle(p):
            add(p)
        else:
            walk(p, 1)
    return out


def _read(path: Path, name: str, *, required: bool) -> dict[str, Any] | None:
    """A document of the bundle through the reader's door (regular file, capped, validated)."""
    try:
        return bundle_reader.read_document(path, name)
    except BundleReadError as e:
        if e.why == "missing" and not required:
            return None
        raise KitError(e.why, where=e.path, fix="run `kit bundle verify` on the bundle") from None


def load(path: Path) -> BundleDocs:
    """A bundle's manifest, metrics, provenance (and plan, sweep record where present), each
    read through :mod:`kit.bundle_reader` and validated; a bad one is a one-line KitError."""
    if not is_bundle(path):
        raise KitError("not a bundle (no manifest.json)", where=str(path), fix="name a directory written by `kit run`")
    try:
        manifest = bundle_mod.read_manifest(path).model_dump()
    except BundleReadError as e:
        raise KitError(e.why, where=e.path, fix="run `kit bundle verify` on the bundle") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise KitError(f"schema: {'.'.join(str(x) for x in first.get('loc', ()))} {first.get('msg')}",
                       where=str(path / bundle_mod.MANIFEST), fix="run `kit bundle verify` on the bundle") from None
    metrics = _read(path, "metrics.json", required=False)
    prov = _read(path, "provenance.json", required=False)
    if metrics is None or prov is None:
        what = "metrics.json" if metrics is None else "provenance.json"
        raise KitError(f"{what} missing (status {manifest.get('status', '?')})", where=str(path),
                       fix="the run has not finished or the bundle is damaged; see `kit bundle verify`")
    return BundleDocs(path=path, manifest=manifest, metrics=metrics, provenance=prov,
                      plan=_read(path, "plan.json", required=False), sweep=_read(path, "sweep.json", required=False))
