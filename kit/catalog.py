"""Where recipes and presets are found: by name on a search path, or by file path.

Search order for ``kit run NAME``: a path to a ``.yaml`` file as given; then each directory
in ``$KIT_RECIPES`` / ``$KIT_PRESETS`` (colon-separated); then ``./recipes`` / ``./env`` in
the current directory; then the directories shipped beside the kit package.
"""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import KitError

SHIPPED_ROOT = Path(__file__).resolve().parent.parent


_KINDS = {"recipe": ("KIT_RECIPES", "recipes"), "preset": ("KIT_PRESETS", "env"), "site": ("KIT_SITES", "sites")}


def search_path(kind: str) -> list[Path]:
    env_var, sub = _KINDS[kind]
    dirs = [Path(p) for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / sub, SHIPPED_ROOT / sub]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def is_path(name: str) -> bool:
    """Whether a recipe/preset ``name`` names a file (``x.yaml``, ``dir/x``) rather than a catalog entry."""
    return name.endswith((".yaml", ".yml")) or os.sep in name or "/" in name


def find(kind: str, name: str) -> Path:
    """The file for a recipe/preset ``name`` (or a path to one)."""
    if is_path(name):
        p = Path(name)
        if not p.is_file():
            raise KitError(f"{kind} file not found", where=name, fix=f"check the path, or name a {kind} from `kit {kind}s list`")
        return p
    for d in search_path(kind):
        for ext in (".yaml", ".yml"):
            p = d / f"{name}{ext}"
            if p.is_file():
                return p
    known = ", ".join(available(kind)) or "none found"
    raise KitError(f"no {kind} named {name!r}", where=f"{kind} {name}",
                   fix=f"use one of: {known} (see `kit {kind}s list`)")


def entries(kind: str) -> dict[str, Path]:
    """Every recipe/preset name on the search path and the file it resolves to (the first one)."""
    found: dict[str, Path] = {}
    for d in search_path(kind):
        for p in sorted(d.glob("*.y*ml")):
            found.setdefault(p.stem, p)
    return found


def available(kind: str) -> list[str]:
    return list(entries(kind))


def source(kind: str, path: Path) -> str:
    """Where a recipe/preset file comes from, for people: ``$KIT_RECIPES/x.yaml`` for the
    environment's directories, relative to the current directory for ``./recipes``, and
    ``<kit>/recipes/x.yaml`` for the kit's own (when run elsewhere); any other file as given."""
    env_var, _ = _KINDS[kind]
    p = Path(path).resolve()
    for d in (Path(x).resolve() for x in os.environ.get(env_var, "").split(os.pathsep) if x):
        if p.is_relative_to(d):
            return f"${env_var}/{p.relative_to(d)}"
    cwd = Path.cwd().resolve()
    if p.is_relative_to(cwd):
        return str(p.relative_to(cwd))
    if p.is_relative_to(SHIPPED_ROOT):
        return f"<kit>/{p.relative_to(SHIPPED_ROOT)}"
    return str(path)
