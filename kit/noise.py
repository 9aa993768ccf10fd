"""A host's noise floor for a recipe: by how much identical runs differ on this host.

``kit noise RECIPE [--preset P] [--repeat N] [--spread 30m]`` runs the recipe N times (default
5) as one group (:mod:`kit.repeat`), ``--spread`` spacing the runs' starts over that time;
``kit noise RECIPE --from DIR`` takes finished runs instead (a ``kit run --repeat`` group, a
sweep's repeats). Either adds its runs, as one *session*, to what is stored for this host and
recipe: measurements accumulate, so running ``kit noise`` again at another hour widens what
the floor has seen. Sessions older than ``MAX_AGE_DAYS`` are dropped, and the oldest beyond
``MAX_RUNS`` runs; ``--reset`` starts afresh (the host changed).

Per metric, the record keeps every run's value, their spread ln(max/min), and the floor
(:func:`kit.verdict.noise_floor`): a 95% bound on the factor between two more identical
runs, from the runs' standard deviation (around each preset's own mean) with Student's t for
their number. ``kit compare`` and ``kit reproduce`` read it when a side has too few runs for
an interval over runs (see :mod:`kit.verdict`): an effect must then exceed the floor to count.
The span of time the runs cover is kept and shown: runs close together miss the load changes
between them (BENCHMARKS.md section 7), and ``describe`` says so below ``SHORT_SPAN_S``.

Stored under the kit's cache directory, keyed by host and recipe:
``$KIT_CACHE_DIR/noise/<hostname>/<recipe>-<recipe sha256, 12 digits>.json`` (the hash is
of the recipe as resolved, overrides included, so ``tiny`` with 4 iterations has its own
floor, and an edited recipe file is a new one). The floor serves every preset of that recipe
on that host. The file is this machine's own cache, never part of a bundle; one in an older
layout (no sessions) is ignored.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kit
from kit import bundle as bundle_mod, hostinfo, locks, metricdefs
from kit.textsafe import terminal
from kit.verdict import finite, noise_floor, spread

METRICS = tuple(m.name for how in ("timing", "memory") for m in metricdefs.judged(how))
MAX_RUNS = 100
MAX_AGE_DAYS = 30
SHORT_SPAN_S = 30 * 60
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def this_host() -> str:
    """The key of this host's records: its hostname as provenance records it."""
    return str(hostinfo.describe().get("hostname") or "unknown")


def path_for(host: str, recipe: str, recipe_sha256: str) -> Path:
    return kit.cache_dir() / "noise" / _SAFE.sub("-", host or "unknown") / f"{_SAFE.sub('-', recipe)}-{recipe_sha256[:12]}.json"


