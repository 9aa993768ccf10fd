"""Bundles written through the kit's own bundle writer with chosen timings (no training run):
what kit compare / report read, with per-iteration series picked so a test knows the answer."""

from __future__ import annotations

from pathlib import Path

from kit import bundle as bundle_mod

RECIPE = {"model": {"layers": 2, "hidden": 128, "heads": 4, "vocab": 50257, "seq": 128, "checkpoint_activations": False}}


def make_bundle(out: Path, iter_s: list[float], *, preset: str = "baseline", group: str | None = None,
                status: str = "ok", warmup: int = 1, plan: dict | None = None, host: dict | None = None,
                software: dict | None = None, mem: float = 700.0, losses: list[float] | None = None,
                extra: dict[str, dict] | None = None, summary: dict | None = None) -> Path:
    """A finalized bundle whose iterations after ``warmup`` take ``iter_s`` seconds (sec/it their median)."""
    b = bundle_mod.Bundle.create(out, recipe="tiny", preset=preset, group=group)
    times = [iter_s[0]] * warmup + list(iter_s)
    losses = losses or [10.0 - 0.1 * i for i in range(len(times))]
    timed = sorted(iter_s)
    n = len(timed)
    spi = timed[n // 2] if n % 2 else (timed[n // 2 - 1] + timed[n // 2]) / 2
    summary = {"warmup_iters": warmup, "iterations_timed": n, "iterations_logged": len(times), "sec_per_iter": spi,
               "tflops": 1.0 / spi, "tflops_per_rank": 1.0 / spi, "samples_per_sec": 8 / spi, "peak_mem_mib": mem,
               "final_loss": losses[-1], "status": status, **(summary or {})}
    iterations = [{"iteration": i + 1, "elapsed_ms": t * 1000, "loss": losses[i]} for i, t in enumerate(times)]
    b.write_json("metrics.json", {"summary": summary, "iterations": iterations})
    p = {"recipe": "tiny", "recipe_sha256": "r" * 64, "overrides": [], "presets": [preset], "preset_sha256": preset,
         "nodes": 1, "world_size": 1, "ranks_per_node": 1, "dp": 1, "tp": 1, "pp": 1, "zero": 1, "micro_batch": 1,
         "global_batch": 8, **(plan or {})}
    b.write_json("provenance.json", {
        "plan": p, "recipe": RECIPE, "runtime": {"runtime": "host"},
        "software": {"python": "3.11.7", "torch": "2.13.0", "deepspeed": "0.19.8", **(software or {})},
        "host": {"hostname": "testhost", "cpu_model": "Xeon", "arch": "x86_64", "usable_cpus": 2, "numa_nodes": 1,
                 **(host or {})}})
    b.write_yaml("recipe.yaml", RECIPE)
    b.write_yaml("preset.yaml", {"name": preset})
    for name, doc in (extra or {}).items():
        b.write_json(name, doc)
    b.finalize(status)
    return b.path


def make_group(out: Path, runs: list[list[float]], *, group: str, **kw) -> Path:
    """``len(runs)`` bundles sharing ``group`` in ``out/group/``, as `kit run --repeat` lays them out."""
    for r in runs:
        make_bundle(out / group, r, group=group, **kw)
    return out / group
