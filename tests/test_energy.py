"""Energy per node (kit.energy), its window in the monitor and its metrics (kit.metrics).

This VM exposes no energy counter, so every counter here is a stand-in from tests/standins/:
a made-up RAPL powercap tree (powercap_tree.py), an NVML stand-in (fake_nvml.py), a C
stand-in of Fujitsu's Power API library built with cc (libpwr/), a pjstata stand-in and the
PJM statistics file the pjsub stand-in writes. The real-run test points KIT_POWERCAP_ROOT at
a made-up tree whose counters a background thread advances.
"""

from __future__ import annotations

import csv
import ctypes
import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kit import energy, metrics, monitor, table
from kit.results import plots, report
from conftest import FAST, STANDINS, bundle_from_output, kit_cli, load

sys.path.insert(0, str(STANDINS))
import powercap_tree  # noqa: E402  (stand-in: RAPL powercap sysfs)
from fake_nvml import FakeNvml  # noqa: E402  (stand-in: NVML)


# -- RAPL through powercap (stand-in tree) --------------------------------------------------------
def test_powercap_counts_packages_and_dram_not_their_parts(tmp_path, monkeypatch):
    root = powercap_tree.make_tree(tmp_path / "powercap", packages=2, psys=True)
    monkeypatch.setenv("KIT_POWERCAP_ROOT", str(root))
    pc = energy.Powercap()
    assert pc.counted == ("package-0", "package-0.dram", "package-1", "package-1.dram")  # no core, no psys
    assert pc.read()["package-1.dram"] == 1.0  # µJ -> J
    assert pc.ranges["package-0"] == pytest.approx(262_143.32885)


def test_powercap_wraparound_is_added_back(tmp_path):
    """A counter that passed max_energy_range_uj between two samples starts again near 0."""
    root = powercap_tree.make_tree(tmp_path / "pc", start_uj=9_000_000, range_uj=10_000_000, dram=False)
    m = energy.Meter(counters=[energy.Powercap(root)])
    m.sample()
    assert powercap_tree.advance(root, "intel-rapl:0", 3_000_000) < 9_000_000  # wrapped
    m.sample()
    powercap_tree.advance(root, "intel-rapl:0", 500_000)
    m.sample()
    assert m.samples[-1][1]["rapl:package-0"] == pytest.approx(3.5, abs=1e-5)
    assert not m.problems


