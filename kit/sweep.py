"""``kit sweep SWEEP.yaml``: a grid of recipes x presets x layouts x nodes, point by point.

A sweep file (strict schema; unknown keys are errors)::

    name: table-single-node
    out: results/table-single-node        # default: results/<name>
    launcher: local                       # or slurm/pjm: points are submitted (kit.jobs)
    set: [train.iters=6]                  # overrides for every point
    grids:                                # each grid is a full product; grids are concatenated
      - recipes: [tiny]
        presets: [baseline, noretention, [boost, tcmalloc]]   # a list entry = presets composed
        layouts:
          - {name: dp1}
          - {name: dp4, set: [parallel.dp=4]}
        nodes: [1]
        set: []                           # overrides for this grid's points
        repeat: 1                         # runs per point (below)

(``recipes``/``presets``/``layouts``/``nodes``/``repeat`` at the top level make one grid.)

Repeats: with ``repeat: N`` (N > 1) each point is run N times, one after another, as a group
(:mod:`kit.repeat`): its bundles share the group id ``<sweep name>-<point key>`` and live in
``OUT/<that id>/``; the report shows the group as one row (median and spread) and ``kit
compare`` takes the directory. ``repeat`` is not part of the point's key: raising it later
runs only the missing repeats.

Each point has a key: the sha256 (16 hex digits) of its recipe, overrides, presets, nodes,
launcher, runtime and image. The key is written into the point's bundle as ``sweep.json``
(before the bundle is finalized, so it is checksummed). Resuming: a point that already has a
bundle with that key which verifies with status ``ok`` is skipped, so is one whose batch
job was submitted and has not finished; a failed or stalled point is run again.

Concurrency: the sweep's state (``OUT/.sweep/<name>.json``) is read and written only under
an ``fcntl`` lock (``OUT/.sweep/<name>.lock``). A point is claimed under the lock before it
runs; another process running the same sweep skips a point claimed by a live process
(same host) and takes over one whose claimant died. Bundle ids are unique, so runs writing
into one directory never mix.

Exit codes: 0 every point ok (or submitted); 1 a point failed, stalled or could not be
planned; 2 bad sweep file; 130 interrupted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from kit import bundle as bundle_mod, bundle_reader, locks, proc
from kit.bundle_reader import BundleReadError
from kit.configfile import load_model
from kit.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, KitError
from kit.results import report as report_mod, store

SWEEP_FILE = "sweep.json"


class Layout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "default"
    set: list[str] = []


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipes: list[str] = Field(min_length=1)
    presets: list[str | list[str]] = Field(min_length=1)
    layouts: list[Layout] = [Layout()]
    nodes: list[int] = [1]
    set: list[str] = []
    repeat: int = Field(1, ge=1)


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    out: str | None = None
    launcher: str = "local"
    runtime: str | None = None
    image: str | None = None
    set: list[str] = []
    job: dict[str, Any] = {}
    force: bool = False  # run points known to hang or fail (kit.known_bad) instead of recording them as refused
    grids: list[Grid] = []
    recipes: list[str] | None = None
    presets: list[str | list[str]] | None = None
    layouts: list[Layout] | None = None
    nodes: list[int] | None = None
    repeat: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_grid_or_many(self):
        top = {k: getattr(self, k) for k in ("recipes", "presets", "layouts", "nodes", "repeat") if getattr(self, k) is not None}
        if top and self.grids:
            raise ValueError("give either grids: [...] or recipes/presets/layouts/nodes/repeat at the top level, not both")
        if top:
            if "recipes" not in top or "presets" not in top:
                raise ValueError("a top-level grid needs recipes: and presets:")
            self.grids = [Grid(**top)]
        if not self.grids:
            raise ValueError("no points: add recipes: and presets: (or grids:)")
        return self


@dataclass
class Point:
    recipe: str
    presets: list[str]
    layout: str
    overrides: list[str]
    nodes: int
    launcher: str
    runtime: str | None
    image: str | None
    repeat: int = 1  # runs of this point (not part of its key)

    def identity(self) -> dict[str, Any]:
        return identity(recipe=self.recipe, overrides=self.overrides, presets=self.presets, nodes=self.nodes,
                        launcher=self.launcher, runtime=self.runtime, image=self.image)

    @property
    def key(self) -> str:
        return point_key(self.identity())

    def group(self, sweep_name: str) -> str | None:
        """The group id of this point's repeats (None: one run, no group)."""
        return f"{sweep_name}-{self.key}" if self.repeat > 1 else None

    def title(self) -> str:
        ov = " ".join(self.overrides)
        return (f"{self.recipe} [{'+'.join(self.presets)}] {self.layout} x{self.nodes}N" + (f" ({ov})" if ov else "")
                + (f" x{self.repeat} runs" if self.repeat > 1 else ""))


