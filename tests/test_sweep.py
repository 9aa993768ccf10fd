"""kit sweep: the grid, point keys, resuming, refused points, concurrency — with real runs."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from kit import bundle as bundle_mod
from kit.errors import KitError
from kit import sweep
from kit.results import store
from conftest import REPO, kit_cli

TABLE_SWEEP = REPO / "sweeps" / "table-single-node.yaml"
FAST_SET = "[train.iters=6, train.warmup_iters=1]"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- the sweep file -----------------------------------------------------------------------------
def test_shipped_table_sweep_has_the_tables_single_node_rows():
    sw = sweep.load(TABLE_SWEEP)
    pts = sweep.points(sw)
    assert [("+".join(p.presets), p.layout) for p in pts] == [
        ("baseline", "dp1"), ("noretention", "dp1"), ("boost", "dp1"), ("tcmalloc", "dp1"), ("tuned", "dp1"),
        ("mpn4", "dp4"), ("mpn4", "tp4"), ("mpn4-tuned", "dp4"), ("mpn4-tuned", "tp4")]
    assert all(p.recipe == "tiny" and p.nodes == 1 for p in pts)
    assert len({p.key for p in pts}) == 9
    # keys are stable: a function of the inputs only
    assert [p.key for p in sweep.points(sweep.load(TABLE_SWEEP))] == [p.key for p in pts]
    assert sweep.points(sw, launcher="slurm")[0].key != pts[0].key


def test_dry_run_lists_points_and_refusals(tmp_path):
    proc = kit_cli("sweep", str(TABLE_SWEEP), "--dry-run", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("[")]
    assert len(lines) == 9 and all(": to run" in x for x in lines)
    assert sum("will be refused: known to hang" in x for x in lines) == 2
    assert not (tmp_path / "out").exists()


def test_bad_sweep_files_are_one_line_errors(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\nrecipes: [tiny]\npresets: [baseline]\nnodez: [1]\n")
    proc = kit_cli("sweep", str(bad), "--dry-run")
    assert proc.returncode == 2 and "nodez: unknown key" in proc.stderr and proc.stderr.count("\n") == 1
    empty = write(tmp_path / "empty.yaml", "name: x\n")
    with pytest.raises(KitError, match="no points"):
        sweep.load(empty)
    both = write(tmp_path / "both.yaml", "name: x\nrecipes: [tiny]\npresets: [a]\ngrids: [{recipes: [tiny], presets: [b]}]\n")
    with pytest.raises(KitError, match="not both"):
        sweep.load(both)


# -- a real sweep: adopts a finished bundle, runs the rest, refuses the known-bad, resumes ----------------
@pytest.mark.slow
def test_real_sweep_resumes_and_reports(real_bundles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    adopted = Path(shutil.copytree(real_bundles[0], out / real_bundles[0].name))  # `kit run --preset baseline` FAST
    sf = write(tmp_path / "mini.yaml", f"""
name: mini
set: {FAST_SET}
grids:
  - recipes: [tiny]
    presets: [baseline, tcmalloc]
  - recipes: [tiny]
    presets: [mpn4]
    layouts: [{{name: tp4, set: [parallel.tp=4]}}]
