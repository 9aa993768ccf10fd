"""``kit compare A B``: why one row is faster than another.

Side by side, what differs between two bundles' provenance — the plan (recipe, presets,
overrides, layout), each machine setting (requested, applied, seen), the image, the
software (Python, torch, DeepSpeed, every package), the hardware and the environment — and
per metric the ratio B/A with its 95% interval and a verdict (faster, slower, within noise,
not comparable; :mod:`kit.results.judge`). A and B are bundles or groups of repeats (their
first bundle's provenance is diffed). Identical sections are summarized in one line;
``--all`` shows them too. Exit codes: 0 (the comparison is information, not a pass/fail);
2 bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kit.results.humanize import setting_text, value_text
from kit.results import judge as judge_mod
from kit.results.store import BundleDocs, dotted as _get
from kit.textsafe import terminal

PLAN_KEYS = ("recipe", "recipe_sha256", "presets", "preset_sha256", "overrides", "launcher", "runtime", "image", "nodes",
             "world_size", "ranks_per_node", "threads_per_rank", "dp", "tp", "pp", "zero", "micro_batch", "global_batch")
HOST_KEYS = ("hostname", "cpu_model", "arch", "physical_cores", "logical_cpus", "usable_cpus", "numa_nodes",
             "memory_total_mib", "kernel", "os", "frequency.mhz")
ENV_IGNORE = {"KIT_RUN_ID", "OLDPWD", "PWD", "SHLVL", "_"}


@dataclass
class Diff:
    section: str
    key: str
    a: Any
    b: Any


@dataclass
class Comparison:
    a: BundleDocs
    b: BundleDocs
    judging: judge_mod.Judging
    diffs: list[Diff] = field(default_factory=list)
    same: dict[str, int] = field(default_factory=dict)  # section -> number of identical keys

    @property
    def metrics(self) -> list[judge_mod.MetricJudgement]:
        return self.judging.metrics

    def sections(self) -> list[str]:
        seen: list[str] = []
        for d in self.diffs:
            if d.section not in seen:
                seen.append(d.section)
        return seen




def _blas_core(software: dict) -> Any:
    """The OpenBLAS core the run's torch chose (provenance ``software.blas.corename``)."""
    blas = software.get("blas")
    return blas.get("corename") if isinstance(blas, dict) else None


def _strings(v: Any) -> list[str]:
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []


def _allocators(docs: BundleDocs) -> list[str]:
    """The allocator each rank was seen with (ranks of another shape are skipped)."""
    ranks = docs.metrics.get("ranks") or {}
    return sorted({str(r["allocator"].get("allocator")) for r in ranks.values()
                   if isinstance(r, dict) and isinstance(r.get("allocator"), dict)})


def _packages(sw: dict[str, Any]) -> dict[str, str]:
    out = {}
    for p in sw.get("packages") or []:
        if not isinstance(p, str):
            continue  # a damaged or hostile inventory: nothing to compare
        name, _, ver = p.partition("==")
        out[name.lower()] = ver
    return out


def _side(x: BundleDocs | judge_mod.Side) -> judge_mod.Side:
    return x if isinstance(x, judge_mod.Side) else judge_mod.Side(str(x.path), [x], x.manifest.get("group"))


