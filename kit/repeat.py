"""Repeats: one plan run N times as a group (``kit run --repeat N``, ``kit noise``: the group
as the host's noise floor, stored by :mod:`kit.noise`).

Each repeat is an ordinary bundle; their manifests share a ``group`` id and they live in
one directory, ``OUT/<group id>/``, so the group can be named by its path (``kit compare
results/<group-a> results/<group-b>``) and ``kit report`` shows it as one row (median and
spread). Runs follow one another (never side by side: they would slow each other down);
``spread_s`` spaces their starts evenly over that many seconds, so that the repeats see the
host at different times, not one quiet (or busy) stretch. An interrupted repeat stops the
group, and so does Ctrl-C while waiting between runs; a failed one does not (the others
still measure).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod, noise, runner
from kit.errors import EXIT_INTERRUPTED, KitError
from kit.outcome import Outcome
from kit.plan import Plan
from kit.results import VerificationFailed
from kit.results.judge import load_side
from kit.results.store import dotted
from kit.textsafe import terminal


def new_group_id(plan: Plan) -> str:
    return "group-" + bundle_mod.new_id(plan.recipe_name, plan.preset.name)


@dataclass
class GroupOutcome:
    group: str
    path: Path
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C between two runs

    @property
    def exit_code(self) -> int:
        """The first repeat's non-zero exit code (interrupted first), else 0."""
        codes = [o.exit_code for o in self.outcomes]
        if self.interrupted or EXIT_INTERRUPTED in codes:
            return EXIT_INTERRUPTED
        return next((c for c in codes if c), 0)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, where: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``; at most the noise record's
    ``MAX_AGE_DAYS`` (runs spread longer would age out of the record as they are made)."""
    m = _DURATION.match(text or "")
    if not m:
        raise KitError(f"{text!r} is not a duration", where=where, fix="give seconds or a number with s, m, h or d, e.g. 30m")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds > noise.MAX_AGE_DAYS * 86400:
        raise KitError(f"{text} is longer than {noise.MAX_AGE_DAYS} days", where=where,
                       fix=f"spread the runs over {noise.MAX_AGE_DAYS}d or less")
    return seconds


def run_group(plan: Plan, n: int, out: Path, console: Console, *, group: str | None = None,
              extra_files: dict[str, Any] | None = None, spread_s: float = 0.0) -> GroupOutcome:
    """Run ``plan`` ``n`` times into ``out/<group>/``, each a bundle whose manifest names the
    group; with ``spread_s``, run i starts (i-1) * spread_s / (n-1) seconds after the first
    (or as soon as the run before it ends, if that is later)."""
    group = group or new_group_id(plan)
    res = GroupOutcome(group=group, path=out / group)
    first = time.monotonic()
    for i in range(1, n + 1):
        if spread_s and i > 1:
            wait = first + (i - 1) * spread_s / (n - 1) - time.monotonic()
            if wait > 0:
                console.print(f"waiting {wait / 60:.1f} min before repeat {i}/{n} (--spread)", highlight=False, markup=False)
                try:
                    time.sleep(wait)
                except KeyboardInterrupt:
                    console.print("interrupted while waiting: the group stops here", highlight=False, markup=False)
                    res.interrupted = True
                    break
        console.print(f"repeat {i}/{n} of group {group}", highlight=False, markup=False)
        o = runner.run(plan, res.path, console, extra_files=extra_files, group=group)
        res.outcomes.append(o)
        if o.status == "interrupted":
            break
    console.print(f"group: {res.path} ({sum(o.status == 'ok' for o in res.outcomes)} of {n} ok)", highlight=False,
                  markup=False, soft_wrap=True)
    return res


def _store(host: str, plan_recipe: str, recipe_sha256: str, new: dict[str, Any], reset: bool,
           console: Console) -> Path:
    rec, path = noise.update(host=host, recipe=plan_recipe, recipe_sha256=recipe_sha256, new=new, reset=reset)
    console.print(noise.describe(rec), highlight=False, markup=False, soft_wrap=True)
    console.print(f"stored: {terminal(str(path))}", highlight=False, markup=False, soft_wrap=True)
    return path


def measure_noise(plan: Plan, n: int, out: Path, console: Console, *, spread_s: float = 0.0,
                  reset: bool = False) -> tuple[GroupOutcome, Path | None]:
    """``kit noise``: ``n`` identical runs as a group, added as one session to this host's
    noise record for the recipe (:mod:`kit.noise`); the path is None when no run finished."""
    g = run_group(plan, n, out, console, spread_s=spread_s)
    runs, host = [], None
    for o in g.outcomes:
        if o.status != "ok":
            continue
        host = host or (bundle_mod.load_json(o.bundle.path, "provenance.json").get("host") or {}).get("hostname")
        started = bundle_mod.load_json(o.bundle.path, "manifest.json").get("created")
        runs.append({"bundle": o.bundle.id, "started": started, **{m: o.summary.get(m) for m in noise.METRICS}})
    if not runs:
        return g, None
    new = noise.session(presets=plan.preset_names, group=g.group, runs=runs)
    return g, _store(str(host or "unknown"), plan.recipe_name, plan.summary()["recipe_sha256"], new, reset, console)


_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,200}$")


def noise_from(plan: Plan, paths: list[Path], console: Console, *, reset: bool = False) -> Path:
    """``kit noise --from``: finished runs already made (each path a bundle or a group's
    directory, read and verified by :func:`kit.results.judge.load_side`) added as one session
    to the record of the host they ran on (a compute node's, when they ran in batch jobs).
    They must be this recipe as resolved, of one host and one preset; a run named twice counts
    once; anything else is refused in one line."""
    sha = plan.summary()["recipe_sha256"]
    where_all = " ".join(map(str, paths))
    runs, presets, groups, hosts, seen = [], set(), set(), set(), set()
    for p in paths:
        try:
            side = load_side(p)
        except VerificationFailed as e:
            raise KitError(f"does not verify ({terminal(e.problems[0]) if e.problems else 'see kit bundle verify'})",
                           where=str(p), fix="give bundles as the kit wrote them (kit bundle verify PATH says what is wrong)")
        for d in side.ok:
            where = f"{p}: {d.path.name}"
            if dotted(d.provenance, "plan.recipe_sha256") != sha:
                raise KitError("a run of another recipe (or the recipe with other values)", where=where,
                               fix=f"give runs of {plan.recipe_name} with the same --set values, or other --set values")
            preset, host = d.manifest.get("preset"), dotted(d.provenance, "host.hostname")
            if not (isinstance(preset, str) and _NAME.match(preset) and isinstance(host, str) and _NAME.match(host)):
                raise KitError("its preset or host name is not a plain name", where=where,
                               fix="give runs made by the kit with the named presets")
            if str(d.id) in seen:
                continue
            seen.add(str(d.id))
            presets.add(preset)
            hosts.add(host)
            groups.add(str(d.manifest.get("group") or d.id))
            runs.append({"bundle": str(d.id), "started": str(d.manifest.get("created")),
                         **{m: dotted(d.metrics, f"summary.{m}") for m in noise.METRICS}})
    if not runs:
        raise KitError("no finished run found", where=where_all, fix="name bundles or groups whose status is ok")
    if len(presets) > 1:
        raise KitError(f"runs of several presets ({', '.join(sorted(presets))})", where=where_all,
                       fix="one preset per --from: identical runs only")
    if len(hosts) > 1:
        raise KitError(f"runs of several hosts ({', '.join(sorted(hosts))})", where=where_all,
                       fix="one host per --from: a floor is a host's")
    new = noise.session(presets=sorted(presets)[0].split("+"), group=",".join(sorted(groups)), runs=runs)
    return _store(hosts.pop(), plan.recipe_name, sha, new, reset, console)
