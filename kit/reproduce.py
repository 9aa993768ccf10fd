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
   are compared with the original's, each within a printed tolerance.
   Numerics: the whole loss curve, iteration by iteration, within an absolute tolerance
   (default 1e-3: same seed, same data, same code give the same losses), and the same
   iterations logged; a change that is fast but wrong cannot pass. The final loss is
   shown as well.
   Speed: sec/it (and TFLOPs, its inverse: the two always agree) is judged by
   :mod:`kit.results.judge` (the ratio, its interval over the two runs' iterations, and
   this host's noise floor from ``kit noise``). It differs when the ratio is beyond the
   tolerance, a factor either way (default 25%: sec/it -72% is TFLOPs +258%, both a
   factor of 3.6), *unless* the verdict, with a noise floor, calls it within noise: on a
   host whose identical runs differ by 1.5x, a 1.3x re-run is noise. Without a floor the
   tolerance alone decides, and the line says so. ``inf`` leaves timing unjudged (a loaded
   machine cannot fail it). Memory: relative (default 25%).

Exit codes: 0 reproduced within tolerance; 1 the bundle does not verify, or a metric
differs beyond its tolerance; 2 bad input; 3 the new run failed or stalled; 4 the
environment could not be matched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kit import bundle as bundle_mod, bundle_reader, metricdefs, verdict
from kit.digest import sha256_chunks
from kit.errors import EXIT_FAILED, EXIT_NOT_READY, EXIT_OK, EXIT_STALLED, KitError
from kit.textsafe import terminal
from kit.results import VerificationFailed, judge, store

REPRODUCE_FILE = "reproduce.json"


@dataclass
class Tolerance:
    """One tolerance per kind of metric (``kit.metricdefs``: each metric's ``reproduce`` kind);
    the loss tolerance also holds at every iteration of the loss curve."""

    timing: float = 0.25  # a factor either way (symmetric ratio), unless a verdict calls it noise; inf: not judged
    memory: float = 0.25  # relative
    loss: float = 1e-3  # absolute, the final loss and the loss at every iteration

    def describe(self) -> str:
        def names(kind: str) -> str:
            return ", ".join(m.title for m in metricdefs.reproduced() if m.reproduce == kind)

        timing = (f"timing ({names('timing')}) not judged" if math.isinf(self.timing)
                  else f"timing ({names('timing')}) within a factor of {1 + self.timing:.3g} either way or within noise")
        return (f"{timing}, {names('memory')} within {self.memory:.0%}, {names('loss')} within {self.loss:g} (absolute), "
                f"loss curve within {self.loss:g} at every iteration")


@dataclass
class Check:
    name: str
    old: float | None
    new: float | None
    tolerance: str
    ok: bool | None  # None: not comparable (not measured in one of the runs)
    note: str = ""  # what the judgement rests on (the verdict, the loss curve's largest difference)

    def line(self) -> str:
        def n(x):
            return "-" if x is None else f"{x:.5g}"
        rel = "" if self.old in (None, 0) or self.new is None else f"{(self.new - self.old) / abs(self.old):+.1%}"
        verdict = {True: "ok", False: "DIFFERS", None: "not compared"}[self.ok]
        if self.tolerance == "not judged" and self.ok:
            verdict = "not judged"
        return (f"  {self.name:<14} {n(self.old):>12} {n(self.new):>12} {rel:>8}  {self.tolerance:<12} {verdict}"
                + (f"  ({self.note})" if self.note and self.tolerance != "not judged" else ""))


def _judge(judge: metricdefs.Judge, a: float | None, b: float | None, tol: float) -> tuple[str, bool | None]:
    """The tolerance as printed, and whether ``b`` is within it of ``a`` (None: not comparable)."""
    if judge == "ratio":
        # symmetric: a factor either way, so sec/it and TFLOPs (its inverse) always agree
        t = "not judged" if math.isinf(tol) else f"x{1 + tol:.3g}"
        return t, None if not a or not b or a * b < 0 else max(b / a, a / b) - 1 <= tol
    if judge == "relative":
        return f"±{tol:.0%}", None if a in (None, 0) or b is None else abs(b - a) / abs(a) <= tol
    return f"±{tol:g}", None if a is None or b is None else abs(b - a) <= tol


def loss_curve(old: dict[str, Any], new: dict[str, Any]) -> dict[int, tuple[float | None, float | None]]:
    """Iteration -> (old loss, new loss) over the iterations either run logged."""
    def series(doc):  # a loss that is not a finite number (a hostile or damaged bundle) counts as not logged
        return {it["iteration"]: it["loss"] for it in doc.get("iterations") or []
                if isinstance(it, dict) and isinstance(it.get("iteration"), int) and verdict.finite(it.get("loss"))}
    a, b = series(old), series(new)
    return {i: (a.get(i), b.get(i)) for i in sorted(set(a) | set(b))}


def _curve_check(old: dict[str, Any], new: dict[str, Any], tol: Tolerance) -> Check:
    curve = loss_curve(old, new)
    pairs = {i: ab for i, ab in curve.items() if None not in ab}
    if not pairs:
        return Check("loss_curve", None, None, f"±{tol.loss:g} each", None, "no losses logged")
    missing = [i for i, ab in curve.items() if None in ab]
    worst = max(pairs, key=lambda i: abs(pairs[i][1] - pairs[i][0]))
    delta = abs(pairs[worst][1] - pairs[worst][0])
    note = f"{len(pairs)} iterations, largest |difference| {delta:.3g} at iteration {worst}"
    if missing:
        note += f"; iteration(s) {', '.join(map(str, missing[:5]))} logged by one run only"
    return Check("loss_curve", pairs[worst][0], pairs[worst][1], f"±{tol.loss:g} each", delta <= tol.loss and not missing,
                 note)


def _timing_ok(within: bool | None, judgement) -> tuple[bool | None, str]:
    """Within the tolerance factor, or called within noise by a verdict with a noise floor."""
    if within is None or judgement is None:
        return within, ""
    text = f"{judgement.verdict}" + (f"; {judgement.reasons[0]}" if judgement.reasons else "")
    if judgement.floor is not None and judgement.verdict == "within noise":
        return True, text
    if judgement.floor is None and judgement.basis != "runs":
        text += "; judged by the tolerance alone"
    return within, text


def compare_metrics(old: dict[str, Any], new: dict[str, Any], tol: Tolerance,
                    timing: judge.Judging | None = None) -> list[Check]:
    """The original's metrics document against the new one's: the summary metric by metric
    (those ``kit.metricdefs`` marks for reproduce, each judged by the rule of its kind; timing
    with ``timing``, kit compare's judging of the two), then the loss curve iteration by iteration."""
    checks = []
    so, sn = old.get("summary") or {}, new.get("summary") or {}
    for m in metricdefs.reproduced():
        a, b = so.get(m.name), sn.get(m.name)
        t, ok = _judge(metricdefs.REPRODUCE_KINDS[m.reproduce], a, b, getattr(tol, m.reproduce))
        note = ""
        if m.reproduce == "timing" and not math.isinf(tol.timing):
            mj = timing.get(m.name) if timing else None
            ok, note = _timing_ok(ok, mj.judgement if mj else None)
        checks.append(Check(m.name, a, b, t, ok, note))
    checks.append(_curve_check(old, new, tol))
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
                                 f"{str(rec[key])[:12]}… (the {what} changed since the run; compare with the bundle's {what}.yaml)")
    for key in ("dp", "world_size", "ranks_per_node", "tp", "pp", "global_batch", "micro_batch"):
        if key in rec and rec[key] != new[key]:
            pf.mismatches.append(f"layout: {key} is {new[key]} here, {rec[key]} in the bundle")
    old_rt = docs.provenance.get("runtime") or {}
    if old_rt.get("digest") and not plan.image:
        pf.mismatches.append(f"image: the bundle ran in an image (digest {str(old_rt['digest'])[:80]}); this run would "
                             f"be on the host (pass --runtime and --image to reproduce it in that image)")
    elif old_rt.get("digest"):
        try:
            now = runtimes.get(plan.runtime, image=plan.image).describe()
        except KitError as e:
            now = {"error": str(e)}
        if now.get("digest") != old_rt["digest"]:
            pf.mismatches.append(f"image: {plan.image} has digest {now.get('digest') or now.get('error') or 'unknown'} here, "
                                 f"the bundle ran {str(old_rt['digest'])[:80]}")
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
        pf.notes.append(f"kit: commit {str(ks.get('git_commit'))[:10]} here, {str(rk['git_commit'])[:10]} in the bundle")
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