def identity(*, recipe: str, overrides: list[str], presets: list[str], nodes: int, launcher: str,
             runtime: str | None, image: str | None) -> dict[str, Any]:
    """What makes a sweep point the same point: one definition for a grid's points and for the
    bundles already in the results directory."""
    return {"recipe": recipe, "overrides": list(overrides), "presets": list(presets), "nodes": int(nodes),
            "launcher": launcher, "runtime": runtime or "host", "image": image}


def point_key(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def load(path: Path) -> SweepFile:
    return load_model(SweepFile, path)


def points(sw: SweepFile, *, launcher: str | None = None) -> list[Point]:
    out: list[Point] = []
    seen: set[str] = set()
    for g in sw.grids:
        for recipe, preset, layout, nodes in itertools.product(g.recipes, g.presets, g.layouts, g.nodes):
            p = Point(recipe=recipe, presets=[preset] if isinstance(preset, str) else list(preset), layout=layout.name,
                      overrides=[*sw.set, *g.set, *layout.set], nodes=nodes, launcher=launcher or sw.launcher,
                      runtime=sw.runtime, image=sw.image, repeat=g.repeat)
            if p.key not in seen:
                seen.add(p.key)
                out.append(p)
    return out


# -- state ------------------------------------------------------------------------------------
@contextmanager
def locked_state(out: Path, name: str) -> Iterator[dict[str, Any]]:
    """The sweep's state document, read and (atomically) rewritten under an exclusive lock."""
    d = out / ".sweep"
    with locks.exclusive(d / f"{name}.lock"):
        sp = d / f"{name}.json"
        try:
            state = json.loads(sp.read_text())
        except (FileNotFoundError, ValueError):
            state = {"name": name, "points": {}}
        yield state
        bundle_mod.atomic_write(sp, bundle_mod.dump_json(state))


def _alive(claim: dict[str, Any]) -> bool:
    """The sweep process that claimed a point is still running (another host: for a day)."""
    gone = proc.gone_here(claim)
    if gone is None:
        return time.time() - claim.get("since", 0) < 24 * 3600
    return not gone


def bundles_by_key(out: Path) -> dict[str, list[Path]]:
    """Bundles under ``out`` (and a group's ``out/<group>/``) by sweep point key (from ``sweep.json``,
    or from ``plan.json`` when absent)."""
    found: dict[str, list[Path]] = {}
    if not out.is_dir():
        return found
    for p in store.find([out], depth=2):
        key = None
        try:  # through the reader's door: the directory may hold imported bundles
            if (p / SWEEP_FILE).exists():
                key = bundle_reader.read_json(p, SWEEP_FILE).get("key")
            elif (p / "plan.json").exists():
                plan = bundle_reader.read_json(p, "plan.json")
                key = point_key(identity(recipe=plan["recipe_name"], overrides=plan.get("overrides", []),
                                         presets=plan["preset_names"], nodes=plan["nodes"], launcher=plan["launcher"],
                                         runtime=plan.get("runtime"), image=plan.get("image")))
        except (BundleReadError, AttributeError, KeyError, TypeError, ValueError):
            continue
        if isinstance(key, str) and key:
            found.setdefault(key, []).append(p)
    return found


def point_state(paths: list[Path], repeat: int = 1) -> tuple[str, Path | None, int]:
    """``done`` (``repeat`` verified ok bundles), ``submitted`` (the rest are jobs not yet
    finished) or ``todo``; a bundle to name (the newest ok, else submitted); runs still to do."""
    ok: list[Path] = []
    submitted: list[Path] = []
    for p in sorted(paths, key=lambda x: x.name, reverse=True):
        try:
            status = bundle_mod.read_manifest(p).status
        except (OSError, ValueError, BundleReadError):
            continue
        if status == "ok" and bundle_mod.verify(p).ok:
            ok.append(p)
        elif status == "submitted":
            submitted.append(p)
    need = max(0, repeat - len(ok) - len(submitted))
    if len(ok) >= repeat:
        return "done", ok[0], 0
    if need == 0:
        return "submitted", submitted[0], 0
    return "todo", None, need


# -- running ----------------------------------------------------------------------------------
RunPoint = Callable[[Point, Path, dict[str, Any], Console], tuple[str, Path | None, str]]


def resolve_point(point: Point, *, job: dict[str, Any] | None = None, force: bool = False):
    from kit import plan as plan_mod

    return plan_mod.resolve(recipe_name=point.recipe, overrides=point.overrides, preset_names=point.presets,
                            launcher=point.launcher, runtime=point.runtime, image=point.image, nodes=point.nodes,
                            job=plan_mod.JobOptions(**(job or {})), force=force)


def run_point_inprocess(point: Point, out: Path, record: dict[str, Any], console: Console,
                        job: dict[str, Any] | None = None, force: bool = False) -> tuple[str, Path | None, str]:
    """Plan and run one point here (or submit it, for batch launchers); (status, bundle, reason)."""
    from kit import runner

    from kit import known_bad

    try:
        plan = resolve_point(point, job=job, force=force)
    except KitError as e:
        return "invalid", None, str(e)
    why = known_bad.refusal(plan)
    if why:
        return "refused", None, why
    outcome = runner.run(plan, out, console, extra_files={SWEEP_FILE: record}, group=record.get("group"))
    return outcome.status, outcome.bundle.path, outcome.reason


@dataclass
class SweepResult:
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)  # per point: key, title, state, bundle, reason
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        bad = [r for r in self.rows if r["state"] in ("failed", "stalled", "invalid", "interrupted")]
        return EXIT_FAILED if bad else EXIT_OK

    def bundles(self) -> list[Path]:
        return [Path(r["bundle"]) for r in self.rows if r.get("bundle") and r["state"] not in ("submitted", "running elsewhere")]


