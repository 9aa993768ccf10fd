"""kit report with repeats: a group is one row (median, spread, N) in the table; CSV and JSON
carry every sample; --plot draws them. Bundles written by the kit's writer with chosen timings."""

from __future__ import annotations

import csv
import io
import json

from kit.results import report
from conftest import kit_cli
from verdict_bundles import make_bundle, make_group

RUNS = [[0.40, 0.40], [0.42, 0.42], [0.41, 0.41], [0.50, 0.50], [0.39, 0.39]]


def test_a_group_is_one_row_with_median_and_spread(tmp_path):
    res = tmp_path / "res"
    make_group(res, RUNS, group="group-base")
    make_bundle(res / "group-base", [9.0, 9.0], group="group-base", status="failed")
    single = make_bundle(res, [0.30, 0.30], preset="tcmalloc")
    rep = report.build([res])
    assert len(rep.rows) == 7
    (title, entries), = rep.sections()
    assert len(entries) == 2
    g = next(f for f in entries if f.get("repeat_group") == "group-base")
    assert g["sec_per_iter"] == 0.41 and g["n"] == 6 and g["n_ok"] == 5
    assert sorted(g["samples"]["sec_per_iter"]) == [0.39, 0.40, 0.41, 0.42, 0.50]
    assert g["note"].endswith("N=5 of 6 ok: sec/it 0.39-0.5")
    text = report.markdown(rep)
    table_rows = [ln for ln in text.splitlines() if ln.startswith("| 1")]
    assert len(table_rows) == 2 and any("| 0.410 |" in r and "N=5 of 6 ok" in r for r in table_rows)
    assert "- N=: a group of repeats, one row" in text

    proc = kit_cli("report", str(res), "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 7 and sum(r["repeat_group"] == "group-base" for r in rows) == 6
    assert {r["id"] for r in rows if not r["repeat_group"]} == {single.name}
    js = json.loads(kit_cli("report", str(res), "-f", "json").stdout)
    assert len(js["rows"]) == 7
    (grp,) = js["groups"]
    assert grp["n"] == 6 and grp["ok"] == 5 and grp["sec_per_iter"] == {"median": 0.41, "min": 0.39, "max": 0.5}

    plots = tmp_path / "plots"
    proc = kit_cli("report", str(res), "--plot", str(plots))
    assert proc.returncode == 0, proc.stderr
    for name in ("sec_per_iter.png", "tflops.png", "memory.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ungrouped_bundles_stay_one_row_each(tmp_path):
    for r in RUNS[:3]:
        make_bundle(tmp_path, r)
    (_, entries), = report.build([tmp_path]).sections()
    assert len(entries) == 3 and not any("samples" in f for f in entries)
