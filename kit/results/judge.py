"""Per metric, B against A: the ratio, its 95% interval and a verdict (:mod:`kit.verdict`).

A side is one bundle or a group's repeats (``kit run --repeat``: ``OUT/<group>/``; any
directory whose bundles share one group id). Only its finished (``ok``) runs are measured.

- Timing is judged once, on sec/it: over the runs when each side has enough of them for an
  interval (:func:`kit.verdict.timing_basis`), else over every timed iteration after
  warm-up, which then must also exceed this host's noise floor (:mod:`kit.noise`). TFLOPs,
  samples/s, tokens/s and aggregate PFLOPs are sec/it's inverse for the same recipe and
  layout, so they get its judgement inverted: the two can never disagree.
- Peak memory: over the runs when there are enough, else the medians against the noise
  floor of memory (``smaller`` / ``larger``).
- Every other metric ``kit.metricdefs`` declares for compare: with a better direction
  (energy, power, duration, fastest/slowest iteration) judged over the runs when there are
  enough (``better`` / ``worse``), else ``within noise`` (no noise floor is kept for them);
  without one (the final loss, counts) shown with its ratio, not judged (numerics are
  ``kit reproduce``'s to judge).

``not comparable`` when the sides differ in what the numbers measure, each difference
named: recipe values (the resolved recipe's hash, overrides included), layout (nodes,
ranks, DP/TP/PP, ZeRO, batch), hardware (CPU model, architecture, usable CPUs, NUMA nodes),
software (Python, torch, DeepSpeed). Presets, images and the environment are what a
comparison is for: they are listed by ``kit compare``, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from kit import bundle as bundle_mod, metricdefs, noise, verdict
from kit.errors import KitError
from kit.results import VerificationFailed, store
from kit.results.store import BundleDocs, dotted as _get
from kit.textsafe import terminal

(TIMING,) = (m.name for m in metricdefs.judged("timing"))
INVERSE_OF_TIMING = tuple(m.name for m in metricdefs.judged("rate"))
(MEMORY,) = (m.name for m in metricdefs.judged("memory"))


def shown() -> tuple[str, ...]:
    """Every other metric ``kit.metricdefs`` declares for compare (judged by its declared
    direction where it has one, else shown with its ratio)."""
    return tuple(m.name for m in metricdefs.compared() if m.name not in (TIMING, MEMORY, *INVERSE_OF_TIMING))
LAYOUT_KEYS = ("nodes", "world_size", "ranks_per_node", "dp", "tp", "pp", "zero", "micro_batch", "global_batch")
HARDWARE_KEYS = ("cpu_model", "arch", "usable_cpus", "numa_nodes")
SOFTWARE_KEYS = ("python", "torch", "deepspeed")


@dataclass
class Side:
    label: str
    bundles: list[BundleDocs]
    group: str | None = None
    left_out: list[str] = field(default_factory=list)  # a group's bundles that could not be read (still running)

    @property
    def ok(self) -> list[BundleDocs]:
        return [d for d in self.bundles if d.status == "ok"]

    def values(self, metric: str) -> list[float]:
        out = []
        for d in self.ok:
            v = _get(d.metrics, f"summary.{metric}")
            if verdict.finite(v) and v > 0:
                out.append(float(v))
        return out

    def iteration_times(self) -> list[float]:
        """Seconds of every timed iteration after warm-up, over the side's finished runs."""
        out = []
        for d in self.ok:
            warm = _get(d.metrics, "summary.warmup_iters") or 0
            its = _get(d.metrics, "iterations")
            for it in its if isinstance(its, list) else []:
                ms = it.get("elapsed_ms") if isinstance(it, dict) else None
                it_no = it.get("iteration") if isinstance(it, dict) else None
                if (verdict.finite(ms) and ms > 0
                        and isinstance(it_no, int) and isinstance(warm, int) and it_no > warm):
                    out.append(ms / 1000)
        return out

    def describe(self) -> str:
        n, ok = len(self.bundles), len(self.ok)
        what = f"group {self.group}, {ok} of {n} run(s) ok" if self.group else f"{self.bundles[0].id} ({self.bundles[0].status})"
        if self.left_out:
            what += f", {len(self.left_out)} left out (unfinished or unreadable)"
        return f"{what}  {self.label}"