def run_sweep(sweep_path: Path, *, out: Path | None = None, launcher: str | None = None, console: Console | None = None,
              dry_run: bool = False, run_point: RunPoint | None = None) -> SweepResult:
    console = console or Console()
    sw = load(sweep_path)
    out = out or Path(sw.out or f"results/{sw.name}")
    pts = points(sw, launcher=launcher)
    res = SweepResult(out=out)
    sweep_sha = bundle_mod.sha256_file(sweep_path)[0]
    if run_point is None:
        def run_point(p, o, rec, con):  # noqa: E306
            return run_point_inprocess(p, o, rec, con, job=sw.job, force=sw.force)
    me = proc.identity()
    for i, p in enumerate(pts, 1):
        key = p.key
        head = f"[{i}/{len(pts)}] {p.title()} (point {key})"
        if not dry_run:
            out.mkdir(parents=True, exist_ok=True)
        with (locked_state(out, sw.name) if not dry_run else _nolock()) as state:
            state_pt = state["points"].get(key, {})
            existing = bundles_by_key(out).get(key, [])
            st, b, need = point_state(existing, p.repeat)
            claim = state_pt.get("claim")
            if st == "done":
                res.rows.append({"key": key, "title": p.title(), "state": "ok", "skipped": True,
                                 "bundle": str(out / p.group(sw.name)) if p.repeat > 1 else str(b)})
                console.print(f"{head}: done, skipped ({b.name})", highlight=False, markup=False)
                continue
            if st == "submitted":
                res.rows.append({"key": key, "title": p.title(), "state": "submitted", "bundle": str(b), "skipped": True})
                console.print(f"{head}: submitted, waiting for the job ({b.name}); skipped", highlight=False, markup=False)
                continue
            if claim and {k: claim.get(k) for k in me} != me and _alive(claim):
                res.rows.append({"key": key, "title": p.title(), "state": "running elsewhere", "bundle": None, "skipped": True})
                console.print(f"{head}: running in another process ({claim['host']}:{claim['pid']}); skipped", highlight=False, markup=False)
                continue
            if dry_run:
                what = _dry_check(p, sw)
                res.rows.append({"key": key, "title": p.title(), "state": "todo", "bundle": None, "point": p,
                                 "reason": what})
                console.print(f"{head}: to run" + (f"; {what}" if what else ""), highlight=False, markup=False)
                continue
            state["points"][key] = {**state_pt, **p.identity(), "layout": p.layout,
                                    "claim": {**me, "since": time.time()}}
        group = p.group(sw.name)
        console.print(f"{head}: running" + (f" {need} of {p.repeat} (group {group})" if group else ""), highlight=False,
                      markup=False)
        record = {"sweep": sw.name, "sweep_file": str(sweep_path), "sweep_sha256": sweep_sha, "key": key,
                  "layout": p.layout, "point": p.identity(), **({"group": group} if group else {})}
        runs: list[tuple[str, Path | None, str]] = []
        try:
            for _ in range(need):  # a group's repeats: the first that did not finish ok names the point's state
                runs.append(run_point(p, out / group if group else out, record, console))
                if runs[-1][0] in ("invalid", "refused", "interrupted"):
                    break
        except BaseException:
            with locked_state(out, sw.name) as state:
                state["points"][key].pop("claim", None)
            raise
        status, bpath, reason = next((r for r in runs if r[0] != "ok"), runs[-1])
        with locked_state(out, sw.name) as state:
            entry = state["points"][key]
            entry.pop("claim", None)
            entry.update({"status": status, "bundle": bpath.name if bpath else None, "reason": reason,
                          "at": bundle_mod.now_iso(), **({"group": group} if group else {})})
        shown = out / group if group and status not in ("invalid", "refused") else bpath
        res.rows.append({"key": key, "title": p.title(), "state": status, "bundle": str(shown) if shown else None,
                         "reason": reason, "point": p})
        if status in ("invalid", "refused"):
            console.print(f"  not run: {reason}", highlight=False, markup=False)
        if status == "interrupted":
            res.interrupted = True
            break
    return res


