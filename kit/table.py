"""The sweep table's row format (``shared/reference/fugaku-config-sweep.md``).

Columns: Nodes, Size, DP, TP, PP, MBS, GBS, Mem, Sec/it, TFLOPs, Est. Aggr. PetaFLOPs,
Notes. The preset's settings are written the way the table writes them next to the node
count (each knob's label and baseline are declared in ``kit.settings``) (``1 (2.2Hz, LD_PRELOAD=libtcmalloc.so, "retention_state=0")``); ``-`` marks what was
not measured and ``^^`` a run that stalled.
"""

from __future__ import annotations

from typing import Any

from kit import metricdefs, settings
from kit.textsafe import table_cell

HEADER = ("| Nodes | Size | DP | TP | PP | MBS |  GBS | Mem  | Sec/it | TFLOPs |Est. Aggr. PetaFLOPs| Notes |\n"
          "| ----: | ---: | -: | -: | -: | --: |  --: | ---: | -----: | -----: | ---: | ----: |")

#: the metrics the reference table has cells for; other declared cells (J/it, tokens/J) are
#: the report's extra columns, shown before Notes when a row has them
REFERENCE_CELLS = ("peak_mem_mib", "sec_per_iter", "tflops", "est_aggr_pflops")


def extra_metrics() -> tuple[metricdefs.Metric, ...]:
    return tuple(m for m in metricdefs.columns() if m.cell and m.name not in REFERENCE_CELLS)


def header(extra: tuple[metricdefs.Metric, ...] = ()) -> str:
    """The table's header, with ``extra`` metric columns before Notes."""
    if not extra:
        return HEADER
    top, rule = HEADER.split("\n")
    cut = top.rindex(" Notes |")
    return (top[:cut] + "".join(f" {m.title} |" for m in extra) + top[cut:] + "\n"
            + rule[:rule.rindex(" ----: |")] + " ---: |" * len(extra) + " ----: |")


STATUS_MARK = {"stalled": "^^", "failed": " (failed)", "interrupted": " (interrupted)"}


def model_size(params: float) -> str:
    if params >= 1e9:
        return f"{params / 1e9:.1f}B"
    if params >= 1e6:
        return f"{params / 1e6:.0f}M"
    return f"{params / 1e3:.0f}K"


def gpt_params(layers: int, hidden: int, vocab: int, seq: int) -> float:
    """Parameter count of a GPT-2-style model (tied embeddings), as model sizes are named."""
    return 12 * layers * hidden * hidden + 13 * layers * hidden + vocab * hidden + seq * hidden + 2 * hidden


def row(*, nodes: int, size: str, dp: int, tp: int, pp: int, mbs: int, gbs: int, mem_mib: float | None,
        sec_per_iter: float | None, tflops: float | None, pflops: float | None, note: str,
        label: str = "", status: str = "ok", extra: tuple[str, ...] = ()) -> str:
    """One row of the sweep table; ``extra``: cells inserted before Notes (the report's energy columns)."""
    node_cell = f"{nodes} ({label})" if label else f"{nodes}"
    node_cell += STATUS_MARK.get(status, "")
    cell = metricdefs.cell
    cells = [node_cell, size, dp, tp, pp, mbs, gbs, cell("peak_mem_mib", mem_mib), cell("sec_per_iter", sec_per_iter),
             cell("tflops", tflops), cell("est_aggr_pflops", pflops), *extra, note]
    return "| " + " | ".join(table_cell(c) if isinstance(c, str) else str(c) for c in cells) + " |"


def row_fields(manifest: dict[str, Any], metrics: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The values of one table row (and what ``kit report`` groups, sorts and exports), from a bundle.

    A run that did not finish (stalled, failed, interrupted) has no valid Sec/it: timing columns
    are ``None`` (printed ``-``); memory is kept when it was measured.
    """
    plan = provenance["plan"]
    recipe = provenance.get("recipe") or {}
    model = recipe.get("model", {})
    summary = metrics.get("summary", {})
    requested = {s["name"]: s.get("requested") for s in plan.get("settings", [])}
    params = gpt_params(model.get("layers", 0), model.get("hidden", 0), model.get("vocab", 0), model.get("seq", 0))
    created = manifest.get("created", "")
    job = (provenance.get("job") or {}).get("job_id") or (provenance.get("scheduler") or {}).get("job_id")
    status = manifest.get("status", "ok")
    ok = status == "ok"
    requested["ranks_per_node"] = plan["ranks_per_node"]
    return {
        "id": manifest.get("id"), "status": status, "reason": manifest.get("reason", ""),
        "recipe": plan.get("recipe") or manifest.get("recipe"), "presets": plan.get("presets") or [manifest.get("preset")],
        "overrides": plan.get("overrides", []), "size": model_size(params), "params": params,
        "seq": model.get("seq"), "checkpoint_activations": bool(model.get("checkpoint_activations")),
        "nodes": plan["nodes"], "ranks_per_node": plan["ranks_per_node"], "label": settings.label(requested),
        "dp": plan["dp"], "tp": plan["tp"], "pp": plan["pp"], "mbs": plan["micro_batch"], "gbs": plan["global_batch"],
        **{m.column: (summary.get(m.name) if ok or not m.finished_only else None) for m in metricdefs.columns()},
        "date": created[5:10], "created": created, "job_id": job,
        "note": " ".join(x for x in (created[5:10], f"job {job}" if job else "") if x),
        "setting_order": settings.row_order(requested),
    }


def fields_row(f: dict[str, Any], extra: tuple[metricdefs.Metric, ...] = ()) -> str:
    return row(nodes=f["nodes"], size=f["size"], dp=f["dp"], tp=f["tp"], pp=f["pp"], mbs=f["mbs"], gbs=f["gbs"],
               mem_mib=f["mem_mib"], sec_per_iter=f["sec_per_iter"], tflops=f["tflops"], pflops=f["est_aggr_pflops"],
               note=f["note"], label=f["label"], status=f["status"],
               extra=tuple(metricdefs.cell(m.name, f.get(m.column)) for m in extra))


def bundle_row(manifest: dict[str, Any], metrics: dict[str, Any], provenance: dict[str, Any]) -> str:
    """One table row from a bundle's three JSON documents."""
    return fields_row(row_fields(manifest, metrics, provenance))
