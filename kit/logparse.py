"""Parse Megatron-DeepSpeed's per-iteration log lines (the built-in workload prints the same).

    iteration       10/     100 | consumed samples: 10240 | elapsed time per iteration (ms): 1489700.0 |
    learning rate: 1.000E-04 | global batch size:  1024 | lm loss: 7.9E+00 | ... |
    samples per second: 0.687 | TFLOPs: 0.56 |

Lines may carry a launcher prefix (``[default0]:``, ``0:``, ``[1,0]<stdout>:``) and
fields may be missing or reordered; every ``name: value`` pair between ``|`` is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ()/_.-]*?)\s*:\s*([-+0-9.eEinfnaINFNA]+)\s*$")
_MEM = re.compile(r"CPU memory \(MB\)\s*\|\s*used:\s*([\d.]+)")

_NAMES = {
    "consumed samples": "consumed_samples",
    "consumed tokens": "consumed_tokens",
    "elapsed time per iteration (ms)": "elapsed_ms",
    "learning rate": "lr",
    "global batch size": "global_batch",
    "lm loss": "loss",
    "loss scale": "loss_scale",
    "grad norm": "grad_norm",
    "number of skipped iterations": "skipped",
    "number of nan iterations": "nan_iters",
    "samples per second": "samples_per_sec",
    "tflops": "tflops",
    "actual seqlen": "seq",
}


@dataclass
class IterationRecord:
    iteration: int
    total: int
    fields: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float | None:
        ms = self.fields.get("elapsed_ms")
        return None if ms is None else ms / 1000.0

    def as_dict(self) -> dict[str, float | int]:
        return {"iteration": self.iteration, **self.fields}


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
        key = _NAMES.get(name, re.sub(r"[^a-z0-9]+", "_", name).strip("_"))
        try:
            rec.fields[key] = float(fm.group(2))
        except ValueError:
            continue
    return rec


def parse_memory_mb(line: str) -> float | None:
    """Megatron's psutil memory report (``CPU memory (MB) | used: X``), if the line is one."""
    m = _MEM.search(line)
    return float(m.group(1)) if m else None


def parse_lines(lines) -> list[IterationRecord]:
    """All iteration records, last one wins for a repeated iteration number."""
    by_iter: dict[int, IterationRecord] = {}
    for line in lines:
        rec = parse_line(line)
        if rec is not None:
            by_iter[rec.iteration] = rec
    return [by_iter[k] for k in sorted(by_iter)]