def _dry_check(p: Point, sw: SweepFile) -> str:
    from kit import known_bad

    try:
        plan = resolve_point(p, job=sw.job, force=sw.force)
    except KitError as e:
        return f"will fail to plan: {e}"
    why = known_bad.refusal(plan)
    if why:
        return f"will be refused: {why}"
    return ""


@contextmanager
def _nolock() -> Iterator[dict[str, Any]]:
    yield {"points": {}}


def not_run_row(p: Point, reason: str, job: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A table row of ``-`` for a point that was refused (as the table shows its TP 4 rows), or None."""
    from kit import table

    try:
        plan = resolve_point(p, job=job, force=True)
    except KitError:
        return None
    created = bundle_mod.now_iso()
    f = table.row_fields({"id": f"point-{p.key}", "status": "refused", "reason": reason, "created": created,
                          "recipe": plan.recipe_name, "preset": plan.preset.name},
                         {"summary": {}}, {"plan": plan.summary(), "recipe": plan.recipe.model_dump(by_alias=True)})
    f["note"] = f"{f['date']} not run"
    f["group"] = report_mod.group_title(f)
    f["path"] = ""
    return f


def summary_report(res: SweepResult, job: dict[str, Any] | None = None) -> report_mod.Report | None:
    paths = res.bundles()
    rep = report_mod.build(paths) if paths else report_mod.Report()
    for r in res.rows:
        if r["state"] == "refused" and r.get("point") is not None:
            row = not_run_row(r["point"], r.get("reason", ""), job)
            if row:
                rep.rows.append(row)
                continue
        if r["state"] in ("invalid", "refused", "running elsewhere", "submitted", "todo"):
            rep.skipped.append(f"point {r['key']} {r['title']}: {r['state']}" + (f": {r['reason']}" if r.get("reason") else ""))
    return rep if rep.rows or rep.skipped else None
