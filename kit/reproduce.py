"""``kit reproduce BUNDLE``: run again what a bundle describes and compare the numbers.

1. The bundle must verify (a tampered bundle is not reproduced: exit 1).
2. Its ``plan.json`` gives the inputs: recipe name, ``--set`` overrides, presets, launcher,
   runtime, image, nodes. A new plan is resolved from those inputs *here*.
3. The environment is matched before anything runs (exit 4, naming each part, when it
   cannot be): the recipe and the composed preset must hash to what the bundle recorded
   (``plan.recipe_sha256`` / ``preset_sha256``; a recipe or preset file that changed since
   is a different experiment), the image digest must match when the bundle recorded one,
   and the layout (DP, world size, ranks per node) must come out the same. Differences that
   do not change the experiment but may move the numbers (CPU model, core count, torch, kit
   commit, threads per rank) are printed as notes. ``--force`` runs anyway (and still exits 4).
4. The run writes a new bundle (with ``reproduce.json`` naming the original) and its metrics
   are compared with the original's, each within a printed tolerance: for timing (sec/it,
   TFLOPs; default 25%: shared machines are noisy) the symmetric ratio max(new/old, old/new)
   - 1, so the two always agree (sec/it -72% is TFLOPs +258%: both are a factor of 3.6);
   ``inf`` leaves timing unjudged (a loaded machine cannot fail it); memory relative
   (default 25%); the final loss absolute (default 1e-3: same seed, same data, same code).

Exit codes: 0 reproduced within tolerance; 1 the bundle does not verify, or a metric
differs beyond its tolerance; 2 bad input; 3 the new run failed or stalled; 4 the
environment could not be matched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod
from kit.errors import KitError
from kit.errors import EXIT_FAILED, EXIT_NOT_READY, EXIT_OK, EXIT_STALLED
from kit.results import VerificationFailed, store

REPRODUCE_FILE = "reproduce.json"


@dataclass
class Tolerance:
    timing: float = 0.25  # relative, sec_per_iter and tflops
    memory: float = 0.25  # relative, peak_mem_mib
    loss: float = 1e-3  # absolute, final_loss

    def describe(self) -> str:
        timing = ("timing (sec/it, TFLOPs) not judged" if math.isinf(self.timing)
                  else f"timing (sec/it, TFLOPs) within a factor of {1 + self.timing:.3g} either way")
        return f"{timing}, peak memory within {self.memory:.0%}, final loss within {self.loss:g} (absolute)"


@dataclass
class Check:
    name: str
    old: float | None
    new: float | None
    tolerance: str
    ok: bool | None  # None: not comparable (not measured in one of the runs)

    def line(self) -> str:
        def n(x):
            return "-" if x is None else f"{x:.5g}"
        rel = "" if self.old in (None, 0) or self.new is None else f"{(self.new - self.old) / abs(self.old):+.1%}"
        verdict = {True: "ok", False: "DIFFERS", None: "not compared"}[self.ok]
        if self.tolerance == "not judged" and self.ok:
            verdict = "not judged"
        return f"  {self.name:<14} {n(self.old):>12} {n(self.new):>12} {rel:>8}  {self.tolerance:<12} {verdict}"


def compare_metrics(old: dict[str, Any], new: dict[str, Any], tol: Tolerance) -> list[Check]:
    """The original's summary against the new one's, metric by metric."""
    checks = []
    for name, kind in (("sec_per_iter", "timing"), ("tflops", "timing"), ("peak_mem_mib", "memory"), ("final_loss", "loss")):
        a, b = old.get(name), new.get(name)
        if kind == "loss":
            t = f"±{tol.loss:g}"
            ok = None if a is None or b is None else abs(b - a) <= tol.loss
        elif kind == "timing":
            # symmetric: a factor either way, so sec/it and TFLOPs (its inverse) always agree
            t = "not judged" if math.isinf(tol.timing) else f"x{1 + tol.timing:.3g}"
            ok = None if not a or not b or a * b < 0 else max(b / a, a / b) - 1 <= tol.timing
        else:
            t = f"±{tol.memory:.0%}"
            ok = None if a in (None, 0) or b is None else abs(b - a) / abs(a) <= tol.memory
        checks.append(Check(name, a, b, t, ok))
    return checks


@dataclass
class Preflight:
    mismatches: list[str] = field(default_factory=list)  # the environment could not be matched
    notes: list[str] = field(default_factory=list)  # may move the numbers, same experiment


def preflight(docs: store.BundleDocs, plan) -> Preflight:
    """What differs between the bundle's recorded plan/provenance and the new plan, before running."""
    from kit import hostinfo, runtimes

    pf = Preflight()
    rec = docs.provenance.get("plan") or {}
    new = plan.summary()
    for key, what in (("recipe_sha256", "recipe"), ("preset_sha256", "preset")):
        if rec.get(key) and rec[key] != new[key]:
            files = new["recipe_file"] if what == "recipe" else ", ".join(new["preset_files"])
            pf.mismatches.append(f"{what}: {files} as resolved here hashes to {new[key][:12]}…, the bundle recorded "
                                 f"{rec[key][:12]}… (the {what} changed since the run; compare with the bundle's {what}.yaml)")
    for key in ("dp", "world_size", "ranks_per_node", "tp", "pp", "global_batch", "micro_batch"):
        if key in rec and rec[key] != new[key]:
            pf.mismatches.append(f"layout: {key} is {new[key]} here, {rec[key]} in the bundle")
    old_rt = docs.provenance.get("runtime") or {}
    if old_rt.get("digest"):
        try:
            now = runtimes.get(plan.runtime, image=plan.image).describe()
        except KitError as e:
            now = {"error": str(e)}
        if now.get("digest") != old_rt["digest"]:
            pf.mismatches.append(f"image: {plan.image} has digest {now.get('digest') or now.get('error') or 'unknown'} here, "
                                 f"the bundle ran {old_rt['digest']}")
    if rec.get("threads_per_rank") and rec["threads_per_rank"] != new["threads_per_rank"]:
        pf.notes.append(f"threads per rank: {new['threads_per_rank']} here, {rec['threads_per_rank']} in the bundle")
    host = docs.provenance.get("host") or {}
    here = hostinfo.describe()
    for key in ("cpu_model", "usable_cpus", "memory_total_mib"):
        if host.get(key) is not None and here.get(key) != host.get(key):
            pf.notes.append(f"host {key}: {here.get(key)} here, {host.get(key)} in the bundle")
    sw = docs.provenance.get("software") or {}
    try:
        import importlib.metadata as md
        torch_here = md.version("torch")
    except Exception:  # noqa: BLE001
        torch_here = None
    if sw.get("torch") and torch_here and sw["torch"] != torch_here:
        pf.notes.append(f"torch: {torch_here} here, {sw['torch']} in the bundle")
    from kit.provenance import kit_source
    ks, rk = kit_source(), docs.provenance.get("kit") or {}
    if rk.get("git_commit") and ks.get("git_commit") != rk.get("git_commit"):
        pf.notes.append(f"kit: commit {str(ks.get('git_commit'))[:10]} here, {rk['git_commit'][:10]} in the bundle")
    return pf


