"""From parsed iterations and sampled memory to the table's numbers.

``summarize`` implements the summary rule of each metric declared in ``kit.metricdefs``
(which says, per metric, its unit, its rule, its better direction and where it is shown):
sec/it as the median after the warm-up, TFLOPs by Megatron's formula (``kit.flops``),
peak memory per node as the sum of its ranks' peaks. Its keys are exactly the declared ones.
"""

from __future__ import annotations

import statistics
from typing import Any

from kit import flops, metricdefs
from kit.logparse import IterationRecord


def summarize(records: list[IterationRecord], *, layers: int, hidden: int, seq: int, vocab: int,
              global_batch: int, checkpoint_activations: bool, tp: int, world_size: int,
              ranks_per_node: int, nodes: int, warmup_iters: int,
              rank_peak_rss_mib: dict[str, dict[str, float]] | None = None,
              device_memory: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The metrics summary. Values that were not measured are None, never estimated."""
    timed = [r for r in records if r.iteration > warmup_iters and r.elapsed_s is not None]
    summary: dict[str, Any] = dict.fromkeys(metricdefs.summary_keys())
    summary.update(iterations_logged=len(records), iterations_timed=len(timed), warmup_iters=warmup_iters,
                   final_loss=records[-1].fields.get("loss") if records else None,
                   world_size=world_size, ranks_per_node=ranks_per_node, nodes=nodes)
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
    if rank_peak_rss_mib:
        per_node = {node: round(sum(ranks.values()), 1) for node, ranks in rank_peak_rss_mib.items()}
        summary["peak_mem_mib_per_node"] = per_node
        summary["peak_mem_mib"] = max(per_node.values()) if per_node else None
    for field in ("allocated", "reserved"):
        seen = [d[f"max_{field}"] for d in (device_memory or {}).values() if f"max_{field}" in d]
        summary[f"device_peak_{field}_mib"] = max(seen) if seen else None
    return summary