#: recipe values a reproduction takes from a bundle: numbers of the model, layout, batch and
#: training loop. Anything else it asks for (the command, data files, image, runtime,
#: environment, launcher, job options, --force) is the sender's choice: refused unless the
#: user passes it here.
ALLOWED_OVERRIDE = re.compile(
    r"^(model\.(layers|hidden|heads|seq|vocab|checkpoint_activations)|parallel\.(dp|tp|pp|zero)|"
    r"batch\.(micro|global)|train\.(iters|warmup_iters|seed|lr|dtype|stall_timeout_s|startup_timeout_s))"
    r"=[A-Za-z0-9.+-]{1,32}$|^data=synthetic$")
CATALOG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Choices:
    """What the user passed to ``kit reproduce`` (None: not passed)."""
    recipe: str | None = None
    presets: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    launcher: str | None = None
    runtime: str | None = None
    image: str | None = None
    nodes: int | None = None
    force: bool = False


def _strings(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise KitError("is not a list of strings", where=where, fix="the bundle is damaged; see `kit bundle verify`")
    return list(v)


def resolve_plan(docs: store.BundleDocs, choices: Choices | None = None):
    """A new plan from the bundle's recorded inputs, taking from the bundle only catalog names
    (recipe, presets) and allow-listed recipe values; the rest comes from ``choices``."""
    from kit import plan as plan_mod

    c = choices or Choices()
    rec = docs.plan
    if not rec:
        raise KitError("the bundle has no plan.json", where=str(docs.path),
                       fix="it was written by a kit that did not record its plan; re-run it with `kit run`")
    where = str(docs.path / "plan.json")
    recipe = c.recipe or rec.get("recipe_name")
    if c.recipe is None and not (isinstance(recipe, str) and CATALOG_NAME.match(recipe) and not recipe.endswith(".yaml")):
        raise KitError(f"recipe {str(recipe)[:80]!r} is not a name in a recipe catalog", where=f"{where}: recipe_name",
                       fix="a reproduction takes recipes from the local catalog; pass --recipe NAME|PATH you trust")
    presets = c.presets or _strings(rec.get("preset_names"), f"{where}: preset_names")
    if c.presets is None:
        bad = [p for p in presets if not CATALOG_NAME.match(p) or p.endswith(".yaml")]
        if bad:
            raise KitError(f"preset(s) {', '.join(repr(p[:80]) for p in bad)} are not catalog names",
                           where=f"{where}: preset_names", fix="pass --preset NAME|PATH you trust")
    recorded = _strings(rec.get("overrides", []), f"{where}: overrides")
    refused = [o for o in recorded if not ALLOWED_OVERRIDE.match(o) and o not in c.overrides]
    if refused:
        raise KitError(f"the bundle asks for --set {' --set '.join(repr(o[:120]) for o in refused)}, which a "
                       f"reproduction does not take from a bundle (only model, layout, batch and training numbers)",
                       where=f"{where}: overrides",
                       fix="read it in `kit bundle show`; pass the same --set yourself if you trust it")
    overrides = recorded + [o for o in c.overrides if o not in recorded]
    return plan_mod.resolve(recipe_name=recipe, overrides=overrides, preset_names=presets,
                            launcher=c.launcher or "local", runtime=c.runtime, image=c.image, nodes=c.nodes or 1,
                            force=c.force)


def not_taken(docs: store.BundleDocs, plan) -> list[str]:
    """What the bundle ran with that this reproduction does not take from it (notes)."""
    rec = docs.plan or {}
    out = []
    for key, flag, new in (("launcher", "--launcher", plan.launcher), ("runtime", "--runtime", plan.runtime),
                           ("image", "--image", plan.image), ("nodes", "--nodes", plan.nodes)):
        old = rec.get(key)
        if old not in (None, new) and isinstance(old, (str, int)):
            out.append(f"the bundle ran with {flag} {str(old)[:120]}; not taken from it (pass {flag} to use it)")
    if rec.get("force") is True and not plan.force:
        out.append("the bundle was run with --force (a known-bad combination); pass --force to run it again")
    return out


def describe_plan(plan) -> list[str]:
    """Exactly what will run: where, the rank command and the environment the kit sets."""
    import shlex

    where = f"{plan.launcher} launcher, {plan.world_size} rank(s) on {plan.nodes} node(s), runtime {plan.runtime}" + \
        (f" image {plan.image}" if plan.image else "")
    return [f"will run: {where}",
            f"  command: {shlex.join(plan.rank_argv)}",
            "  environment: " + (" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(plan.env.items())) or "(none)")]


def reproduce(bundle: Path, *, out: Path, tol: Tolerance, console: Console,
              choices: Choices | None = None) -> Reproduction:
    from kit import runner

    v = bundle_mod.verify(bundle)
    if not v.ok:
        raise VerificationFailed(f"{bundle}: not reproduced, the bundle does not verify", v.problems)
    docs = store.load(bundle)
    choices = choices or Choices()
    force = choices.force
    plan = resolve_plan(docs, choices)
    pf = preflight(docs, plan)
    pf.notes.extend(not_taken(docs, plan))
    res = Reproduction(original=bundle, exit_code=EXIT_OK, preflight=pf)
    console.print(f"reproducing {terminal(docs.id)}: {plan.recipe_name} [{'+'.join(plan.preset_names)}]"
                  + (f" --set {' --set '.join(plan.overrides)}" if plan.overrides else ""), highlight=False, markup=False)
    for n in pf.notes:
        console.print(f"note: {terminal(n)}", highlight=False, markup=False)
    for m in pf.mismatches:
        console.print(f"environment mismatch: {terminal(m)}", highlight=False, markup=False)
    if pf.mismatches and not force:
        res.exit_code = EXIT_NOT_READY
        res.message = "not run: the environment could not be matched (--force runs anyway)"
        console.print(terminal(res.message), highlight=False, markup=False)
        return res
    for line in describe_plan(plan):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"tolerance: {tol.describe()}", highlight=False, markup=False)
    outcome = runner.run(plan, out, console, extra_files={REPRODUCE_FILE: {
        "original": docs.id, "original_path": str(bundle.resolve()),
        "original_manifest_sha256": sha256_chunks(bundle_reader.iter_chunks(bundle, bundle_mod.MANIFEST))[0],
        "tolerance": {"timing": None if math.isinf(tol.timing) else tol.timing, "memory": tol.memory, "loss": tol.loss}}})
    res.new_bundle = outcome.bundle.path
    res.status = outcome.status
    if outcome.status == "submitted":
        res.message = "submitted: compare when the job has finished with `kit compare`"
        return res
    if outcome.status != "ok":
        res.exit_code = EXIT_STALLED
        res.message = f"the new run {outcome.status}: {outcome.reason}"
        console.print(terminal(res.message), highlight=False, markup=False)
        return res
    new_docs = store.load(outcome.bundle.path)
    old_digest = (docs.provenance.get("runtime") or {}).get("digest")
    new_digest = (new_docs.provenance.get("runtime") or {}).get("digest")
    if old_digest and new_digest != old_digest:
        pf.mismatches.append(f"image: the run used digest {new_digest}, the bundle ran {old_digest}")
    judging = judge.judge(judge.Side(str(bundle), [docs]), judge.Side(str(outcome.bundle.path), [new_docs]))
    res.checks = compare_metrics(docs.metrics, new_docs.metrics, tol, judging)
    console.print(f"\n  {'metric':<14} {'original':>12} {'new':>12} {'change':>8}  {'tolerance':<12} verdict", highlight=False, markup=False)
    for c in res.checks:
        console.print(terminal(c.line()), highlight=False, markup=False)
    differs = [c.name for c in res.checks if c.ok is False]
    if pf.mismatches:
        res.exit_code = EXIT_NOT_READY
        res.message = "the environment could not be matched: " + "; ".join(pf.mismatches)
    elif differs:
        res.exit_code = EXIT_FAILED
        res.message = f"not reproduced: {', '.join(differs)} beyond tolerance"
    else:
        res.message = "reproduced within tolerance"
    console.print(f"{terminal(res.message)}\nnew bundle: {res.new_bundle}", highlight=False, markup=False)
    return res
