"""A host's noise floor for a recipe: by how much identical runs differ on this host.

``kit noise RECIPE [--preset P] [--repeat N]`` runs the recipe N times (default 5) as one
group (:mod:`kit.repeat`) and stores, per metric, the runs' values and their floor
ln(max/min): the largest factor by which identical runs differed here
(:func:`kit.verdict.noise_floor`). ``kit compare`` and ``kit reproduce`` read it when a side
has too few runs for an interval over runs (see :mod:`kit.verdict`): an effect must then
exceed the floor to count.

Stored under the kit's cache directory, keyed by host and recipe:
``$KIT_CACHE_DIR/noise/<hostname>/<recipe>-<recipe sha256, 12 digits>.json`` (the hash is
of the recipe as resolved, overrides included, so ``tiny`` with 4 iterations has its own
floor, and an edited recipe file is a new one). The preset it was measured under is
recorded; the floor serves every preset of that recipe on that host. A newer measurement
replaces the older. The file is this machine's own cache, never part of a bundle.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import kit
from kit import bundle as bundle_mod
from kit.verdict import noise_floor

METRICS = ("sec_per_iter", "peak_mem_mib")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def path_for(host: str, recipe: str, recipe_sha256: str) -> Path:
    return kit.cache_dir() / "noise" / _SAFE.sub("-", host or "unknown") / f"{_SAFE.sub('-', recipe)}-{recipe_sha256[:12]}.json"


def make_record(*, host: str, recipe: str, recipe_sha256: str, presets: list[str], group: str,
                runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored document from the group's runs (``{"bundle", "sec_per_iter", "peak_mem_mib"}`` each)."""
    metrics = {}
    for m in METRICS:
        values = [r[m] for r in runs if r.get(m)]
        floor = noise_floor(values)
        metrics[m] = {"values": values, "floor": floor, "factor": None if floor is None else math.exp(floor)}
    return {"host": host, "recipe": recipe, "recipe_sha256": recipe_sha256, "presets": presets, "group": group,
            "measured": bundle_mod.now_iso(), "runs": len(runs), "bundles": [r["bundle"] for r in runs],
            "metrics": metrics}


def save(record: dict[str, Any]) -> Path:
    p = path_for(record["host"], record["recipe"], record["recipe_sha256"])
    bundle_mod.atomic_write(p, bundle_mod.dump_json(record))
    return p


def load(host: str, recipe: str, recipe_sha256: str) -> dict[str, Any] | None:
    """The stored record, or None (none measured, or unreadable: a cache, not an input)."""
    try:
        doc = json.loads(path_for(host, recipe, recipe_sha256).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("metrics"), dict) else None


def floor_of(record: dict[str, Any] | None, metric: str) -> float | None:
    """ln(max/min) of ``metric`` in the record, or None."""
    if not record:
        return None
    f = (record["metrics"].get(metric) or {}).get("floor")
    return float(f) if isinstance(f, (int, float)) and math.isfinite(f) and f >= 0 else None


def describe(record: dict[str, Any]) -> str:
    parts = []
    for m in METRICS:
        d = record["metrics"].get(m) or {}
        if d.get("factor"):
            parts.append(f"{m} x{d['factor']:.3f} (ln {d['floor']:.3f}; {len(d['values'])} runs: "
                         + ", ".join(f"{v:.4g}" for v in d["values"]) + ")")
        else:
            parts.append(f"{m} not measured")
    return (f"noise floor of {record['recipe']} on {record['host']} [{'+'.join(record['presets'])}], "
            f"{record['runs']} runs, {record['measured']}: " + "; ".join(parts))
