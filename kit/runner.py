"""Running a plan: make its bundle, then execute it here or submit it as a batch job.

``run()`` is the dispatch: the known-bad gate, a new bundle with the resolved inputs, then
either :func:`kit.execute.execute` on this node (direct launchers: local, mpirun, srun) or
:func:`kit.jobs.submit` of a job script that executes it on the allocated nodes (batch
launchers: slurm, pjm; see ``kit job-run``). Whatever happens, the bundle says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from kit import jobs, known_bad, redact, runtimes, schedulers
from kit.bundle import Bundle
from kit.errors import KitError
from kit.execute import execute
from kit.outcome import Outcome
from kit.plan import Plan


def write_inputs(b: Bundle, plan: Plan) -> None:
    """The resolved recipe and preset, and the plan that `kit job-run`/`kit reproduce` read back."""
    b.write_yaml("recipe.yaml", plan.recipe.model_dump(by_alias=True))
    b.write_yaml("preset.yaml", plan.preset.model_dump())
    b.write_json("plan.json", plan.model_dump(mode="json"))


def run(plan: Plan, out_dir: Path, console: Console, *, extra_files: dict[str, Any] | None = None,
        group: str | None = None) -> Outcome:
    """``extra_files``: JSON documents written into the bundle with its inputs (e.g. a sweep's
    ``sweep.json`` with the point key), so they are checksummed with the rest. ``group``: the
    manifest's group id, shared by repeats of one plan (kit.repeat)."""
    seen_bad = known_bad.enforce(plan, console)  # KitError unless --force
    if plan.batch:
        refuse_secrets(plan)
    else:  # the image is inspected where it runs: here (a batch job's node may see another)
        runtimes.get(plan.runtime, image=plan.image).refuse_bundle_dir(out_dir)
    b = Bundle.create(out_dir, recipe=plan.recipe_name, preset=plan.preset.name, group=group)
    write_inputs(b, plan)
    if seen_bad:
        b.write_json("known_bad.json", {"forced": True, "matches": seen_bad})
    for name, doc in (extra_files or {}).items():
        b.write_json(name, doc)
    if plan.batch:
        return jobs.submit(plan, b, schedulers.get(plan.launcher), console)
    if plan.nodes > 1:  # srun/mpirun in an allocation: a monitor on every node
        return jobs.execute_across_nodes(plan, b, console, plan.launcher, schedulers.of_allocation())
    return execute(plan, b, console)


def refuse_secrets(plan: Plan) -> None:
    """A batch job runs the plan it reads back from its bundle, and a bundle never holds a
    secret (it is redacted on the way in): a plan that carries one would run redacted."""
    found = redact.secrets_in(plan.model_dump(mode="json"))
    if found:
        raise KitError(f"the plan carries a secret at {', '.join(found[:4])}; a batch job reads its plan back from the "
                       f"bundle, which never holds secrets",
                       where=f"recipe {plan.recipe_name} + preset {plan.preset.name} (--launcher {plan.launcher})",
                       fix="pass it through the environment instead (export it before `kit run`: the job inherits it)")
