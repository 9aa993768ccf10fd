"""A sweep's repeat: each point run N times as a group in OUT/<sweep>-<key>/, resumable by
count, reported as one row per group. Points are written by a stand-in for the run (the
kit's bundle writer with chosen timings): what is pinned is the bookkeeping, not a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from kit import bundle as bundle_mod, sweep
from kit.errors import KitError
from kit.results import store
from verdict_bundles import make_bundle


def _points_written(calls: list, fail_on: set[int] = frozenset()):
    def run_point(p, out, record, console):
        calls.append((p.key, out))
        status = "failed" if len(calls) in fail_on else "ok"
        b = make_bundle(out, [0.4, 0.41], preset="+".join(p.presets), group=record.get("group"), status=status,
                        extra={sweep.SWEEP_FILE: record})
        return status, b, "boom" if status == "failed" else ""
    return run_point


def _sweep(tmp_path: Path, repeat: int) -> Path:
    f = tmp_path / "rep.yaml"
    f.write_text(f"name: rep\nrecipes: [tiny]\npresets: [baseline, tcmalloc]\nrepeat: {repeat}\n")
    return f


def test_repeat_runs_each_point_as_a_group_and_resumes_by_count(tmp_path):
    out, calls = tmp_path / "out", []
    res = sweep.run_sweep(_sweep(tmp_path, 3), out=out, console=Console(quiet=True), run_point=_points_written(calls, {2}))
    pts = sweep.points(sweep.load(_sweep(tmp_path, 3)))
    assert len(calls) == 6 and res.exit_code == 1  # one run failed: the point says so
    for p in pts:
        gdir = out / f"rep-{p.key}"
        bundles = store.find([gdir])
        assert len(bundles) == 3 and {bundle_mod.read_manifest(b).group for b in bundles} == {f"rep-{p.key}"}
    assert [r["state"] for r in res.rows] == ["failed", "ok"]
    # resume: only the failed repeat runs again; raising repeat to 4 runs one more per point
    calls.clear()
    res = sweep.run_sweep(_sweep(tmp_path, 3), out=out, console=Console(quiet=True), run_point=_points_written(calls))
    assert [c[0] for c in calls] == [pts[0].key] and res.exit_code == 0
    calls.clear()
    res = sweep.run_sweep(_sweep(tmp_path, 4), out=out, console=Console(quiet=True), run_point=_points_written(calls))
    assert sorted(c[0] for c in calls) == sorted(p.key for p in pts) and [p.key for p in sweep.points(sweep.load(_sweep(tmp_path, 4)))] == [p.key for p in pts]
    rep = sweep.summary_report(res)
    (_, entries), = rep.sections()
    assert [f["n_ok"] for f in entries] == [4, 4] and len(rep.rows) == 9  # 8 ok + the failed one, every sample


def test_repeat_must_be_positive(tmp_path):
    with pytest.raises(KitError, match="repeat"):
        sweep.load(_sweep(tmp_path, 0))