def load_side(path: Path) -> Side:
    """A bundle, or a directory holding one group's bundles, each verified (nothing unverified
    is compared: its figures could be anyone's). A group's repeats that have not finished
    (still running or submitted) are left out and named; any other problem refuses it."""
    found = store.find([path])
    if not found:
        raise KitError("no bundles found", where=str(path), fix="name a bundle or a group's directory (kit run --repeat)")
    docs, left_out = [], []
    for p in found:
        v = bundle_mod.verify(p)
        if not v.ok:
            if len(found) > 1 and v.status in ("running", "submitted"):
                left_out.append(f"{p.name}: {v.status}")
                continue
            raise VerificationFailed(f"{p}: not compared, the bundle does not verify", v.problems)
        docs.append(store.load(p))
    if not docs:
        raise KitError("no finished bundle", where=str(path), fix="wait for the runs to finish (kit status)")
    groups = sorted({str(d.manifest.get("group")) for d in docs})
    if len(docs) > 1 and (len(groups) > 1 or not docs[0].manifest.get("group")):
        raise KitError(f"holds {len(docs)} bundles that are not one group (groups: {', '.join(groups)})", where=str(path),
                       fix="name one bundle, or one group's directory as `kit run --repeat` writes it (OUT/<group>/)")
    return Side(label=str(path), bundles=docs, group=docs[0].manifest.get("group"), left_out=left_out)


def differences(a: BundleDocs, b: BundleDocs) -> list[str]:
    """What makes the two measure different things (empty: comparable)."""
    pa, pb = a.provenance, b.provenance
    out = []
    if _get(pa, "plan.recipe_sha256") != _get(pb, "plan.recipe_sha256"):
        def recipe(p):
            ov = _get(p, "plan.overrides") or []
            return f"{_get(p, 'plan.recipe')}" + (f" --set {' --set '.join(map(str, ov))}" if ov else "")
        out.append(f"recipe values: {recipe(pa)} vs {recipe(pb)} (the resolved recipes hash differently)")
    for section, keys, prefix in (("layout", LAYOUT_KEYS, "plan"), ("hardware", HARDWARE_KEYS, "host"),
                                  ("software", SOFTWARE_KEYS, "software")):
        for k in keys:
            va, vb = _get(pa, f"{prefix}.{k}"), _get(pb, f"{prefix}.{k}")
            if va != vb:
                out.append(f"{section}: {k} {va} vs {vb}")
    return out


@dataclass
class MetricJudgement:
    name: str
    a: float | None  # the side's median over its finished runs
    b: float | None
    judgement: verdict.Judgement | None = None  # None: shown, not judged

    @property
    def ratio(self) -> float | None:
        if self.judgement is not None and self.judgement.ratio is not None:
            return self.judgement.ratio
        return None if not self.a or self.b is None else self.b / self.a

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "a": self.a, "b": self.b, "ratio": self.ratio,
                **({"judged": False} if self.judgement is None else {"judged": True, **self.judgement.as_dict()})}


@dataclass
class Judging:
    a: Side
    b: Side
    not_comparable: list[str] = field(default_factory=list)
    noise: list[dict[str, Any]] = field(default_factory=list)  # the noise-floor records used
    metrics: list[MetricJudgement] = field(default_factory=list)

    def get(self, name: str) -> MetricJudgement | None:
        return next((m for m in self.metrics if m.name == name), None)


def _floor(records: list[dict[str, Any]], metric: str) -> float | None:
    floors = [f for f in (noise.floor_of(r, metric) for r in records) if f is not None]
    return max(floors) if floors else None


def _noise_records(sides: tuple[Side, Side]) -> list[dict[str, Any]]:
    keys = {(_get(d.provenance, "host.hostname") or "unknown", _get(d.provenance, "plan.recipe") or "?",
             _get(d.provenance, "plan.recipe_sha256") or "") for s in sides for d in s.ok}
    return [r for r in (noise.load(*k) for k in sorted(keys) if k[2]) if r]


