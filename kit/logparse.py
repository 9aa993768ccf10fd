"""Parse Megatron-DeepSpeed's per-iteration log lines (the built-in workload prints the same).

    iteration       10/     100 | consumed samples: 10240 | elapsed time per iteration (ms): 1489700.0 |
    learning rate: 1.000E-04 | global batch size:  1024 | lm loss: 7.9E+00 | ... |
    samples per second: 0.687 | TFLOPs: 0.56 |

Lines may carry a launcher prefix (``[default0]:``, ``0:``, ``[1,0]<stdout>:``) and
fields may be missing or reordered; every ``name: value`` pair between ``|`` is kept.
The iteration time comes in milliseconds (Megatron-DeepSpeed, DeepSpeedFugaku) or seconds
(``elapsed time per iteration (s): 15.23``, other forks); it is kept as ``elapsed_ms``.
An iteration Megatron skipped (loss scale overflow) or found NaN in says so in its
counters; it is not an iteration to time (:attr:`IterationRecord.untimed`), and neither is
one whose loss is ``nan``/``inf``. Non-finite values are not kept as numbers (a bundle
holds finite JSON numbers only): the record names them in ``nonfinite``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from kit import metricdefs

_ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ()/_.-]*?)\s*:\s*([-+0-9.eEinfnaINFNA]+)\s*$")
# Megatron's report_memory: "[Rank 3] (after 10 iterations) memory (MB) | allocated: 1.5 |
# max allocated: 2.0 | reserved: 4.0 | max reserved: 4.0" (CUDA caching allocator), and the
# psutil variant some forks print: "[Rank 0] CPU memory (MB) | used: 7718.0 | ...".
_MEM = re.compile(r"\b(CPU )?memory \(MB\)\s*((?:\|[^|]*)+)$")
_RANK = re.compile(r"\[Rank (\d+)\]")

_NAMES = metricdefs.log_names()  # how the log spells a field -> its key (kit.metricdefs.LOG_FIELDS)


# -- units and iteration quality (issue 16) ---------------------------------------------------
#: other forks' spellings of a field: (canonical key, factor to the canonical unit)
_SCALED = {"elapsed time per iteration (s)": ("elapsed_ms", 1000.0)}
#: counters that, when non-zero, make the iteration(s) they cover unfit for timing
UNTIMED_COUNTERS = {"skipped": "skipped", "nan_iters": "NaN"}


@dataclass
class IterationRecord:
    iteration: int
    total: int
    fields: dict[str, float] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)  # fields logged as nan/inf (not in ``fields``)

    @property
    def elapsed_s(self) -> float | None:
        ms = self.fields.get("elapsed_ms")
        return None if ms is None else ms / 1000.0

    @property
    def untimed(self) -> str | None:
        """Why this iteration is left out of timing ("skipped", "NaN"), or None."""
        for key, why in UNTIMED_COUNTERS.items():
            if self.fields.get(key):
                return why
        return "NaN" if "loss" in self.nonfinite else None

    def as_dict(self) -> dict[str, float | int | list[str]]:
        out: dict[str, float | int | list[str]] = {"iteration": self.iteration, **self.fields}
        if self.nonfinite:
            out["nonfinite"] = list(self.nonfinite)
        return out


def parse_line(line: str) -> IterationRecord | None:
    """An iteration record from one log line, or None if the line is not one."""
    m = _ITER.search(line)
    if not m:
        return None
    rec = IterationRecord(iteration=int(m.group(1)), total=int(m.group(2)))
    for part in line[m.end():].split("|"):
        fm = _FIELD.match(part)
        if not fm:
            continue
        name = fm.group(1).strip().lower()
        key, factor = _SCALED.get(name, (None, 1.0))
        key = key or _NAMES.get(name, re.sub(r"[^a-z0-9]+", "_", name).strip("_"))
        try:
            value = float(fm.group(2)) * factor
        except ValueError:
            continue
        if math.isfinite(value):
            rec.fields[key] = value
        else:  # a bundle holds finite numbers only: the field is named, not stored
            rec.nonfinite.append(key)
    return rec


@dataclass
class MemoryReport:
    rank: int | None  # the "[Rank N]" prefix, when the line has one
    device: str  # "cuda" (report_memory) or "cpu" (the psutil variant)
    fields: dict[str, float]  # MiB: allocated, max_allocated, reserved, max_reserved; or used, ...


def parse_memory_report(line: str) -> MemoryReport | None:
    """A Megatron memory report line (see ``_MEM``), if the line is one."""
    m = _MEM.search(line)
    if not m:
        return None
    fields: dict[str, float] = {}
    for part in m.group(2).split("|"):
        name, sep, value = part.partition(":")
        if not sep:
            continue
        try:
            fields[re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")] = float(value)
        except ValueError:
            continue
    if not fields:
        return None
    rank = _RANK.search(line, 0, m.start())
    return MemoryReport(rank=int(rank.group(1)) if rank else None,
                        device="cpu" if m.group(1) else "cuda", fields=fields)


def device_memory_peaks(lines, device: str = "cuda") -> dict[str, dict[str, float]]:
    """Per rank ("unlabelled" without a ``[Rank N]`` prefix), the largest value of each field
    of the ``device`` memory reports in ``lines``: "cuda" (report_memory's allocated /
    reserved; {} on a CPU run) or "cpu" (the node's ``used`` / ``total`` that DeepSpeedFugaku
    prints from psutil, one data-parallel rank 0 per model-parallel group)."""
    peaks: dict[str, dict[str, float]] = {}
    for line in lines:
        rep = parse_memory_report(line)
        if rep is None or rep.device != device:
            continue
        d = peaks.setdefault("unlabelled" if rep.rank is None else str(rep.rank), {})
        for k, v in rep.fields.items():
            d[k] = max(d.get(k, v), v)
    return peaks


def parse_lines(lines) -> list[IterationRecord]:
    """All iteration records, last one wins for a repeated iteration number."""
    by_iter: dict[int, IterationRecord] = {}
    for line in lines:
        rec = parse_line(line)
        if rec is not None:
            by_iter[rec.iteration] = rec
    return [by_iter[k] for k in sorted(by_iter)]
