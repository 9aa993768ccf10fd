"""Every metric the kit reports, declared once (as Ramble declares a figure of merit).

Two kinds of declaration:

- ``LogField``: a per-iteration field of a Megatron-DeepSpeed log line (``kit.logparse``):
  how the log spells it, the key it is stored under in ``metrics.json``'s ``iterations``,
  and its unit.
- ``Metric``: a value of ``metrics.json``'s ``summary``: its unit, the rule that summarizes
  it (``kit.metrics.summarize`` implements the rule; ``origin`` says who sets it), which
  direction is better, the row column that carries it (``kit.table.row_fields``, the
  report's CSV/JSON, the sweep table's cell format), and how ``kit compare``, ``kit bundle
  show`` and ``kit reproduce`` treat it.

Everything that lists metrics reads these tuples: the parser's name map, the summary's
keys, compare's metric list and better direction, show's metric line, the report's
columns and charts, and reproduce's checks. Adding a metric is one declaration here (plus
its rule in ``kit.metrics`` when the summary computes it) and its tests.

This module imports nothing from the kit, so every layer (``logparse`` and the monitor at
the bottom, ``results`` at the top) may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LogField:
    key: str  # the key in metrics.json's per-iteration records
    names: tuple[str, ...]  # how the log line spells it, lower case, before the ":"
    unit: str = ""


#: Megatron-DeepSpeed's iteration line (and the built-in workload's). Fields not listed here
#: are still kept, under their name in snake case.
LOG_FIELDS: tuple[LogField, ...] = (
    LogField("consumed_samples", ("consumed samples",), "samples"),
    LogField("consumed_tokens", ("consumed tokens",), "tokens"),
    LogField("elapsed_ms", ("elapsed time per iteration (ms)",), "ms"),
    LogField("lr", ("learning rate",)),
    LogField("global_batch", ("global batch size",), "samples"),
    LogField("loss", ("lm loss",)),
    LogField("loss_scale", ("loss scale",)),
    LogField("grad_norm", ("grad norm",)),
    LogField("skipped", ("number of skipped iterations",), "iterations"),
    LogField("nan_iters", ("number of nan iterations",), "iterations"),
    LogField("samples_per_sec", ("samples per second",), "samples/s"),
    LogField("tflops", ("tflops",), "TFLOP/s"),
    LogField("seq", ("actual seqlen",), "tokens"),
)


def log_names() -> dict[str, str]:
    """How the log spells a field -> the key it is stored under (``kit.logparse``)."""
    return {name: f.key for f in LOG_FIELDS for name in f.names}


# -- cell formats of the sweep table (shared/reference/fugaku-config-sweep.md) ---------------
def _cell_mem(v: float) -> str:
    return f"{v:.1f} MiB"


def _cell_sec(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.3f}"


def _cell_tflops(v: float) -> str:
    return f"{v:.2f}" if v >= 0.01 else f"{v:.4f}"


def _cell_pflops(v: float) -> str:
    return f"{v:.4f}" if v >= 0.0001 else f"{v:.2e}"


def _cell_3g(v: float) -> str:
    return f"{v:.3g}"


#: how ``kit reproduce`` judges a metric of each kind (the tolerance is given per kind):
#: ``ratio``: max(new/old, old/new) - 1, symmetric, so a time and its inverse always agree;
#: ``relative``: |new - old| / |old|; ``absolute``: |new - old|.
Judge = Literal["ratio", "relative", "absolute"]
REPRODUCE_KINDS: dict[str, Judge] = {"timing": "ratio", "memory": "relative", "loss": "absolute"}


@dataclass(frozen=True)
class Metric:
    name: str  # the key in metrics.json's summary
    unit: str
    rule: str  # how the summary value is obtained from what was measured
    label: str = ""  # short human name (compare, reproduce, plots); the name when empty
    better: Literal["lower", "higher"] | None = None  # None: a change is not a verdict
    origin: Literal["summarize", "finalize"] = "summarize"  # who sets it
    column: str | None = None  # the row field carrying it (table.row_fields, report CSV/JSON)
    finished_only: bool = False  # the row leaves it empty unless the run finished (timing)
    cell: Callable[[float], str] | None = None  # its cell in the sweep table's markdown, if it has one
    chart: str | None = None  # file name of its bar chart in ``kit report --plot``
    compare: bool = False  # listed (with its change) by ``kit compare``
    show: bool = False  # listed by ``kit bundle show``
    reproduce: Literal["timing", "memory", "loss"] | None = None  # checked by ``kit reproduce``
    #: how ``kit compare`` judges it (``kit.results.judge``): ``timing``, the verdict over runs or
    #: iterations (one such metric); ``rate``, a rate of that timing, judged with it (inverted);
    #: ``memory``, over runs or against the noise floor. ``timing`` and ``memory`` metrics are the
    #: ones ``kit noise`` stores a floor for. Others: judged by their direction, or shown.
    judged: Literal["timing", "rate", "memory"] | None = None
    required: bool = False  # a run the launcher ended well is ``ok`` only if this was measured
    kind: Literal["number", "text", "mapping"] = "number"  # what a bundle's reader accepts (or null)

    @property
    def title(self) -> str:
        return self.label or self.name


METRICS: tuple[Metric, ...] = (
    Metric("iterations_logged", "iterations", "iteration lines in the log (a repeated number counts once)",
           column="iterations_logged", show=True),
    Metric("iterations_timed", "iterations", "logged iterations after the warm-up that carry an elapsed time",
           better="higher", compare=True),
    Metric("warmup_iters", "iterations", "the recipe's warm-up iterations, left out of the timing"),
    Metric("sec_per_iter", "s", "median of the elapsed time per iteration (ms / 1000) after the warm-up",
           label="sec/it", better="lower", column="sec_per_iter", finished_only=True, cell=_cell_sec,
           chart="sec_per_iter.png", compare=True, show=True, reproduce="timing", judged="timing", required=True),
    Metric("sec_per_iter_min", "s", "fastest timed iteration", better="lower", compare=True),
    Metric("sec_per_iter_max", "s", "slowest timed iteration", better="lower", compare=True),
    Metric("tflops", "TFLOP/s", "Megatron's formula (kit.flops) on sec/it, per node", label="TFLOPs",
           better="higher", column="tflops", finished_only=True, cell=_cell_tflops, chart="tflops.png",
           compare=True, show=True, reproduce="timing", judged="rate"),
    Metric("tflops_per_rank", "TFLOP/s", "Megatron's formula on sec/it, per rank", better="higher", compare=True,
           judged="rate"),
    Metric("est_aggr_pflops", "PFLOP/s", "TFLOPs per node times the node count / 1000", better="higher",
           column="est_aggr_pflops", finished_only=True, cell=_cell_pflops, compare=True, show=True, judged="rate"),
    Metric("flops_per_iter", "FLOP", "Megatron's formula: floating-point operations of one iteration"),
    Metric("samples_per_sec", "samples/s", "global batch / sec/it", better="higher", compare=True, show=True,
           judged="rate"),
    Metric("tokens_per_sec", "tokens/s", "global batch x sequence length / sec/it", better="higher", compare=True,
           show=True, judged="rate"),
    Metric("peak_mem_mib", "MiB", "per node, the sum over its ranks of each rank's peak RSS (process tree); "
           "the largest node", label="peak memory", better="lower", column="mem_mib", cell=_cell_mem,
           chart="memory.png", compare=True, show=True, reproduce="memory", judged="memory", required=True),
    Metric("peak_mem_mib_per_node", "MiB", "per node, the sum over its ranks of each rank's peak RSS", kind="mapping"),
    Metric("program_mem_used_mib", "MiB", "largest 'CPU memory (MB) | used' the program printed (DeepSpeedFugaku: "
           "psutil's used memory of the whole node, other processes included); None when it prints none"),
    Metric("mem_column", "", "which summary value the table's Mem column shows (peak_mem_mib)", kind="text"),
    Metric("iterations_skipped", "iterations", "sum of Megatron's 'number of skipped iterations' (left out of timing)"),
    Metric("iterations_nan", "iterations", "sum of Megatron's 'number of nan iterations' (left out of timing)"),
    Metric("not_measured", "", "for each figure left None, why (never 0 in its place)", kind="mapping"),
    Metric("device_peak_allocated_mib", "MiB", "largest 'max allocated' of any rank's CUDA memory report; "
           "None on CPUs"),
    Metric("device_peak_reserved_mib", "MiB", "largest 'max reserved' of any rank's CUDA memory report; "
           "None on CPUs", column="device_mem_mib"),
    Metric("final_loss", "", "the lm loss of the last logged iteration", label="final loss", column="final_loss",
           compare=True, show=True, reproduce="loss"),
    Metric("energy_j", "J", "sum over the nodes of each node's counted energy (RAPL package and DRAM, each "
           "GPU's NVML counter, or the Fujitsu Power API's measured node energy) from the timed window's first "
           "line (end of warm-up) to its last; None with energy_note when not exposed", label="energy",
           better="lower", column="energy_j", finished_only=True, compare=True),
    Metric("energy_j_per_iter", "J/it", "energy_j / the iterations in the timed window", label="J/it",
           better="lower", column="j_per_iter", finished_only=True, cell=_cell_3g, compare=True, show=True),
    Metric("tokens_per_j", "tokens/J", "global batch x sequence length x iterations in the window / energy_j",
           label="tokens/J", better="higher", column="tokens_per_j", finished_only=True, cell=_cell_3g, compare=True,
           show=True),
    Metric("avg_power_w", "W", "energy_j / the timed window's wall time", label="average power",
           column="avg_power_w", finished_only=True, compare=True),
    Metric("energy_j_per_node", "J", "per node, its counted energy in the window and each domain's", kind="mapping"),
    Metric("energy_source", "", "which counters were read on the nodes", column="energy_source", kind="text"),
    Metric("energy_note", "", "why energy is None, or what the counted energy covers", column="energy_note",
           kind="text"),
    Metric("world_size", "ranks", "the plan's world size"),
    Metric("ranks_per_node", "ranks", "the plan's ranks per node"),
    Metric("nodes", "nodes", "the plan's node count"),
    Metric("duration_s", "s", "wall time from the launcher's start to its end", better="lower", origin="finalize",
           compare=True, show=True),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def summary_keys() -> tuple[str, ...]:
    """The keys ``kit.metrics.summarize`` produces, in declaration order."""
    return tuple(m.name for m in METRICS if m.origin == "summarize")


def compared() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.compare)


def shown() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.show)


def reproduced() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.reproduce)


def judged(how: str) -> tuple[Metric, ...]:
    """The metrics ``kit compare`` judges as ``how`` (timing, rate, memory)."""
    return tuple(m for m in METRICS if m.judged == how)


def required() -> tuple[str, ...]:
    """The figures without which a run is not ``ok`` (``kit.finalize``)."""
    return tuple(m.name for m in METRICS if m.required)


def columns() -> tuple[Metric, ...]:
    """Metrics carried by a row (``kit.table.row_fields``), in declaration order."""
    return tuple(m for m in METRICS if m.column)


def charted() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.chart)


def cell(name: str, value: float | None) -> str:
    """The metric's cell in the sweep table: ``-`` for a value not measured."""
    m = BY_NAME[name]
    return "-" if value is None else (m.cell(value) if m.cell else f"{value}")
