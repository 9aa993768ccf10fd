"""Combinations the sweep's authors saw hang or fail, checked before a run starts.

Each entry says what was seen, on what, and where the observation is written down. A plan
that matches one is refused (exit 2) with that text, unless ``--force`` is given; then the
run goes ahead, the warning is printed, and the bundle keeps ``known_bad.json``.

The observations come from Fugaku (A64FX, PJM, Fujitsu MPI, PyTorch 1.7/1.10 with
Megatron-DeepSpeed); they may not hold elsewhere, which is what ``--force`` is for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kit.errors import KitError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from kit.plan import Plan

SWEEP = "Fugaku-LLM/DeepSpeedFugaku experiments/124m_13b_benchmarking/fugaku_sweep.md (2023-02-15)"


def _is_13b(plan: "Plan") -> bool:
    """The sweep's 1.3B setup: 24 layers, hidden 2048 (whatever the recipe is called)."""
    m = plan.recipe.model
    return m.layers == 24 and m.hidden == 2048


@dataclass(frozen=True)
class KnownBad:
    key: str
    what: str  # the combination, in the sweep's words
    seen: str  # what happened
    source: str  # where it is written down
    matches: Callable[["Plan"], bool]

    def describe(self) -> dict[str, str]:
        return {"key": self.key, "what": self.what, "seen": self.seen, "source": self.source}


TABLE: tuple[KnownBad, ...] = (
    KnownBad(
        key="tp-with-4-ranks-per-node",
        what="tensor parallelism (TP > 1) with 4 ranks per node (max-proc-per-node=4)",
        seen="did not work: the 124M rows with TP 4 at max-proc-per-node=4 have no result, and the 1.3B ones "
             "stalled after the first iteration (^^); the sweep's comment: 'max-proc-per-node=4 with mp=4 does not work'",
        source=SWEEP + "; shared/reference/fugaku-config-sweep.md, rows 'max-proc-per-node=4 ... TP 4' and Comments",
        matches=lambda p: p.recipe.parallel.tp > 1 and p.ranks_per_node == 4,
    ),
    KnownBad(
        key="tp-with-dp-1.3b",
        what="tensor parallelism together with data parallelism (TP > 1 and DP > 1) in the 1.3B setup",
        seen="hung",
        source="the sweep authors' notes, summarised in shared/reference/fugaku-facts.md ('TP together with DP "
               "hung in a 1.3B setup')",
        matches=lambda p: _is_13b(p) and p.recipe.parallel.tp > 1 and p.dp > 1,
    ),
    KnownBad(
        key="tcmalloc-1.3b",
        what="tcmalloc preloaded (LD_PRELOAD=libtcmalloc.so) in the 1.3B setup",
        seen="stuck after the first iteration (^^), with and without 2.2 GHz and retention_state=0",
        source=SWEEP + "; shared/reference/fugaku-config-sweep.md, 1.3B rows 'LD_PRELOAD=libtcmalloc.so' (^^)",
        matches=lambda p: _is_13b(p) and p.preset.allocator not in (None, "glibc"),
    ),
)


def check(plan: "Plan") -> list[KnownBad]:
    """The known-bad entries ``plan`` matches."""
    return [kb for kb in TABLE if kb.matches(plan)]


def script_warnings(plan: "Plan") -> list[str]:
    """Lines a job script carries for the entries ``plan`` matches (handed to ``Scheduler.render``)."""
    return [f"(known bad, submitted with --force only): {kb.what}: {kb.seen}." for kb in check(plan)]


def message(found: list[KnownBad]) -> str:
    return "; ".join(f"{kb.what}: {kb.seen} (source: {kb.source})" for kb in found)


def refusal(plan: "Plan") -> str | None:
    """Why ``plan`` is refused (it matches an entry and has no ``force``), or None: the one
    rule behind ``kit run``'s refusal and a sweep's refused points."""
    found = check(plan)
    if not found or plan.force:
        return None
    return f"known to hang or fail on the sweep's machine: {message(found)}"


def enforce(plan: "Plan", console: "Console | None" = None) -> list[dict[str, Any]]:
    """Refuse a known-bad plan unless ``plan.force``; with it, warn and return what matched."""
    why = refusal(plan)
    if why:
        raise KitError(why, where=f"recipe {plan.recipe_name} + preset {plan.preset.name}",
                       fix="change the layout or preset, or pass --force to run it anyway")
    found = check(plan)
    if found and console is not None:
        for kb in found:
            console.print(f"[yellow]warning[/]: --force: running a combination known to hang or fail: {kb.what}: "
                          f"{kb.seen} (source: {kb.source})", highlight=False, soft_wrap=True)
    return [kb.describe() for kb in found]


def warn(plan: "Plan", console: "Console") -> None:
    """For --dry-run: say what would be refused, run nothing."""
    for kb in check(plan):
        console.print(f"# warning: known to hang or fail: {kb.what}: {kb.seen} (source: {kb.source}); "
                      f"`kit run` refuses it without --force", highlight=False, markup=False, soft_wrap=True)
