"""From parsed iterations and sampled memory to the table's numbers.

``summarize`` implements the summary rule of each metric declared in ``kit.metricdefs``
(which says, per metric, its unit, its rule, its better direction and where it is shown):
sec/it as the median after the warm-up, TFLOPs by Megatron's formula (``kit.flops``),
peak memory per node as the sum of its ranks' peaks, energy over the timed window from the
nodes' counters (``kit.energy``). Its keys are exactly the declared ones.
"""

from __future__ import annotations

import statistics
from typing import Any

from kit import energy, flops, metricdefs
from kit.logparse import IterationRecord


def summarize(records: list[IterationRecord], *, layers: int, hidden: int, seq: int, vocab: int,
              global_batch: int, checkpoint_activations: bool, tp: int, world_size: int,
              ranks_per_node: int, nodes: int, warmup_iters: int,
              rank_peak_rss_mib: dict[str, dict[str, float]] | None = None,
              device_memory: dict[str, dict[str, float]] | None = None,
              energy_by_node: dict[str, dict[str, Any] | None] | None = None,
              host_memory: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The metrics summary. Values that were not measured are None, never estimated, and
    ``not_measured`` says why (sec/it, memory and what follows from them)."""
    # Megatron's skipped (overflow) and NaN iterations are counted, not timed
    timed = [r for r in records if r.iteration > warmup_iters and r.elapsed_s is not None and r.untimed is None]
    summary: dict[str, Any] = dict.fromkeys(metricdefs.summary_keys())
    summary.update(iterations_logged=len(records), iterations_timed=len(timed), warmup_iters=warmup_iters,
                   final_loss=records[-1].fields.get("loss") if records else None,
                   world_size=world_size, ranks_per_node=ranks_per_node, nodes=nodes,
                   iterations_skipped=int(sum(r.fields.get("skipped", 0) for r in records)),
                   iterations_nan=int(sum(r.fields.get("nan_iters", 0) for r in records)),
                   mem_column="peak_mem_mib")
    not_measured: dict[str, str] = {}
    if timed:
        times = [r.elapsed_s for r in timed]
        spi = statistics.median(times)
        tp_ = flops.throughput(layers=layers, hidden=hidden, seq=seq, vocab=vocab, global_batch=global_batch,
                               sec_per_iter=spi, checkpoint_activations=checkpoint_activations, tp=tp,
                               world_size=world_size, ranks_per_node=ranks_per_node, nodes=nodes)
        summary.update(
            sec_per_iter=spi, sec_per_iter_min=min(times), sec_per_iter_max=max(times),
            tflops_per_rank=tp_.tflops_per_rank, tflops=tp_.tflops, est_aggr_pflops=tp_.est_aggr_pflops,
            flops_per_iter=tp_.flops_per_iter,
            samples_per_sec=global_batch / spi, tokens_per_sec=global_batch * seq / spi,
        )
    else:
        not_measured["sec_per_iter"] = _why_untimed(records, warmup_iters)
        for key in ("tflops_per_rank", "tflops", "est_aggr_pflops", "samples_per_sec", "tokens_per_sec"):
            not_measured[key] = "no sec/it (see sec_per_iter)"
    per_node = {node: round(sum(ranks.values()), 1) for node, ranks in (rank_peak_rss_mib or {}).items() if ranks}
    if per_node:
        summary["peak_mem_mib_per_node"] = per_node
        summary["peak_mem_mib"] = max(per_node.values())
    else:
        not_measured["peak_mem_mib"] = "the monitor found no rank process (by KIT_RUN_ID and the command line)"
    used = [d["used"] for d in (host_memory or {}).values() if "used" in d]
    summary["program_mem_used_mib"] = max(used) if used else None
    summary["not_measured"] = not_measured
    for field in ("allocated", "reserved"):
        seen = [d[f"max_{field}"] for d in (device_memory or {}).values() if f"max_{field}" in d]
        summary[f"device_peak_{field}_mib"] = max(seen) if seen else None
    summary.update(energy_summary(energy_by_node or {}, tokens_per_iter=global_batch * seq))
    return summary


def _why_untimed(records: list[IterationRecord], warmup_iters: int) -> str:
    if not records:
        return "no iteration line was parsed from the log"
    after = [r for r in records if r.iteration > warmup_iters]
    if not after:
        return f"no iteration logged after the {warmup_iters} warm-up iteration(s)"
    if all(r.elapsed_s is None for r in after):
        return "the iteration lines carry no 'elapsed time per iteration (ms|s)' field"
    return f"every iteration after warm-up was skipped or NaN ({len(after)} logged)"


def energy_summary(by_node: dict[str, dict[str, Any] | None], *, tokens_per_iter: int) -> dict[str, Any]:
    """The energy metrics from each node's monitor energy document (``kit.energy.Meter.doc``
    plus the window marks of the node that follows the log). None, with ``energy_note``
    saying why, unless every node exposed a counter whose samples cover the window."""
    out: dict[str, Any] = dict.fromkeys(("energy_j", "energy_j_per_iter", "tokens_per_j", "avg_power_w",
                                         "energy_j_per_node", "energy_source", "energy_note"))
    docs = {node: d for node, d in by_node.items() if d}
    if not docs:
        out["energy_note"] = "no energy sampled: the monitor recorded no energy document"
        return out
    out["energy_source"] = "; ".join(dict.fromkeys(d["source"] for d in docs.values() if d.get("source"))) or None
    bare = {node: d for node, d in docs.items() if not d.get("counted")}
    if bare:
        out["energy_note"] = "; ".join(f"{node}: no energy counter exposed ({'; '.join(d.get('unavailable') or [])})"
                                       for node, d in bare.items())
        return out
    window = next((d["window"] for d in docs.values() if d.get("window")), {})
    if "start" not in window or "end" not in window:
        out["energy_note"] = ("the timed window did not complete (its counters are read at the first line after the "
                              "warm-up and at the last iteration's line)")
        return out
    t0, t1 = window["start"]["t"], window["end"]["t"]
    iters = window["end"]["iteration"] - window["start"]["iteration"]
    per_node: dict[str, Any] = {}
    for node, d in docs.items():
        joules = energy.window_joules(d, t0, t1)
        if joules is None:
            out["energy_note"] = f"{node}: its energy samples do not cover the timed window"
            return out
        per_node[node] = {"energy_j": round(sum(joules[k] for k in d["counted"]), 3),
                          "domains": {k: round(v, 3) for k, v in joules.items()}}
    total = sum(n["energy_j"] for n in per_node.values())
    if total <= 0 or iters <= 0 or t1 <= t0:
        out["energy_note"] = (f"the counters did not advance over the window ({total:g} J, {iters} iteration(s), "
                              f"{t1 - t0:.3g} s): not a measurement")
        return out
    out.update(energy_j_per_node=per_node, energy_j=total)
    out.update(energy_j_per_iter=total / iters, tokens_per_j=tokens_per_iter * iters / total,
               avg_power_w=total / (t1 - t0))
    scope = [f"{iters} iteration(s) ({window['start']['iteration'] + 1}..{window['end']['iteration']}) "
             f"on {len(per_node)} node(s)"]
    if any("rapl" in (d.get("source") or "") for d in docs.values()):
        scope.append("RAPL counts CPU packages and DRAM, not the whole node")
    if len(docs) > 1:
        scope.append("other nodes interpolated between their samples")
    problems = [p for d in docs.values() for p in d.get("problems") or []]
    out["energy_note"] = "; ".join(scope + problems[:3])
    return out