@dataclass
class Reproduction:
    original: Path
    exit_code: int
    new_bundle: Path | None = None
    preflight: Preflight | None = None
    checks: list[Check] = field(default_factory=list)
    status: str | None = None
    message: str = ""


def resolve_plan(docs: store.BundleDocs, *, launcher: str | None = None):
    """A new plan from the inputs recorded in ``plan.json``."""
    from kit import plan as plan_mod

    if not docs.plan:
        raise KitError("the bundle has no plan.json", where=str(docs.path),
                       fix="it was written by a kit that did not record its plan; re-run it with `kit run`")
    old = plan_mod.Plan.model_validate(docs.plan)
    return plan_mod.resolve(recipe_name=old.recipe_name, overrides=old.overrides, preset_names=old.preset_names,
                            launcher=launcher or old.launcher, runtime=old.runtime, image=old.image, nodes=old.nodes,
                            job=old.job, force=old.force)


def reproduce(bundle: Path, *, out: Path, tol: Tolerance, console: Console, force: bool = False,
              launcher: str | None = None) -> Reproduction:
    from kit import runner

    v = bundle_mod.verify(bundle)
    if not v.ok:
        raise VerificationFailed(f"{bundle}: not reproduced, the bundle does not verify", v.problems)
    docs = store.load(bundle)
    plan = resolve_plan(docs, launcher=launcher)
    pf = preflight(docs, plan)
    res = Reproduction(original=bundle, exit_code=EXIT_OK, preflight=pf)
    console.print(f"reproducing {docs.id}: {plan.recipe_name} [{'+'.join(plan.preset_names)}]"
                  + (f" --set {' --set '.join(plan.overrides)}" if plan.overrides else ""), highlight=False, markup=False)
    for n in pf.notes:
        console.print(f"note: {n}", highlight=False, markup=False)
    for m in pf.mismatches:
        console.print(f"environment mismatch: {m}", highlight=False, markup=False)
    if pf.mismatches and not force:
        res.exit_code = EXIT_NOT_READY
        res.message = "not run: the environment could not be matched (--force runs anyway)"
        console.print(res.message, highlight=False, markup=False)
        return res
    console.print(f"tolerance: {tol.describe()}", highlight=False, markup=False)
    outcome = runner.run(plan, out, console, extra_files={REPRODUCE_FILE: {
        "original": docs.id, "original_path": str(bundle.resolve()),
        "original_manifest_sha256": bundle_mod.sha256_file(bundle / bundle_mod.MANIFEST)[0],
        "tolerance": {"timing": None if math.isinf(tol.timing) else tol.timing, "memory": tol.memory, "loss": tol.loss}}})
    res.new_bundle = outcome.bundle.path
    res.status = outcome.status
    if outcome.status == "submitted":
        res.message = "submitted: compare when the job has finished with `kit compare`"
        return res
    if outcome.status != "ok":
        res.exit_code = EXIT_STALLED
        res.message = f"the new run {outcome.status}: {outcome.reason}"
        console.print(res.message, highlight=False, markup=False)
        return res
    new_docs = store.load(outcome.bundle.path)
    old_digest = (docs.provenance.get("runtime") or {}).get("digest")
    new_digest = (new_docs.provenance.get("runtime") or {}).get("digest")
    if old_digest and new_digest != old_digest:
        pf.mismatches.append(f"image: the run used digest {new_digest}, the bundle ran {old_digest}")
    res.checks = compare_metrics(docs.metrics.get("summary") or {}, new_docs.metrics.get("summary") or {}, tol)
    console.print(f"\n  {'metric':<14} {'original':>12} {'new':>12} {'change':>8}  {'tolerance':<12} verdict", highlight=False, markup=False)
    for c in res.checks:
        console.print(c.line(), highlight=False, markup=False)
    differs = [c.name for c in res.checks if c.ok is False]
    if pf.mismatches:
        res.exit_code = EXIT_NOT_READY
        res.message = "the environment could not be matched: " + "; ".join(pf.mismatches)
    elif differs:
        res.exit_code = EXIT_FAILED
        res.message = f"not reproduced: {', '.join(differs)} beyond tolerance"
    else:
        res.message = "reproduced within tolerance"
    console.print(f"{res.message}\nnew bundle: {res.new_bundle}", highlight=False, markup=False)
    return res
