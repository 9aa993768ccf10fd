"""One declaration per metric (kit.metricdefs): every place that lists metrics reads it."""

from __future__ import annotations

import dataclasses

from kit import logparse, metricdefs, metrics, reproduce, table
from kit.results import judge, plots, report


def _records():
    lines = [f"iteration {i}/ 4 | elapsed time per iteration (ms): {100 + i} | lm loss: {9 - i}.0 |" for i in range(1, 5)]
    return logparse.parse_lines(lines)


def _summary(**kw):
    args = dict(layers=2, hidden=64, seq=32, vocab=100, global_batch=8, checkpoint_activations=False, tp=1,
                world_size=1, ranks_per_node=1, nodes=1, warmup_iters=1, rank_peak_rss_mib={"n": {"0": 10.0}})
    return metrics.summarize(_records(), **{**args, **kw})


def test_summary_keys_are_exactly_the_declared_ones():
    s = _summary()
    assert set(s) == set(metricdefs.summary_keys())
    assert s["sec_per_iter"] == 0.103 and s["final_loss"] == 5.0 and s["iterations_timed"] == 3


def test_parser_names_come_from_the_log_field_declarations():
    rec = logparse.parse_line("iteration 3/ 9 | elapsed time per iteration (ms): 12.5 | samples per second: 4 | foo bar: 1 |")
    assert rec.fields == {"elapsed_ms": 12.5, "samples_per_sec": 4.0, "foo_bar": 1.0}
    assert logparse._NAMES == metricdefs.log_names()


def test_every_list_of_metrics_reads_the_declarations():
    judged = {judge.TIMING, judge.MEMORY, *judge.INVERSE_OF_TIMING}
    assert judged | set(judge.shown()) == {m.name for m in metricdefs.METRICS if m.compare}
    assert "duration_s" in judge.shown() and not judged & set(judge.shown())
    assert {c.name for c in reproduce.compare_metrics({}, {}, reproduce.Tolerance())} == \
        {"sec_per_iter", "tflops", "peak_mem_mib", "final_loss", "loss_curve"}
    assert [c[2] for c in plots.CHARTS] == ["sec_per_iter.png", "tflops.png", "memory.png"]
    assert all(m.column in report.CSV_COLUMNS for m in metricdefs.METRICS if m.column)


def test_a_new_declaration_reaches_row_csv_compare_and_show(monkeypatch):
    """Adding a metric is one declaration: it then appears in the row, the CSV and compare."""
    new = metricdefs.Metric("widgets", "widgets", "test only", better="higher", column="widgets", compare=True,
                            show=True, finished_only=True)
    monkeypatch.setattr(metricdefs, "METRICS", (*metricdefs.METRICS, new))
    monkeypatch.setattr(metricdefs, "BY_NAME", {**metricdefs.BY_NAME, "widgets": new})
    prov = {"plan": {"nodes": 1, "ranks_per_node": 1, "dp": 1, "tp": 1, "pp": 1, "micro_batch": 1, "global_batch": 8,
                     "settings": []}}
    f = table.row_fields({"status": "ok"}, {"summary": {"widgets": 3}}, prov)
    assert f["widgets"] == 3
    assert table.row_fields({"status": "stalled"}, {"summary": {"widgets": 3}}, prov)["widgets"] is None
    assert "widgets" in judge.shown()  # compare lists it (shown with its ratio)
    assert dataclasses.replace(new, better="lower").better == "lower"


def test_compare_verdicts_follow_the_declared_direction():
    """kit compare judges sec/it (lower is better), its inverses (higher is better) and memory
    (lower is better): the declarations say the same."""
    assert metricdefs.BY_NAME[judge.TIMING].better == "lower" and metricdefs.BY_NAME[judge.MEMORY].better == "lower"
    assert {metricdefs.BY_NAME[m].better for m in judge.INVERSE_OF_TIMING} == {"higher"}
    assert "final_loss" in judge.shown()  # shown, not judged: numerics are reproduce's


def test_table_cells_use_the_declared_formats():
    r = table.row(nodes=1, size="7M", dp=1, tp=1, pp=1, mbs=1, gbs=8, mem_mib=744.0, sec_per_iter=12.34,
                  tflops=0.005, pflops=None, note="12-03")
    assert r == "| 1 | 7M | 1 | 1 | 1 | 1 | 8 | 744.0 MiB | 12.3 | 0.0050 | - | 12-03 |"


def test_the_bundle_reader_checks_each_declared_metric_by_its_kind():
    """An untrusted bundle's summary: declared numbers must be numbers, texts strings (or null)."""
    import pytest

    from kit import bundle_reader

    ok = {"summary": {"energy_j_per_iter": 1.5, "energy_note": "why", "sec_per_iter": None}}
    assert bundle_reader.validate_document("metrics.json", ok, "m.json") == ok
    for bad in ({"energy_j_per_iter": "12"}, {"tokens_per_j": True}, {"energy_note": 5}):
        with pytest.raises(bundle_reader.BundleReadError, match=f"summary.{next(iter(bad))} is"):
            bundle_reader.validate_document("metrics.json", {"summary": bad}, "m.json")