""")
    proc = kit_cli("sweep", str(sf), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "[1/3] tiny [baseline]" in text and f"done, skipped ({adopted.name})" in text
    assert "[2/3] tiny [tcmalloc]" in text and "running" in text
    assert "[3/3] tiny [mpn4] tp4" in text and "known to hang" in text
    new = [p for p in store.find([out]) if p != adopted]
    assert len(new) == 1 and "tcmalloc" in new[0].name
    assert bundle_mod.verify(new[0]).ok
    sj = json.loads((new[0] / "sweep.json").read_text())
    pts = sweep.points(sweep.load(sf))
    assert sj["key"] == pts[1].key and sj["sweep"] == "mini" and sj["point"]["presets"] == ["tcmalloc"]
    assert "sweep.json" in bundle_mod.read_manifest(new[0]).files  # checksummed with the rest
    # the report: the table's layout, the refused TP 4 row as `-` (as the table shows it)
    report = (out / "REPORT-mini.md").read_text()
    assert "### 7M model, Sequence Length=128" in report
    assert "| 1 | 7M | 1 | 1 | 1 | 1 | 8 |" in report
    assert "| 1 (LD_PRELOAD=libtcmalloc.so) | 7M | 1 | 1 | 1 | 1 | 8 |" in report
    assert "| 1 (max-proc-per-node=4) | 7M | 1 | 4 | 1 | 1 | 8 | - | - | - | - |" in report
    assert report in text.replace("\r", "")
    state = json.loads((out / ".sweep" / "mini.json").read_text())
    assert state["points"][pts[1].key]["status"] == "ok" and "claim" not in state["points"][pts[1].key]

    # resume: everything finished is skipped, nothing new is written (not timed: the machine may be loaded)
    again = kit_cli("sweep", str(sf), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done, skipped") == 2
    assert len(store.find([out])) == 2


# -- concurrency: several sweeps on one results directory at once -----------------------------------
def _fake_point(src: str, delay: float):
    def run_point(p, out, record, console):
        time.sleep(delay)
        b = bundle_mod.Bundle.create(out, recipe=p.recipe, preset="+".join(p.presets))
        for rel in ("metrics.json", "provenance.json", "recipe.yaml", "preset.yaml", "plan.json"):
            shutil.copy(Path(src) / rel, b.path / rel)
        b.write_json(sweep.SWEEP_FILE, record)
        time.sleep(delay)
        b.finalize("ok")
        return "ok", b.path, ""
    return run_point


def _sweep_worker(args):
    sf, out, src = args
    res = sweep.run_sweep(Path(sf), out=Path(out), console=Console(quiet=True), run_point=_fake_point(src, 0.05))
    return [(r["key"], r["state"], r.get("skipped", False)) for r in res.rows]


@pytest.mark.slow
def test_concurrent_sweeps_run_each_point_once(real_bundles, tmp_path):
    sf = write(tmp_path / "grid.yaml", f"""
name: grid
set: {FAST_SET}
recipes: [tiny]
presets: [baseline, noretention, boost, tcmalloc, tuned, [boost, tcmalloc]]
nodes: [1, 2]
""")
    out = tmp_path / "out"
    n_points = len(sweep.points(sweep.load(sf)))
    assert n_points == 12
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        results = pool.map(_sweep_worker, [(str(sf), str(out), str(real_bundles[0]))] * 4, chunksize=1)
    bundles = store.find([out])
    keys = [json.loads((b / "sweep.json").read_text())["key"] for b in bundles]
    assert sorted(keys) == sorted({p.key for p in sweep.points(sweep.load(sf))}), "a point ran twice or not at all"
    for b in bundles:
        assert bundle_mod.verify(b).ok
    ran = [k for rows in results for k, state, skipped in rows if not skipped]
    assert len(ran) == n_points
    state = json.loads((out / ".sweep" / "grid.json").read_text())
    assert len(state["points"]) == n_points and all(v["status"] == "ok" for v in state["points"].values())
    assert not any("claim" in v for v in state["points"].values())
    # a further run finds every point done
    rows = _sweep_worker((str(sf), str(out), str(real_bundles[0])))
    assert all(state == "ok" and skipped for _, state, skipped in rows)


@pytest.mark.slow
def test_dead_claim_is_taken_over_and_failed_point_rerun(real_bundles, tmp_path):
    sf = write(tmp_path / "one.yaml", f"name: one\nset: {FAST_SET}\nrecipes: [tiny]\npresets: [baseline, boost]\n")
    out = tmp_path / "out"
    pts = sweep.points(sweep.load(sf))
    with sweep.locked_state(out, "one") as st:  # a sweep that died while running point 0
        st["points"][pts[0].key] = {"claim": {"host": __import__("socket").gethostname(), "pid": 2 ** 22 + 7, "since": 0}}
    calls = []

    def failing_then_ok(p, o, rec, con):
        calls.append(p.key)
        if len(calls) == 1:
            b = bundle_mod.Bundle.create(o, recipe="tiny", preset="baseline")
            b.write_json(sweep.SWEEP_FILE, rec)
            b.finalize("failed", "boom")
            return "failed", b.path, "boom"
        return _fake_point(str(real_bundles[0]), 0)(p, o, rec, con)

    res = sweep.run_sweep(sf, out=out, console=Console(quiet=True), run_point=failing_then_ok)
    assert calls == [pts[0].key, pts[1].key] and res.exit_code == 1
    res = sweep.run_sweep(sf, out=out, console=Console(quiet=True), run_point=failing_then_ok)
    assert calls == [pts[0].key, pts[1].key, pts[0].key] and res.exit_code == 0  # failed point run again
