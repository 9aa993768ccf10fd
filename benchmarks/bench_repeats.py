"""Repeats of presets, alternated, each preset's runs one group (kit.repeat's layout): the
input of BENCHMARKS.md's verdicts section. Round r runs every preset once (the order
reversed every other round), so a change in the host's load falls on all presets alike.

    python benchmarks/bench_repeats.py --presets baseline,tcmalloc,tuned --repeat 5 \\
        --out /tmp/kit-bench-repeats --json benchmarks/results/repeats.json
    kit compare /tmp/kit-bench-repeats/<group-baseline> /tmp/kit-bench-repeats/<group-tcmalloc>

Each group is OUT/<group id>/ as `kit run --repeat` writes it; `kit report OUT` shows one
row per group.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternating, load, machine, preset_parser, write_json  # noqa: E402

from kit import plan as plan_mod, repeat, runner  # noqa: E402


def main() -> int:
    p = preset_parser(__doc__, "--repeat", 5)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    presets = a.presets.split(",")
    started = machine()  # the machine and its load when the runs start, not when they end
    plans = {pr: plan_mod.resolve(recipe_name=a.recipe, overrides=a.sets, preset_names=[pr]) for pr in presets}
    groups = {pr: repeat.new_group_id(plans[pr]) for pr in presets}
    runs: dict[str, list[dict]] = {pr: [] for pr in presets}
    for rnd, pr in alternating(presets, a.repeat):
        before = load()
        o = runner.run(plans[pr], a.out / groups[pr], Console(file=io.StringIO()), group=groups[pr])
        s = o.summary or {}
        runs[pr].append({"bundle": o.bundle.id, "status": o.status, "sec_per_iter": s.get("sec_per_iter"),
                         "peak_mem_mib": s.get("peak_mem_mib"), "load_before": before, "load_after": load()})
        print(f"round {rnd} {pr}: {o.status} {s.get('sec_per_iter')} s/it, load {before}-{load()}", flush=True)
        if o.status != "ok":
            return 1
    print(json.dumps({pr: str(a.out / g) for pr, g in groups.items()}, indent=1))
    write_json(a.json, {"machine": started, "recipe": a.recipe, "sets": a.sets, "groups": groups, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
