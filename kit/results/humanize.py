"""Values from a bundle as a person reads them: ``rank 0: tcmalloc``, ``vm: 1 rank``,
``2600 MHz (psutil.cpu_freq)``, never a Python repr. Used by ``kit bundle show`` and
``kit compare`` (which also compares settings by this text).

These return plain text; what prints it escapes it for its medium (:mod:`kit.textsafe`).
"""

from __future__ import annotations

from typing import Any

#: settings whose ``seen`` value is one entry per rank (rank number -> what that rank showed)
PER_RANK_SEEN = {"allocator"}
#: settings whose ``seen`` value is per node, counted in a unit (node -> count)
PER_NODE_COUNT_SEEN = {"ranks_per_node": ("rank", "ranks")}


def value_text(x: Any) -> str:
    """Any JSON value on one line: ``-`` for none, ``yes``/``no``, floats to 5 significant
    digits, lists joined with commas, mappings as ``key: value`` pairs."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.5g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(value_text(v) for v in x) if x else "-"
    if isinstance(x, dict):
        if not x:
            return "-"
        return ", ".join(f"{k}: {_nested(v)}" for k, v in x.items())
    return str(x).replace("\n", " ")


def _nested(v: Any) -> str:
    text = value_text(v)
    return f"({text})" if isinstance(v, (dict, list, tuple)) and len(v) > 1 else text


def _count(n: Any, unit: tuple[str, str]) -> str:
    return f"{n} {unit[0] if n == 1 else unit[1]}" if isinstance(n, int) and not isinstance(n, bool) else value_text(n)


def _rank_ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'"""
    parts, start = [], None
    ranks = sorted(ranks)
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            parts.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(parts)


def per_rank_text(seen: dict[str, Any]) -> str:
    """{'0': 'tcmalloc', '1': 'tcmalloc', '2': 'glibc'} -> 'ranks 0-1: tcmalloc, rank 2: glibc'."""
    if not all(str(k).isdigit() for k in seen):
        return value_text(seen)
    groups: dict[str, list[int]] = {}
    for k, v in seen.items():
        groups.setdefault(value_text(v), []).append(int(k))
    return ", ".join(f"{'rank' if len(rs) == 1 else 'ranks'} {_rank_ranges(rs)}: {v}" for v, rs in groups.items())


def seen_text(name: str, seen: Any) -> str:
    """What a setting was seen as, in words; ``""`` when nothing was seen."""
    if seen in (None, {}, [], ""):
        return ""
    if isinstance(seen, dict) and "mhz" in seen:
        where = f" ({seen['source']})" if seen.get("source") else ""
        return ("not seen" if seen["mhz"] is None else f"{value_text(seen['mhz'])} MHz") + where
    if isinstance(seen, dict) and name in PER_RANK_SEEN:
        return per_rank_text(seen)
    if isinstance(seen, dict) and name in PER_NODE_COUNT_SEEN:
        unit = PER_NODE_COUNT_SEEN[name]
        return ", ".join(f"{node}: {_count(n, unit)}" for node, n in seen.items())
    return value_text(seen)


def setting_text(s: dict[str, Any] | None) -> str:
    """One machine setting as recorded in ``provenance.json``'s ``plan.settings``:
    ``tcmalloc (applied by LD_PRELOAD=...), seen rank 0: tcmalloc, verified``."""
    if not s:
        return "-"
    if s.get("status") == "not-requested":
        return "not requested"
    text = f"{value_text(s.get('requested'))} ({s.get('status')}"
    if s.get("applied_by"):
        text += f" by {s['applied_by']}"
    text += ")"
    seen = seen_text(str(s.get("name", "")), s.get("seen"))
    if seen:
        text += f", seen {seen}"
    if s.get("verified") is not None:
        text += ", verified" if s["verified"] else ", NOT verified"
    return text
