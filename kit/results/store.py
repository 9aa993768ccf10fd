"""Finding and reading bundles: a bundle directory, a results directory, or several.

``find(paths)`` accepts bundle directories and directories holding bundles (searched two
levels deep, so ``results/`` finds ``results/<sweep>/<id>/`` too); hidden directories
(``.import-*`` temporaries, ``.sweep`` state) are never taken for bundles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit import bundle as bundle_mod
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


def is_bundle(path: Path) -> bool:
    return (path / bundle_mod.MANIFEST).is_file()


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KitError(f"unreadable: {e}", where=str(path), fix="run `kit bundle verify` on the bundle") from None


def load(path: Path) -> BundleDocs:
    """A bundle's manifest, metrics, provenance (and plan, sweep record where present)."""
    if not is_bundle(path):
        raise KitError("not a bundle (no manifest.json)", where=str(path), fix="name a directory written by `kit run`")
    manifest = _read_json(path / bundle_mod.MANIFEST) or {}
    metrics = _read_json(path / "metrics.json")
    prov = _read_json(path / "provenance.json")
    if metrics is None or prov is None:
        what = "metrics.json" if metrics is None else "provenance.json"
        raise KitError(f"{what} missing (status {manifest.get('status', '?')})", where=str(path),
                       fix="the run has not finished or the bundle is damaged; see `kit bundle verify`")
    return BundleDocs(path=path, manifest=manifest, metrics=metrics, provenance=prov,
                      plan=_read_json(path / "plan.json"), sweep=_read_json(path / "sweep.json"))