def compare(side_a: BundleDocs | judge_mod.Side, side_b: BundleDocs | judge_mod.Side) -> Comparison:
    sa_, sb_ = _side(side_a), _side(side_b)
    a, b = sa_.bundles[0], sb_.bundles[0]
    c = Comparison(a=a, b=b, judging=judge_mod.judge(sa_, sb_))

    def add(section: str, key: str, va: Any, vb: Any) -> None:
        if va == vb:
            c.same[section] = c.same.get(section, 0) + 1
        else:
            c.diffs.append(Diff(section, key, va, vb))

    pa, pb = a.provenance, b.provenance
    add("run", "status", a.status, b.status)
    for k in PLAN_KEYS:
        add("plan", k, _get(pa, f"plan.{k}"), _get(pb, f"plan.{k}"))
    sa = {s["name"]: s for s in _get(pa, "plan.settings") or []}
    sb = {s["name"]: s for s in _get(pb, "plan.settings") or []}
    for name in list(dict.fromkeys([*sa, *sb])):
        add("settings", name, setting_text(sa.get(name)), setting_text(sb.get(name)))
    ra, rb = pa.get("runtime") or {}, pb.get("runtime") or {}
    for k in dict.fromkeys([*ra, *rb]):
        add("image", k, ra.get(k), rb.get(k))
    swa, swb = pa.get("software") or {}, pb.get("software") or {}
    for k in ("python", "executable", "arch", "torch", "deepspeed", "torch_threads", "torch_cpu_capability"):
        add("software", k, swa.get(k), swb.get(k))
    add("software", "blas_core", _blas_core(swa), _blas_core(swb))
    pka, pkb = _packages(swa), _packages(swb)
    for name in sorted(set(pka) | set(pkb)):
        add("packages", name, pka.get(name), pkb.get(name))
    add("software", "torch_config", swa.get("torch_config"), swb.get("torch_config"))
    for k in HOST_KEYS:
        add("hardware", k, _get(pa, f"host.{k}"), _get(pb, f"host.{k}"))
    isa_a, isa_b = (set(_strings(_get(p, "host.isa_features"))) for p in (pa, pb))
    add("hardware", "isa_features", sorted(isa_a - isa_b) or None, sorted(isa_b - isa_a) or None)
    alloc_a, alloc_b = _allocators(a), _allocators(b)
    add("settings", "allocator seen in ranks", ", ".join(alloc_a) or None, ", ".join(alloc_b) or None)
    ea, eb = pa.get("environment") or {}, pb.get("environment") or {}
    for k in sorted((set(ea) | set(eb)) - ENV_IGNORE):
        add("environment", k, ea.get(k), eb.get(k))
    for k in ("version", "git_commit", "git_dirty"):
        add("kit", k, _get(pa, f"kit.{k}"), _get(pb, f"kit.{k}"))
    for k in ("job_id",):
        add("scheduler", k, _get(pa, f"job.{k}"), _get(pb, f"job.{k}"))
    return c


def _v(x: Any, width: int = 72) -> str:
    s = terminal(value_text(x))
    return s if len(s) <= width else s[: width - 1] + "…"


def render(c: Comparison, show_all: bool = False) -> str:
    lines = [terminal(f"{x}: {side.describe()}") for x, side in (("A", c.judging.a), ("B", c.judging.b))] + [""]
    lines.append("== metrics (B vs A)")
    lines += judge_mod.render(c.judging)
    order = ("run", "plan", "settings", "image", "software", "packages", "hardware", "environment", "kit", "scheduler")
    for section in order:
        ds = [d for d in c.diffs if d.section == section]
        n_same = c.same.get(section, 0)
        if not ds:
            if show_all or section in ("plan", "settings", "image", "hardware"):
                lines.append(f"== {section}: identical ({n_same} item(s))")
            continue
        lines.append(f"== {section}: {len(ds)} difference(s)" + (f", {n_same} identical" if n_same else ""))
        w = max(len(terminal(d.key)) for d in ds)
        for d in ds:
            lines.append(f"  {terminal(d.key):<{w}}  A: {_v(d.a)}")
            lines.append(f"  {'':<{w}}  B: {_v(d.b)}")
    return "\n".join(lines) + "\n"


def to_json(c: Comparison) -> dict[str, Any]:
    return {"a": {"id": c.a.id, "path": str(c.a.path)}, "b": {"id": c.b.id, "path": str(c.b.path)},
            "differences": [{"section": d.section, "key": d.key, "a": d.a, "b": d.b} for d in c.diffs],
            "identical": c.same, **judge_mod.to_json(c.judging)}
