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


def search_path(kind: str) -> list[Path]:
    env_var, sub = {"recipe": ("KIT_RECIPES", "recipes"), "preset": ("KIT_PRESETS", "env")}[kind]
    dirs = [Path(p) for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / sub, SHIPPED_ROOT / sub]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def find(kind: str, name: str) -> Path:
    """The file for a recipe/preset ``name`` (or a path to one)."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
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


def available(kind: str) -> list[str]:
    names: list[str] = []
    for d in search_path(kind):
        for p in sorted(d.glob("*.y*ml")):
            if p.stem not in names:
                names.append(p.stem)
    return names