def test_missing_powercap_says_why(tmp_path):
    with pytest.raises(energy.Unavailable, match="does not exist"):
        energy.Powercap(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(energy.Unavailable, match="no RAPL package zone"):
        energy.Powercap(tmp_path / "empty")


# -- NVML (stand-in) ------------------------------------------------------------------------------
def test_nvml_reads_each_gpu_in_joules():
    fake = FakeNvml(devices=2, step_mj=250_000)
    n = energy.Nvml(fake)
    assert n.counted == ("gpu0", "gpu1") and n.describe() == "nvml (2 GPUs)"
    r = n.read()
    assert r["gpu1"] == pytest.approx((10**12 + 1 + 2 * 250_000) / 1e3)  # mJ -> J (one read at detection)
    n.close()
    assert fake.initialized == 0


def test_nvml_without_the_energy_counter_is_unavailable():
    fake = FakeNvml(supported=False)
    with pytest.raises(energy.Unavailable, match="no total-energy counter"):
        energy.Nvml(fake)
    assert fake.initialized == 0  # shut down again


# -- Fujitsu Power API (C stand-in) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def libpwr(tmp_path_factory) -> Path:
    """The C stand-in of Fujitsu's libpwr.so, built with cc."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the Power API stand-in tests/standins/libpwr")
    out = tmp_path_factory.mktemp("libpwr") / "libpwr.so"
    src = STANDINS / "libpwr"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-I", str(src), "-o", str(out), str(src / "libpwr_standin.c")],
                   check=True, capture_output=True)
    return out


def test_power_api_constants_come_from_the_header():
    c = energy.header_constants(STANDINS / "libpwr")
    # the stand-in's own values (implicit enum members counted), not the specification's
    assert (c["PWR_CNTXT_FX1000"], c["PWR_CNTXT_DEFAULT"], c["PWR_CNTXT_VENDOR"]) == (11, 3, 4)
    assert (c["PWR_ATTR_ENERGY"], c["PWR_ATTR_MEASURED_ENERGY"], c["PWR_RET_FAILURE"]) == (102, 120, -1)


def test_power_api_measured_node_energy_and_cmg_estimates(libpwr):
    p = energy.PowerApi(library=str(libpwr), include=str(STANDINS / "libpwr"))
    assert p.counted == ("node",) and p.describe() == "fujitsu-powerapi (node measured, CMG estimates)"
    m = energy.Meter(counters=[p])
    m.sample()
    m.sample()
    totals = m.samples[-1][1]
    assert totals["fujitsu-powerapi:node"] == 50.0  # one stand-in step of the measured counter
    assert totals["fujitsu-powerapi:cmg3.cores.estimated"] == 10.0 and totals["fujitsu-powerapi:cmg0.mem.estimated"] == 2.0
    m.close()
    assert ctypes.CDLL(str(libpwr)).standin_open_contexts() == 0
    assert m.sample() is None  # a closed meter reads nothing (the library's objects are gone)


def test_power_api_without_library_or_headers_says_why(libpwr, tmp_path):
    with pytest.raises(energy.Unavailable, match="not a Fugaku compute node"):
        energy.PowerApi(library=str(tmp_path / "libpwr.so"), include=str(STANDINS / "libpwr"))
    with pytest.raises(energy.Unavailable, match="headers"):
        energy.PowerApi(library=str(libpwr), include=str(tmp_path / "include"))
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "pwr.h").write_text("#define PWR_RET_SUCCESS 0\n")
    with pytest.raises(energy.Unavailable, match="PWR_CNTXT_FX1000"):
        energy.PowerApi(library=str(libpwr), include=str(tmp_path / "inc"))


# -- the monitor's window and the summary ---------------------------------------------------------
def _monitor(meter, window=(1, 4)) -> monitor.Monitor:
    return monitor.Monitor("run-x", ["python", "-m", "nothing"], expected_local=1, node="n0", timed_window=window,
                           meter=meter)


def test_the_window_opens_after_warmup_and_closes_at_the_last_iteration():
    mon = _monitor(energy.Meter(counters=[energy.Nvml(FakeNvml(devices=2, step_mj=250_000))]))
    mon._energy_sample()  # the monitor's start
    for it in (1, 2, 3, 4):
        mon.iteration_logged(it)
    snap = mon.snapshot()
    assert [snap["energy"]["window"][k]["iteration"] for k in ("start", "end")] == [1, 4]
    s = metrics.energy_summary({"n0": snap["energy"]}, tokens_per_iter=8 * 128)
    # two GPUs, one 250 J stand-in step each between the two marks
    assert s["energy_j"] == pytest.approx(500.0)
    assert s["energy_j_per_iter"] == pytest.approx(500.0 / 3)  # iterations 2..4 after the warm-up's line
    assert s["tokens_per_j"] == pytest.approx(3 * 8 * 128 / 500.0)
    assert s["avg_power_w"] > 0 and s["energy_source"] == "nvml (2 GPUs)"
    assert s["energy_j_per_node"]["n0"]["domains"] == {"nvml:gpu0": 250.0, "nvml:gpu1": 250.0}


def test_no_counter_gives_none_and_the_reason_never_zero():
    meter = energy.Meter.detect(kinds=(energy.Powercap,)) if not Path("/sys/class/powercap").exists() else \
        energy.Meter(unavailable=["powercap: made unavailable for this test"])
    mon = _monitor(meter)
    for it in (1, 2, 3, 4):
        mon.iteration_logged(it)
    s = metrics.energy_summary({"n0": mon.snapshot()["energy"]}, tokens_per_iter=1024)
    assert all(s[k] is None for k in ("energy_j", "energy_j_per_iter", "tokens_per_j", "avg_power_w"))
    assert "n0: no energy counter exposed (powercap:" in s["energy_note"]


def test_an_unfinished_window_or_a_still_counter_is_not_a_measurement():
    mon = _monitor(energy.Meter(counters=[energy.Nvml(FakeNvml())]))
    mon.iteration_logged(1)
    mon.iteration_logged(2)  # stopped before iteration 4
    s = metrics.energy_summary({"n0": mon.snapshot()["energy"]}, tokens_per_iter=1)
    assert s["energy_j"] is None and "did not complete" in s["energy_note"]
    still = _monitor(energy.Meter(counters=[energy.Nvml(FakeNvml(step_mj=0))]))
    for it in (1, 4):
        still.iteration_logged(it)
    s = metrics.energy_summary({"n0": still.snapshot()["energy"]}, tokens_per_iter=1)
    assert s["energy_j"] is None and "did not advance" in s["energy_note"]


def test_other_nodes_are_interpolated_at_the_window_and_summed():
    local = {"source": "rapl (package-0)", "counted": ["rapl:package-0"],
             "samples": [[100.0, {"rapl:package-0": 0.0}], [102.0, {"rapl:package-0": 40.0}],
                         [106.0, {"rapl:package-0": 120.0}]],
             "window": {"start": {"t": 102.0, "iteration": 1}, "end": {"t": 106.0, "iteration": 5}}}
    remote = {"source": "rapl (package-0)", "counted": ["rapl:package-0"],
              "samples": [[101.0, {"rapl:package-0": 0.0}], [111.0, {"rapl:package-0": 100.0}]]}
    s = metrics.energy_summary({"a": local, "b": remote}, tokens_per_iter=10)
    assert s["energy_j_per_node"]["b"]["energy_j"] == pytest.approx(40.0)  # 10 W between t=102 and t=106
    assert s["energy_j"] == pytest.approx(120.0) and s["avg_power_w"] == pytest.approx(30.0)
    assert "interpolated" in s["energy_note"]
    late = {**remote, "samples": [[104.0, {"rapl:package-0": 0.0}], [111.0, {"rapl:package-0": 70.0}]]}
    assert "b: its energy samples do not cover" in metrics.energy_summary({"a": local, "b": late}, tokens_per_iter=1)["energy_note"]


# -- the job's accounted energy (PJM) --------------------------------------------------------------
def test_acct_econ_is_read_from_pjstata_and_absent_from_the_statistics_file(monkeypatch):
    # the PJM -S statistics file (as the pjsub stand-in writes it) documents no energy field
    assert energy.parse_acct_econ("PJM CODE        : 0\nEXIT CODE       : 0\nREASON          : -\n") is None
    assert energy.parse_acct_econ("ACCT_ECON : 12.5 kWh\n") == (12.5, "kWh")
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")  # the pjstata stand-in
    acc = energy.accounted_energy("42")
    assert acc["value"] == 987.25 and acc["source"] == "pjstata -j 42" and "unit not stated" in acc["unit"]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert energy.accounted_energy("42")["value"] is None


def test_kit_collect_keeps_the_accounted_energy_in_a_verified_bundle(tmp_path, monkeypatch):
    from kit import bundle as bundle_mod, jobs

    b = bundle_mod.Bundle.create(tmp_path, recipe="tiny", preset="baseline")
    b.finalize("ok")
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")  # the pjstata stand-in
    jobs._record_accounted_energy(b, "77")
    assert energy.parse_acct_econ((b.path / "logs" / "pjm.77.acct").read_text()) == (987.25, "")
    assert jobs._refold_scheduler_files(b.path)  # re-checksummed with the scheduler's files
    assert "logs/pjm.77.acct" in bundle_mod.read_manifest(b.path).files


# -- the report, the plot and compare --------------------------------------------------------------
def _row(label_freq: int | None, spi: float, jpi: float | None) -> dict:
    settings = [{"name": "freq_mhz", "requested": label_freq}] if label_freq else []
    prov = {"plan": {"recipe": "tiny", "presets": ["baseline"], "nodes": 1, "ranks_per_node": 1, "dp": 1, "tp": 1, "pp": 1, "micro_batch": 1, "global_batch": 8,
                     "settings": settings}, "recipe": {"model": {"layers": 2, "hidden": 64, "vocab": 100, "seq": 32}}}
    summary = {"sec_per_iter": spi, "energy_j_per_iter": jpi, "tokens_per_j": None if jpi is None else 256 / jpi}
    f = table.row_fields({"id": f"r{label_freq}", "status": "ok", "created": "2026-12-03T10:00:00"}, {"summary": summary},
                         prov)
    f["group"], f["path"] = report.group_title(f), "-"
    return f


def test_report_adds_energy_columns_only_where_measured(tmp_path):
    measured = report.Report(rows=[_row(None, 1.5, 120.0), _row(2200, 1.2, 140.0)])
    text = report.markdown(measured)
    assert "| J/it | tokens/J | Notes |" in text and "| 120 | 2.13 |" in text
    rows = list(csv.DictReader(io.StringIO(report.to_csv(measured))))
    assert [r["j_per_iter"] for r in rows] == ["120.0", "140.0"]
    plain = report.markdown(report.Report(rows=[_row(None, 1.5, None)]))
    assert "J/it" not in plain and table.HEADER in plain
    written = plots.plot(measured, tmp_path / "plots")
    assert tmp_path / "plots" / "tradeoff.png" in written
    assert (tmp_path / "plots" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tmp_path / "none" / "tradeoff.png" not in plots.plot(report.Report(rows=[_row(None, 1.5, None)]),
                                                                 tmp_path / "none")


def test_compare_judges_energy_like_any_metric(tmp_path, monkeypatch):
    """By its declared direction, over the runs of two groups (kit.results.judge)."""
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    from kit.results import judge
    from verdict_bundles import make_group

    runs = [[1.0, 1.0]] * 5
    a = make_group(tmp_path, runs, group="ga", summary={"energy_j_per_iter": 100.0, "tokens_per_j": 10.0, "energy_j": 1.0,
                                                         "avg_power_w": 50.0})
    b = make_group(tmp_path, runs, group="gb", summary={"energy_j_per_iter": 90.0, "tokens_per_j": 9.0, "energy_j": 1.0,
                                                         "avg_power_w": 50.0})
    j = judge.judge(judge.load_side(a), judge.load_side(b))
    assert j.get("energy_j_per_iter").judgement.verdict == "better" and j.get("tokens_per_j").judgement.verdict == "worse"
    assert {"energy_j", "energy_j_per_iter", "tokens_per_j", "avg_power_w"} <= set(judge.shown())
    assert j.get("final_loss").judgement is None  # no better direction: shown, not judged


# -- a real run against a made-up powercap tree ---------------------------------------------------
@pytest.mark.slow
def test_real_run_measures_energy_from_a_made_up_powercap_tree(tmp_path):
    """A tiny real run whose monitor reads a made-up RAPL tree (stand-in) that a thread advances."""
    root = powercap_tree.make_tree(tmp_path / "powercap", packages=1)
    stop = threading.Event()

    def tick():
        while not stop.wait(0.05):
            powercap_tree.advance(root, "intel-rapl:0", 1_000_000)  # 1 J per 50 ms: a 20 W stand-in
            powercap_tree.advance(root, "intel-rapl:0:1", 100_000)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        proc = kit_cli("run", "tiny", "--preset", "baseline", *FAST, "--out", str(tmp_path / "res"),
                       env={"KIT_POWERCAP_ROOT": str(root)}, check=True)
    finally:
        stop.set()
        t.join()
    b = bundle_from_output(proc.stdout)
    s = load(b, "metrics.json")["summary"]
    assert s["energy_source"] == "rapl (package-0, package-0.dram)"
    assert s["energy_j"] > 0 and s["energy_j_per_iter"] > 0 and s["tokens_per_j"] > 0 and s["avg_power_w"] > 0
    assert s["energy_j_per_iter"] == pytest.approx(s["energy_j"] / 5)  # iterations 1..6: five after the warm-up line
    assert "RAPL counts CPU packages and DRAM" in s["energy_note"]
    rows = list(csv.DictReader(io.StringIO(kit_cli("report", str(b), "-f", "csv", check=True).stdout)))
    assert float(rows[0]["j_per_iter"]) == pytest.approx(s["energy_j_per_iter"])
