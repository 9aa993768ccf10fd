"""Presets as they come out on this machine: `kit run RECIPE --preset P` for each preset,
alternating (P1 P2 P3, then reversed, ...), per-iteration time (the bundle's sec_per_iter:
median after warm-up) and peak memory (the bundle's peak_mem_mib), medians over rounds.

On a workstation, frequency and retention state are recorded as requested-not-applied, so
`tuned` differs from `baseline` here by the allocator only (tcmalloc via LD_PRELOAD).

    python benchmarks/bench_presets.py --presets baseline,tcmalloc,tuned --rounds 3 \\
        --json benchmarks/results/presets.json
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, alternating, load, machine, median, preset_parser, write_json  # noqa: E402
from bench_overhead import kit_cmd, newest  # noqa: E402


def main() -> int:
    p = preset_parser(__doc__, "--rounds", 3)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.sets = 1, [*a.sets, "train.iters=3", "train.warmup_iters=1"]
    presets = a.presets.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="kit-bench-presets-"))
    res: dict[str, list[dict]] = {pr: [] for pr in presets}
    for rnd, pr in alternating(presets, a.rounds):
        out = tmp / pr
        r = subprocess.run(kit_cmd(a.recipe, pr, a.sets, out), cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            print(pr, "failed:", r.stdout[-2000:], r.stderr[-2000:])
            return 1
        b = newest(out)
        s = json.loads((b / "metrics.json").read_text())["summary"]
        prov = json.loads((b / "provenance.json").read_text())
        alloc = next((x.get("seen") for x in prov.get("plan", {}).get("settings", []) if x.get("name") == "allocator"), None)
        res[pr].append({"sec_per_iter": s.get("sec_per_iter"), "peak_mem_mib": s.get("peak_mem_mib"),
                        "allocator_seen": alloc, "load": load()})
        print(f"round {rnd} {pr}: {s.get('sec_per_iter')} s/it, peak {s.get('peak_mem_mib')} MiB, "
              f"allocator {alloc}, load {res[pr][-1]['load']}", flush=True)
    summary = {}
    base = presets[0]
    for pr, rows in res.items():
        spi = median([r["sec_per_iter"] for r in rows])
        mem = median([r["peak_mem_mib"] for r in rows])
        summary[pr] = {"median_sec_per_iter": round(spi, 4), "median_peak_mem_mib": round(mem, 1)}
    for pr in presets:
        summary[pr]["time_vs_" + base] = round(summary[pr]["median_sec_per_iter"] / summary[base]["median_sec_per_iter"], 3)
        summary[pr]["mem_vs_" + base] = round(summary[pr]["median_peak_mem_mib"] / summary[base]["median_peak_mem_mib"], 3)
    print(json.dumps(summary, indent=1))
    write_json(a.json, {"machine": machine(), "recipe": a.recipe, "sets": a.sets, "runs": res, "summary": summary})
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
