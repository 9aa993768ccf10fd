"""Finalizing a run's bundle: one ``RunRecord`` in, metrics, provenance and the final
manifest out, whatever the run's outcome.

The same code finalizes a run the kit watched to its end (:mod:`kit.execute`) and a batch
job that died before its kit could (``kit collect``, :mod:`kit.jobs`). Only one kit
finalizes a bundle: the one holding its claim (:mod:`kit.claim`); another waits for it, or
takes over from one that is gone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod, claim, metricdefs, metrics, provenance, settings, table
from kit.bundle import Bundle
from kit.logparse import IterationRecord
from kit.outcome import Outcome, print_result
from kit.plan import Plan
from kit.textsafe import terminal
from kit.redact import redact_argv

FINALIZE_WAIT_S = 30.0  # for another kit that is finalizing the same bundle (kit collect vs the job's kit)


@dataclass
class RunRecord:
    """Everything known about a run when it ends: what ran, how it ended, what was measured."""

    plan: Plan
    bundle: Bundle
    runtime: Any  # kit.runtimes.Runtime: where the ranks ran
    status: str
    reason: str
    records: list[IterationRecord]
    monitors: list[dict[str, Any]]  # one snapshot per node (kit.monitor)
    rank_failures: dict[int, dict[str, object]]
    launcher_rc: int | None
    argv: list[str]
    kit_env: dict[str, str]
    env: dict[str, str]
    started: str
    duration: float
    stacks: dict[str, str] = field(default_factory=dict)
    device_memory: dict[str, dict[str, float]] | None = None
    host_memory: dict[str, dict[str, float]] | None = None  # the program's own `CPU memory (MB)` reports
    extra_provenance: dict[str, Any] = field(default_factory=dict)
    software: dict[str, Any] | None = None  # the inventory taken while the ranks ran; None: take it now


def _claim_finalization(b: Bundle, console: Console) -> Outcome | None:
    """None when this kit now finalizes ``b`` (``kit.claim``). Otherwise another kit has (its
    outcome) or is finalizing it: wait for it up to ``FINALIZE_WAIT_S``; take over from one
    that is gone."""
    deadline = time.monotonic() + FINALIZE_WAIT_S
    while True:
        on_disk = bundle_mod.read_manifest(b.path)
        if on_disk.status in bundle_mod.FINAL_STATUSES:
            # finalized meanwhile by another kit (`kit collect` after its grace): keep its version
            out = Outcome(status=on_disk.status, reason=on_disk.reason, bundle=b)
            console.print(f"bundle already finalized by another kit ({on_disk.status}); left as it is",
                          highlight=False, soft_wrap=True)
            print_result(out, console)
            return out
        if claim.claim(b.path) or claim.mine(b.path):
            return None
        held = claim.read(b.path)
        who = terminal(f"{held.get('command', 'a kit')} on {held.get('host', '?')} (pid {held.get('pid', '?')})")
        if claim.holder_gone(b.path, held):
            if bundle_mod.read_manifest(b.path).status in bundle_mod.FINAL_STATUSES:
                continue  # it finished before it went: its version stands (next turn)
            if claim.take_over(b.path, held):
                console.print(f"{who} claimed the bundle's finalization and is gone: finalizing it here",
                              highlight=False, soft_wrap=True)
                return None
        if time.monotonic() >= deadline:
            console.print(f"bundle is being finalized by {who}; left to it", highlight=False, soft_wrap=True)
            return Outcome(status=on_disk.status, reason=f"being finalized by {who}", bundle=b)
        time.sleep(0.5)


def _measured(summary: dict[str, Any]) -> tuple[str, str]:
    """A run the launcher ended well is ok only if its sec/it and memory were measured:
    otherwise "failed", saying which figure is missing and why (its value stays None)."""
    missing = {k: v for k, v in summary["not_measured"].items() if k in metricdefs.required()}
    if not missing:
        return "ok", ""
    return "failed", "not measured: " + "; ".join(f"{k} ({why})" for k, why in missing.items())


def finalize(rec: RunRecord, console: Console) -> Outcome:
    """Write metrics.json and provenance.json from ``rec`` and the final manifest. A bundle
    that cannot be written (a full disk, a lost mount) ends ``failed`` in one line, never
    ``ok``: its manifest says so where it still can be written, else stays ``running``."""
    try:
        other = _claim_finalization(rec.bundle, console)
        if other is not None:
            return other
        return _write(rec, console)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        reason = f"the bundle could not be written: {e.strerror or e}{where}"
        try:
            rec.bundle.set_status("failed", reason)
        except OSError:
            pass  # the manifest still says running: `kit bundle verify` reports it incomplete
        console.print(f"failed: {reason}", highlight=False, markup=False, soft_wrap=True)
        console.print(f"bundle: {rec.bundle.path}", highlight=False, markup=False, soft_wrap=True)
        return Outcome(status="failed", reason=reason, bundle=rec.bundle)


def _write(rec: RunRecord, console: Console) -> Outcome:
    plan, b, rt, monitors = rec.plan, rec.bundle, rec.runtime, rec.monitors
    status, reason, device_memory, software = rec.status, rec.reason, rec.device_memory, rec.software
    rank_peaks: dict[str, dict[str, float]] = {}
    for m in monitors:
        rank_peaks[m["node"]] = {r: s["peak_rss_mib"] for r, s in m["ranks"].items()}
    r = plan.recipe
    summary = metrics.summarize(rec.records, layers=r.model.layers, hidden=r.model.hidden, seq=r.model.seq,
                                vocab=r.model.vocab, global_batch=r.batch.global_batch,
                                checkpoint_activations=r.model.checkpoint_activations, tp=r.parallel.tp,
                                world_size=plan.world_size, ranks_per_node=plan.ranks_per_node, nodes=plan.nodes,
                                warmup_iters=r.train.warmup_iters, rank_peak_rss_mib=rank_peaks,
                                device_memory=device_memory, host_memory=rec.host_memory,
                                energy_by_node={m["node"]: m.get("energy") for m in monitors})
    if status == "ok":
        status, reason = _measured(summary)
    summary["duration_s"] = round(rec.duration, 3)
    summary["status"] = status
    ranks_out: dict[str, Any] = {}
    for m in monitors:
        for rk, s in m["ranks"].items():
            ranks_out[rk] = {"node": s["node"], "pid": s["pid"], "local_rank": s["local_rank"],
                             "peak_rss_mib": round(s["peak_rss_mib"], 1), "allocator": s["allocator"]}
    for rk, mem in (device_memory or {}).items():
        ranks_out.setdefault(rk, {})["device_memory_mib"] = mem
    for rk, mem in (rec.host_memory or {}).items():
        ranks_out.setdefault(rk, {})["program_cpu_memory_mib"] = mem
    for rk, f in rec.rank_failures.items():
        ranks_out.setdefault(str(rk), {}).update(f)
    per_node_peak = summary["peak_mem_mib_per_node"] or {}
    metrics_doc = {
        "summary": summary,
        "ranks": ranks_out,
        "nodes": {m["node"]: {"peak_mem_mib": per_node_peak.get(m["node"]),
                              "ranks": sorted(int(x) for x in m["ranks"]),
                              "monitor_cpu_s": m["monitor_cpu_s"],
                              "kit_cpu_s": m.get("kit_cpu_s")} for m in monitors},
        "iterations": [it.as_dict() for it in rec.records],
    }
    b.write_json("metrics.json", metrics_doc)
    plan_summary = plan.summary()
    plan_summary["settings"] = settings.observed(plan.settings, monitors)
    if software is None:
        software = rt.inspect_software()
    prov = provenance.collect(plan_summary=plan_summary, env=rec.env, software=software, runtime=rt.describe(), extra={
        "recipe": r.model_dump(by_alias=True),
        "preset": plan.preset.model_dump(),
        "program": rt.describe_program(plan.rank_argv, workdir=Path(plan.workdir or os.getcwd()), env=plan.env),
        "run": {"argv": redact_argv(rec.argv), "kit_env": sorted(rec.kit_env), "launcher": plan.launcher,
                "launcher_exit_code": rec.launcher_rc, "started": rec.started, "ended": bundle_mod.now_iso(),
                "duration_s": round(rec.duration, 3), "stacks": rec.stacks},
        **rec.extra_provenance,
    })
    b.write_json("provenance.json", prov)
    if not claim.mine(b.path):  # taken over meanwhile (this kit stalled past claim.STALE_S): its turn
        console.print("the bundle's finalization was taken over by another kit; left to it", highlight=False)
        return Outcome(status="running", reason="finalization taken over by another kit", bundle=b)
    b.finalize(status, reason)  # type: ignore[arg-type]
    out = Outcome(status=status, reason=reason, bundle=b, summary=summary)
    print_result(out, console, table.bundle_row(b.manifest.model_dump(), metrics_doc, prov))
    return out
