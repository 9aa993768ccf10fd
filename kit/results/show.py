"""``kit bundle show``: one bundle at a glance (status, what ran, the row, settings, verification).

Exit codes: 0 the bundle verifies; 1 it does not (the summary is still printed); 2 not a bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit import bundle as bundle_mod, metricdefs, table
from kit.results import store
from kit.results.humanize import setting_text, value_text
from kit.textsafe import terminal_tree


def summary(path: Path) -> dict[str, Any]:
    v = bundle_mod.verify(path)  # first: what follows is read through the reader, but judged after this
    docs = store.load(path)
    plan = docs.provenance.get("plan") or {}
    s = docs.metrics.get("summary") or {}
    m = docs.manifest
    files = m.get("files") or {}
    return {
        "id": docs.id, "path": str(path), "status": docs.status, "reason": m.get("reason", ""),
        "created": m.get("created"), "finished": m.get("finished"), "kit_version": m.get("kit_version"),
        "recipe": plan.get("recipe"), "presets": plan.get("presets"), "overrides": plan.get("overrides"),
        "launcher": plan.get("launcher"), "runtime": plan.get("runtime"),
        "image": (docs.provenance.get("runtime") or {}).get("image"),
        "image_digest": (docs.provenance.get("runtime") or {}).get("digest"),
        "layout": {k: plan.get(k) for k in ("nodes", "ranks_per_node", "world_size", "dp", "tp", "pp", "micro_batch",
                                             "global_batch", "threads_per_rank")},
        "settings": {st["name"]: setting_text(st) for st in plan.get("settings", [])},
        "metrics": {m.name: s.get(m.name) for m in metricdefs.shown()},
        "host": {k: (docs.provenance.get("host") or {}).get(k) for k in ("hostname", "cpu_model", "usable_cpus", "os")},
        "job": docs.provenance.get("job"),
        "sweep": docs.sweep,
        "row": table.bundle_row(m, docs.metrics, docs.provenance),
        "files": len(files), "bytes": sum(f.get("size", 0) for f in files.values()),
        "verified": v.ok, "problems": v.problems,
    }


def render(s: dict[str, Any]) -> str:
    """The summary as text; every string from the bundle escaped for the terminal."""
    s = terminal_tree(s)

    def kv(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {value_text(v)}" for k, v in d.items() if v is not None)

    lines = [f"bundle   {s['id']}", f"path     {s['path']}",
             f"status   {s['status']}" + (f": {s['reason']}" if s["reason"] else ""),
             f"when     {s['created']} .. {s['finished']} (kit {s['kit_version']})",
             f"recipe   {s['recipe']}" + (f"  --set {' --set '.join(s['overrides'])}" if s["overrides"] else ""),
             f"presets  {'+'.join(s['presets'] or [])}",
             f"launch   {s['launcher']} on {s['runtime']}" + (f", image {s['image']}" if s["image"] else "")
             + (f" ({s['image_digest']})" if s["image_digest"] else ""),
             f"layout   {kv(s['layout'])}", f"host     {kv(s['host'])}"]
    if s.get("job"):
        lines.append(f"job      {kv({k: v for k, v in s['job'].items() if isinstance(v, (str, int))})}")
    if s.get("sweep"):
        lines.append(f"sweep    {s['sweep'].get('sweep')} point {s['sweep'].get('key')} ({s['sweep'].get('layout')})")
    lines.append("settings")
    lines += [f"  {k:<17} {v}" for k, v in s["settings"].items()]
    lines.append("metrics  " + kv(s["metrics"]))
    lines += ["row", table.HEADER, s["row"]]
    lines.append(f"files    {s['files']} ({s['bytes'] / 1024:.1f} KiB), "
                 + ("verified: every checksum matches" if s["verified"] else f"DOES NOT VERIFY ({len(s['problems'])} problem(s))"))
    lines += [f"  {p}" for p in s["problems"]]
    return "\n".join(lines)
