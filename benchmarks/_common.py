"""Shared helpers for the benchmark scripts: machine description, load, medians, JSON output,
and the presets benchmarks' options and alternating order (bench_presets, bench_repeats)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                fl = line.split(":", 1)[1].split()
                return sorted(f for f in fl if f.startswith(("amx", "avx512_bf16", "avx512f", "sve")))
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    import psutil

    return {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "flags": cpu_flags(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_start": os.getloadavg()}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_json(path: str | None, doc: dict[str, Any]) -> None:
    doc.setdefault("command", " ".join([Path(sys.executable).name, *sys.argv]))
    doc.setdefault("git", git_rev())
    doc.setdefault("loadavg_end", os.getloadavg())
    text = json.dumps(doc, indent=2, default=str)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text if os.environ.get("BENCH_PRINT_JSON") else f"json -> {path or '(not written)'}")


def preset_parser(doc: str | None, rounds: str, default_rounds: int) -> argparse.ArgumentParser:
    """The options of a benchmark that runs presets in rounds: --recipe, --presets, --set,
    ``rounds`` (its name, e.g. ``--rounds``) and --json."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--presets", default="baseline,tcmalloc,tuned")
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument(rounds, type=int, default=default_rounds)
    p.add_argument("--json", default=None)
    return p


def alternating(presets: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, preset): every preset once a round, the order reversed every other round, so a
    change in the host's load falls on all presets alike."""
    for rnd in range(rounds):
        for pr in (presets if rnd % 2 == 0 else presets[::-1]):
            yield rnd, pr
