"""Repeats: one plan run N times as a group (``kit run --repeat N``, ``kit noise``: the group
as the host's noise floor, stored by :mod:`kit.noise`).

Each repeat is an ordinary bundle; their manifests share a ``group`` id and they live in
one directory, ``OUT/<group id>/``, so the group can be named by its path (``kit compare
results/<group-a> results/<group-b>``) and ``kit report`` shows it as one row (median and
spread). Runs follow one another (never side by side: they would slow each other down).
An interrupted repeat stops the group; a failed one does not (the others still measure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod, noise, runner
from kit.errors import EXIT_INTERRUPTED
from kit.outcome import Outcome
from kit.plan import Plan


def new_group_id(plan: Plan) -> str:
    return "group-" + bundle_mod.new_id(plan.recipe_name, plan.preset.name)


@dataclass
class GroupOutcome:
    group: str
    path: Path
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first repeat's non-zero exit code (interrupted first), else 0."""
        codes = [o.exit_code for o in self.outcomes]
        if EXIT_INTERRUPTED in codes:
            return EXIT_INTERRUPTED
        return next((c for c in codes if c), 0)


def run_group(plan: Plan, n: int, out: Path, console: Console, *, group: str | None = None,
              extra_files: dict[str, Any] | None = None) -> GroupOutcome:
    """Run ``plan`` ``n`` times into ``out/<group>/``, each a bundle whose manifest names the group."""
    group = group or new_group_id(plan)
    res = GroupOutcome(group=group, path=out / group)
    for i in range(1, n + 1):
        console.print(f"repeat {i}/{n} of group {group}", highlight=False, markup=False)
        o = runner.run(plan, res.path, console, extra_files=extra_files, group=group)
        res.outcomes.append(o)
        if o.status == "interrupted":
            break
    console.print(f"group: {res.path} ({sum(o.status == 'ok' for o in res.outcomes)} of {n} ok)", highlight=False,
                  markup=False, soft_wrap=True)
    return res


def measure_noise(plan: Plan, n: int, out: Path, console: Console) -> tuple[GroupOutcome, Path | None]:
    """``kit noise``: ``n`` identical runs as a group, their spread stored as this host's noise
    floor for the recipe (:mod:`kit.noise`); the path is None when fewer than 2 runs finished."""
    g = run_group(plan, n, out, console)
    runs, host = [], None
    for o in g.outcomes:
        if o.status != "ok":
            continue
        host = host or (bundle_mod.load_json(o.bundle.path, "provenance.json").get("host") or {}).get("hostname")
        runs.append({"bundle": o.bundle.id, **{m: o.summary.get(m) for m in noise.METRICS}})
    if len(runs) < 2:
        return g, None
    summary = plan.summary()
    rec = noise.make_record(host=host or "unknown", recipe=plan.recipe_name, recipe_sha256=summary["recipe_sha256"],
                            presets=plan.preset_names, group=g.group, runs=runs)
    path = noise.save(rec)
    console.print(noise.describe(rec), highlight=False, markup=False, soft_wrap=True)
    console.print(f"stored: {path}", highlight=False, markup=False, soft_wrap=True)
    return g, path
