"""A small, valid bundle written by the kit's own bundle writer, without a training run.

For tests of what happens to a bundle as bytes (pack, import, sign, verify): the plan,
recipe and preset are the real resolved ``tiny`` plan; the metrics and provenance documents
are minimal ones with the keys the verifier requires (their figures are not measurements).
"""

from __future__ import annotations

from pathlib import Path

from kit import bundle as bundle_mod, plan as plan_mod


def make_bundle(out: Path, *, log_bytes: int = 2000) -> Path:
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
    b = bundle_mod.Bundle.create(out, recipe="tiny", preset="baseline")
    b.write_yaml("recipe.yaml", p.recipe.model_dump(by_alias=True))
    b.write_yaml("preset.yaml", p.preset.model_dump())
    b.write_text("plan.json", p.model_dump_json(indent=2) + "\n")
    b.write_json("metrics.json", {"summary": {"sec_per_iter": None}, "iterations": []})
    b.write_json("provenance.json", {"plan": p.summary(), "runtime": {}, "software": {}, "host": {}})
    b.write_text("logs/launcher.log", "".join(f"iteration {i:6d} | synthetic log line\n" for i in range(log_bytes // 36 + 1)))
    b.finalize("ok")
    assert bundle_mod.verify(b.path).ok, bundle_mod.verify(b.path).problems
    return b.path
