"""``kit report``: bundles as the sweep table (``shared/reference/fugaku-config-sweep.md``).

Rows are grouped by model size and sequence length (``### 124M model, Sequence Length=1024``,
``, \\w Activation Checkpointing`` when it is on), ordered as the table orders them (nodes,
ranks per node, then the plain row, single settings — retention, frequency, allocator —
then combinations; DP layouts before TP), with the preset written the way the table writes
it, ``^^`` for a stalled run, ``-`` for what was not measured and the date (and job id) as
the note. Where a group's rows measured energy, J/it and tokens/J columns come before the
notes (every column a row carries is declared in ``kit.metricdefs``; CSV and JSON carry them
all). ``--format csv|json|markdown``; ``--plot DIR`` writes PNG charts (``kit.results.plots``).

Repeats (bundles whose manifests share a ``group``: ``kit run --repeat``, a sweep's
``repeat:``) are one row in the markdown table: the median of the group's finished runs in
each figure's column, and the spread in the note (``N=5: sec/it 0.399-0.460``; ``N=4 of 5
ok`` when some failed). CSV and JSON carry every sample (one row per bundle, with its
``repeat_group``); JSON adds ``groups``: per group N, the median, min and max of each figure.

Bundles that do not verify or have not finished are left out, each with a warning line on
stderr. Exit codes: 0 ok; 1 some bundles were left out (the table of the rest is printed);
2 bad input (nothing found).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from statistics import median
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from kit import bundle as bundle_mod, metricdefs, table
from kit.errors import KitError
from kit.textsafe import csv_cell, table_cell
from kit.results import store

FORMATS = ("markdown", "csv", "json")
CSV_COLUMNS = ("group", "nodes", "label", "size", "seq", "dp", "tp", "pp", "mbs", "gbs",
               *(m.column for m in metricdefs.columns()),  # the metrics a row carries (kit.metricdefs)
               "note", "status", "reason", "recipe", "presets", "overrides", "date", "job_id", "id", "path", "repeat_group")
#: the figures a group's row gives as the median of its finished runs (and whose spread it notes)
GROUPED = tuple(m.column for m in metricdefs.columns() if m.kind == "number")
LEGEND = {
    "^^": "^^ Stalled: no progress within the stall timeout (the run was stopped; see the bundle's reason)",
    " (failed)": "(failed) The run failed; see the bundle's reason and logs/",
    " (interrupted)": "(interrupted) The run was stopped before it finished",
}


@dataclass
class Report:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why" for bundles left out

    def groups(self) -> list[tuple[str, list[dict[str, Any]]]]:
        by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.rows:
            by[r["group"]].append(r)
        order = sorted(by, key=lambda g: (by[g][0]["params"], by[g][0]["seq"] or 0, by[g][0]["checkpoint_activations"]))
        return [(g, sorted(by[g], key=sort_key)) for g in order]

    def sections(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Like :meth:`groups`, with each repeat group collapsed into one row (:func:`collapse`)."""
        out = []
        for title, rows in self.groups():
            entries: dict[str, list[dict[str, Any]]] = {}
            for f in rows:
                entries.setdefault(f.get("repeat_group") or f"id:{f['id']}:{f['path']}", []).append(f)
            out.append((title, [collapse(rs) if rs[0].get("repeat_group") else rs[0] for rs in entries.values()]))
        return out