def judge(a: Side, b: Side) -> Judging:
    j = Judging(a=a, b=b)
    for side, name in ((a, "A"), (b, "B")):
        for d in side.bundles[1:]:
            j.not_comparable += [f"{name}'s runs differ among themselves: {r}" for r in differences(side.bundles[0], d)]
    j.not_comparable += differences(a.bundles[0], b.bundles[0])
    for side, name in ((a, "A"), (b, "B")):
        if not side.ok:
            j.not_comparable.append(f"{name} has no finished run ({', '.join(sorted({d.status for d in side.bundles}))})")
    j.noise = _noise_records((a, b))

    def med(side: Side, m: str) -> float | None:
        v = side.values(m)
        return median(v) if v else None

    runs = (len(a.ok), len(b.ok))
    if j.not_comparable:
        timing = verdict.not_comparable(j.not_comparable, a.values(TIMING), b.values(TIMING))
    elif verdict.timing_basis(*runs) == "runs":
        timing = verdict.decide(a.values(TIMING), b.values(TIMING), basis="runs")
    else:
        ia, ib = a.iteration_times(), b.iteration_times()
        timing = (verdict.decide(ia, ib, basis="iterations", runs=runs, floor=_floor(j.noise, TIMING)) if ia and ib
                  else verdict.not_comparable(["no timed iterations after warm-up"]))
    j.metrics.append(MetricJudgement(TIMING, med(a, TIMING), med(b, TIMING), timing))
    for m in INVERSE_OF_TIMING:
        if a.values(m) or b.values(m):
            inv = (verdict.not_comparable(j.not_comparable, a.values(m), b.values(m)) if j.not_comparable
                   else timing.inverted())
            j.metrics.append(MetricJudgement(m, med(a, m), med(b, m), inv))
    ma, mb = a.values(MEMORY), b.values(MEMORY)
    if ma and mb:
        if j.not_comparable:
            mem = verdict.not_comparable(j.not_comparable, ma, mb)
        else:
            basis = "runs" if verdict.interval_exists(len(ma), len(mb)) else "values"
            mem = verdict.decide(ma, mb, basis=basis, floor=_floor(j.noise, MEMORY), words=("smaller", "larger"))
        j.metrics.append(MetricJudgement(MEMORY, median(ma), median(mb), mem))
    for m in shown():
        va, vb = a.values(m), b.values(m)
        if not (va or vb):
            continue
        better = metricdefs.BY_NAME[m].better
        jd = None  # a metric without a better direction (the loss, counts) is shown, not judged
        if better and va and vb:
            jd = (verdict.not_comparable(j.not_comparable, va, vb) if j.not_comparable else verdict.decide(
                va, vb, basis="runs" if verdict.interval_exists(len(va), len(vb)) else "values",
                lower_is_better=better == "lower", words=("better", "worse")))
        j.metrics.append(MetricJudgement(m, med(a, m), med(b, m), jd))
    return j


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.4e}"


def render(j: Judging) -> list[str]:
    """The metrics section of ``kit compare``: one line per metric, then what the verdicts rest on."""
    lines = [f"  {'metric':<16} {'A':>11} {'B':>11} {'B/A':>7}  {'95% interval':<17} verdict"]
    for m in j.metrics:
        jd = m.judgement
        ratio = "-" if m.ratio is None else f"{m.ratio:.3f}"
        interval = "" if jd is None or jd.low is None else f"[{jd.low:.3f}, {jd.high:.3f}]"
        lines.append(f"  {m.name:<16} {_num(m.a):>11} {_num(m.b):>11} {ratio:>7}  {interval:<17} "
                     f"{'' if jd is None else jd.verdict}".rstrip())
    timing = j.get(TIMING)
    if j.not_comparable:
        lines.append("  not comparable: " + "; ".join(j.not_comparable))
    elif timing and timing.judgement:
        t = timing.judgement
        lines.append(f"  timing judged {t.basis_text()}" + (f": {'; '.join(t.reasons)}" if t.reasons else ""))
        mem = j.get(MEMORY)
        if mem and mem.judgement and mem.judgement.reasons:
            lines.append(f"  memory judged {mem.judgement.basis_text()}: {'; '.join(mem.judgement.reasons)}")
    for r in j.noise:
        lines.append(f"  {noise.describe(r)}")
    return [terminal(x) for x in lines]  # ids, paths and reasons come from the bundles


def to_json(j: Judging) -> dict[str, Any]:
    return {"sides": {name: {"label": s.label, "group": s.group, "runs": len(s.bundles), "ok": len(s.ok),
                             "bundles": [d.id for d in s.bundles]} for name, s in (("a", j.a), ("b", j.b))},
            "comparable": not j.not_comparable, "not_comparable": j.not_comparable,
            "noise_floors": j.noise, "metrics": [m.as_dict() for m in j.metrics]}