def _when(text: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _positive(v: Any) -> bool:
    return finite(v) and v > 0


def session(*, presets: list[str], group: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One measurement: ``runs`` are ``{"bundle", "started", <metric>: value}`` of finished runs."""
    return {"group": group, "presets": list(presets), "added": bundle_mod.now_iso(), "runs": runs}


def make_record(*, host: str, recipe: str, recipe_sha256: str, sessions: list[dict[str, Any]],
                now: datetime | None = None) -> dict[str, Any]:
    """The stored document: the sessions kept (age and count limits) and each metric's floor over them."""
    now = now or datetime.now(timezone.utc)
    kept = [s for s in sessions if (_when(s.get("added")) or now) >= now - timedelta(days=MAX_AGE_DAYS)]
    while len(kept) > 1 and sum(len(s["runs"]) for s in kept) > MAX_RUNS:
        kept.pop(0)
    runs = [r for s in kept for r in s["runs"]]
    starts = sorted(t for t in (_when(r.get("started")) for r in runs) if t)
    metrics = {}
    for m in METRICS:
        by_preset: dict[str, list[float]] = {}
        for s in kept:
            by_preset.setdefault("+".join(s["presets"]), []).extend(
                float(r[m]) for r in s["runs"] if _positive(r.get(m)))
        values = [v for vs in by_preset.values() for v in vs]
        f = noise_floor(list(by_preset.values()))
        spreads = [x for x in (spread(vs) for vs in by_preset.values()) if x is not None]
        sp = max(spreads) if spreads else None  # identical runs only: one preset's runs at a time
        metrics[m] = {"values": values, "runs": len(values), "df": f.df if f else None,
                      "spread": sp, "floor": f.value if f else None, "factor": math.exp(f.value) if f else None}
    return {"host": host, "recipe": recipe, "recipe_sha256": recipe_sha256, "updated": bundle_mod.now_iso(),
            "runs": len(runs), "span_s": (starts[-1] - starts[0]).total_seconds() if len(starts) > 1 else None,
            "presets": sorted({"+".join(s["presets"]) for s in kept}), "sessions": kept, "metrics": metrics}


def add_session(*, host: str, recipe: str, recipe_sha256: str, new: dict[str, Any], reset: bool = False) -> dict[str, Any]:
    """The stored record with ``new`` added; a run (by bundle id) counts once, whether it is
    stored already or named twice in ``new`` (twice would narrow the floor)."""
    old = None if reset else load(host, recipe, recipe_sha256)
    sessions = list(old["sessions"]) if old else []
    seen = {r.get("bundle") for s in sessions for r in s["runs"]}
    runs = []
    for r in new["runs"]:
        if r.get("bundle") not in seen:
            seen.add(r.get("bundle"))
            runs.append(r)
    if runs:
        sessions.append({**new, "runs": runs})
    return make_record(host=host, recipe=recipe, recipe_sha256=recipe_sha256, sessions=sessions)


def update(*, host: str, recipe: str, recipe_sha256: str, new: dict[str, Any],
           reset: bool = False) -> tuple[dict[str, Any], Path]:
    """:func:`add_session` and :func:`save` under one lock (a ``--from`` during a long ``--spread``
    loses neither session)."""
    p = path_for(host, recipe, recipe_sha256)
    with locks.exclusive(p.with_name(p.name + ".lock")):
        rec = add_session(host=host, recipe=recipe, recipe_sha256=recipe_sha256, new=new, reset=reset)
        return rec, save(rec)


def save(record: dict[str, Any]) -> Path:
    p = path_for(record["host"], record["recipe"], record["recipe_sha256"])
    bundle_mod.atomic_write(p, bundle_mod.dump_json(record))
    return p


def _number_or_none(v: Any) -> bool:
    return v is None or finite(v)


def _well_formed(doc: Any) -> bool:
    """The shape :func:`make_record` writes (anything else: not ours, or damaged)."""
    if not (isinstance(doc, dict) and isinstance(doc.get("sessions"), list) and isinstance(doc.get("metrics"), dict)
            and all(isinstance(doc.get(k), str) for k in ("host", "recipe", "recipe_sha256", "updated"))
            and isinstance(doc.get("runs"), int) and _number_or_none(doc.get("span_s"))
            and isinstance(doc.get("presets"), list) and all(isinstance(x, str) for x in doc["presets"])):
        return False
    for s in doc["sessions"]:
        if not (isinstance(s, dict) and isinstance(s.get("runs"), list) and isinstance(s.get("presets"), list)
                and all(isinstance(x, str) for x in s["presets"]) and isinstance(s.get("group"), str)
                and all(isinstance(r, dict) and all(_number_or_none(r.get(m)) for m in METRICS) for r in s["runs"])):
            return False
    for m in METRICS:
        d = doc["metrics"].get(m)
        if not (isinstance(d, dict) and isinstance(d.get("values"), list) and all(_positive(v) for v in d["values"])
                and isinstance(d.get("runs"), int)
                and all(_number_or_none(d.get(k)) for k in ("df", "spread", "floor", "factor"))):
            return False
    return True


def load(host: str, recipe: str, recipe_sha256: str) -> dict[str, Any] | None:
    """The stored record, or None (none measured, an older layout, damaged or unreadable: a
    cache, not an input)."""
    try:
        doc = json.loads(path_for(host, recipe, recipe_sha256).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if _well_formed(doc) else None


def floor_of(record: dict[str, Any] | None, metric: str) -> float | None:
    """The stored floor of ``metric`` (ln of a factor), or None."""
    if not record:
        return None
    f = (record["metrics"].get(metric) or {}).get("floor")
    return float(f) if finite(f) and f >= 0 else None


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min"


def describe(record: dict[str, Any]) -> str:
    parts = []
    for m in METRICS:
        d = record["metrics"].get(m) or {}
        if d.get("factor"):
            parts.append(f"{m} x{d['factor']:.3f} (ln {d['floor']:.3f}; {d['runs']} runs, spread within a preset "
                         f"up to x{math.exp(d['spread']):.3f}: " + ", ".join(f"{v:.4g}" for v in d["values"]) + ")")
        else:
            parts.append(f"{m} not measured (fewer than 2 runs of one preset)")
    span = record.get("span_s")
    when = f"over {_duration(span)}" if span else "at one time"
    text = (f"noise floor of {record['recipe']} on {record['host']} [{', '.join(record['presets'])}], "
            f"{record['runs']} runs in {len(record['sessions'])} session(s) {when}, updated {record['updated']}: "
            + "; ".join(parts))
    if not span or span < SHORT_SPAN_S:
        text += (f". The runs span under {SHORT_SPAN_S // 60} min: they miss the host's slower changes; "
                 "add runs at another time (kit noise again, or --spread)")
    return terminal(text)  # preset names and hosts may come from a stranger's bundles (--from)