def collapse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a group of repeats: each figure the median of its finished runs; ``samples``
    holds every value, the note N and the spread."""
    ok = [f for f in rows if f["status"] == "ok"]
    f = dict(ok[0] if ok else rows[0])
    f["n"], f["n_ok"] = len(rows), len(ok)
    f["samples"] = {k: [r[k] for r in ok if r.get(k) is not None] for k in GROUPED}
    for k, vals in f["samples"].items():
        f[k] = median(vals) if vals else None
    spi = f["samples"]["sec_per_iter"]
    spread = f"N={len(ok)}" + (f" of {len(rows)} ok" if len(ok) != len(rows) else "")
    if spi:
        spread += f": sec/it {min(spi):.3g}-{max(spi):.3g}"
    f["note"] = f"{f['note']} {spread}".strip()
    f["ids"] = [r["id"] for r in rows]
    return f


def group_summaries(rep: Report) -> list[dict[str, Any]]:
    """Per repeat group: N, how many finished, and the median, min and max of each figure."""
    out = []
    for _, entries in rep.sections():
        for f in entries:
            if "samples" not in f:
                continue
            out.append({"repeat_group": f["repeat_group"], "n": f["n"], "ok": f["n_ok"], "ids": f["ids"],
                        "recipe": f["recipe"], "presets": f["presets"], "overrides": f["overrides"],
                        **{k: {"median": f[k], "min": min(v), "max": max(v)} if v else {"median": None, "min": None, "max": None}
                           for k, v in f["samples"].items()}})
    return out


def group_title(f: dict[str, Any]) -> str:
    t = f"{f['size']} model, Sequence Length={f['seq']}"
    if f["checkpoint_activations"]:
        t += ", \\w Activation Checkpointing"
    return t


def sort_key(f: dict[str, Any]) -> tuple:
    return (f["nodes"], f["ranks_per_node"], len(f["setting_order"]), f["setting_order"], f["tp"], f["pp"], -f["dp"],
            f["created"], f["id"] or "")


def fields_of(docs: store.BundleDocs) -> dict[str, Any]:
    f = table.row_fields(docs.manifest, docs.metrics, docs.provenance)
    f["group"] = group_title(f)
    f["path"] = str(docs.path)
    f["repeat_group"] = docs.manifest.get("group")
    if docs.sweep:
        f["sweep"] = docs.sweep.get("sweep")
        f["point"] = docs.sweep.get("key")
    return f


def build(paths: Iterable[Path], *, verify: bool = True) -> Report:
    """Rows for every finished bundle under ``paths``; unverified or unfinished ones are skipped with a reason."""
    paths = list(paths)
    found = store.find(paths)
    if not found:
        raise KitError("no bundles found", where=", ".join(str(p) for p in paths) or "(none given)",
                       fix="name bundle directories or a results directory written by `kit run`/`kit sweep`")
    rep = Report()
    for p in found:
        if verify:
            v = bundle_mod.verify(p)
            if not v.ok:
                rep.skipped.append(f"{p}: left out: {v.problems[0]}" + (f" (+{len(v.problems) - 1} more)" if len(v.problems) > 1 else ""))
                continue
        try:
            docs = store.load(p)
            rep.rows.append(fields_of(docs))
        except (KitError, KeyError, TypeError) as e:
            rep.skipped.append(f"{p}: left out: {e}")
    return rep


def markdown(rep: Report) -> str:
    out: list[str] = ["# Config Sweep", ""]
    marks: set[str] = set()
    stalled: list[str] = []
    for title, rows in rep.sections():
        # J/it, tokens/J: only where a row of the group measured them (the reference table has no such columns)
        extra = tuple(m for m in table.extra_metrics() if any(f.get(m.column) is not None for f in rows))
        out += [f"### {table_cell(title)}", table.header(extra)]
        for f in rows:
            out.append(table.fields_row(f, extra))
            mark = table.STATUS_MARK.get(f["status"])
            if f["status"] == "refused":
                stalled.append(f"{table_cell(f['label'] or 'plain')} DP {f['dp']} TP {f['tp']} PP {f['pp']}: "
                               f"not run: {table_cell(f['reason'])}")
            elif mark:
                marks.add(mark)
                stalled.append(f"{table_cell(f['id'])}: {table_cell(f['status'])}: "
                               f"{table_cell(f['reason'] or 'no reason recorded')}")
        out.append("")
    if marks or rep.rows:
        out.append("### Comments")
        for mark in table.STATUS_MARK.values():
            if mark in marks:
                out.append(f"- {LEGEND[mark]}")
        for s in stalled:
            out.append(f"- {s}")
        out.append("- `-`: not measured. Timing of runs that did not finish is not reported.")
        if any(f.get(m.column) is not None for f in rep.rows for m in table.extra_metrics()):
            out.append("- J/it, tokens/J: energy of the timed iterations from each node's counters (RAPL, NVML or "
                       "the Fujitsu Power API; `energy_source` and `energy_note` in the CSV/JSON say which and what "
                       "they cover).")
        recipes = sorted({r["recipe"] for r in rep.rows})
        out.append(f"- Recipes: {', '.join(table_cell(r) for r in recipes)}; {len(rep.rows)} row(s).")
        if any("samples" in f for _, rows in rep.sections() for f in rows):
            out.append("- N=: a group of repeats, one row: each figure the median of its finished runs, "
                       "the note its sec/it range (min-max) and N.")
    return "\n".join(out).rstrip() + "\n"


def _plain(f: dict[str, Any]) -> dict[str, Any]:
    return {k: (" ".join(v) if isinstance(v, list) and k in ("presets", "overrides") else v)
            for k, v in f.items() if k in CSV_COLUMNS}


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for _, rows in rep.groups():
        for f in rows:
            w.writerow({k: ("" if v is None else csv_cell(v)) for k, v in _plain(f).items()})
    return buf.getvalue()


def to_json(rep: Report) -> str:
    rows = [{k: f.get(k) for k in (*CSV_COLUMNS, "ranks_per_node", "checkpoint_activations", "created", "sweep", "point")
             if k in f} for _, g in rep.groups() for f in g]
    return json.dumps({"rows": rows, "groups": group_summaries(rep), "skipped": rep.skipped}, indent=2) + "\n"


def render(rep: Report, fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise KitError(f"unknown format {fmt!r}", where="--format", fix=f"use one of: {', '.join(FORMATS)}")
    return {"markdown": markdown, "csv": to_csv, "json": to_json}[fmt](rep)
