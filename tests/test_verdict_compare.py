"""kit compare's verdicts on bundles and groups (kit.results.judge): ratio, interval, basis,
noise floor, not comparable. Bundles are written by the kit's writer with chosen timings, so
each test knows the right answer and none depends on how loaded the machine is."""

from __future__ import annotations

import json
import math

import pytest

from kit import bundle as bundle_mod, noise
from kit.results import compare, judge
from conftest import kit_cli
from verdict_bundles import make_bundle, make_group

BASE = [[1.00, 1.02, 0.99], [1.05, 1.06, 1.04], [0.97, 0.98, 0.99], [1.10, 1.08, 1.09], [1.01, 1.00, 1.03]]
FAST = [[x * 0.8 for x in run] for run in BASE]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))  # no noise floor unless a test stores one


def test_groups_of_five_are_judged_over_runs(tmp_path):
    a = make_group(tmp_path, BASE, group="group-a")
    b = make_group(tmp_path, FAST, group="group-b", preset="tcmalloc")
    j = judge.judge(judge.load_side(a), judge.load_side(b))
    spi, tf = j.get("sec_per_iter").judgement, j.get("tflops").judgement
    assert spi.basis == "runs" and (spi.n_a, spi.n_b) == (5, 5)
    assert spi.verdict == tf.verdict == "faster"
    assert spi.ratio == pytest.approx(0.8) and spi.high < 1 and tf.low > 1
    assert tf.ratio == pytest.approx(1 / spi.ratio) and tf.low == pytest.approx(1 / spi.high)
    back = judge.judge(judge.load_side(b), judge.load_side(a)).get("sec_per_iter").judgement
    assert back.verdict == "slower" and back.ratio == pytest.approx(1 / spi.ratio)

    proc = kit_cli("compare", str(a), str(b), "--json")
    assert proc.returncode == 0, proc.stderr
    js = json.loads(proc.stdout)
    assert js["comparable"] and js["sides"]["a"]["group"] == "group-a" and js["sides"]["b"]["ok"] == 5
    m = {x["name"]: x for x in js["metrics"]}
    assert m["sec_per_iter"]["verdict"] == "faster" and m["sec_per_iter"]["basis"] == "runs"
    assert m["sec_per_iter"]["low"] < m["sec_per_iter"]["ratio"] < m["sec_per_iter"]["high"] < 1
    assert m["final_loss"]["judged"] is False
    assert any(d["key"] == "presets" for d in js["differences"])  # the settings diff is still there
    text = kit_cli("compare", str(a), str(b)).stdout
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("sec_per_iter"))
    assert line.rstrip().endswith("faster") and "0.800" in line and "timing judged over 5 vs 5 runs" in text


def test_one_run_per_side_uses_iterations_and_the_noise_floor(tmp_path):
    a = make_bundle(tmp_path, [1.00, 1.01, 0.99, 1.00, 1.02, 1.00])
    b = make_bundle(tmp_path, [0.90, 0.91, 0.90, 0.89, 0.90, 0.91], preset="tuned")
    j = judge.judge(judge.load_side(a), judge.load_side(b)).get("sec_per_iter").judgement
    assert j.basis == "iterations" and (j.n_a, j.n_b) == (6, 6) and j.high < 1
    assert j.verdict == "within noise" and "kit noise" in j.reasons[0]
    # ten identical runs here differed by 1%: a stored floor of about x1.02, which a 10% effect exceeds
    runs = [{"bundle": f"r{i}", "sec_per_iter": 1.0 + i % 2 / 100, "peak_mem_mib": 700 + i % 2 * 7} for i in range(10)]
    rec = noise.make_record(host="testhost", recipe="tiny", recipe_sha256="r" * 64,
                            sessions=[noise.session(presets=["baseline"], group="g", runs=runs)])
    noise.save(rec)
    assert 1.01 < math.exp(noise.floor_of(rec, "sec_per_iter")) < 1.05
    j = judge.judge(judge.load_side(a), judge.load_side(b))
    spi = j.get("sec_per_iter").judgement
    assert spi.verdict == "faster" and spi.floor == pytest.approx(math.exp(noise.floor_of(rec, "sec_per_iter")))
    assert j.get("peak_mem_mib").judgement.verdict == "within noise"  # 700 vs 700
    text = compare.render(compare.compare(judge.load_side(a), judge.load_side(b)))
    assert "over the timed iterations of 1 vs 1 run(s) (6 vs 6 iterations after warm-up)" in text
    assert "noise floor of tiny on testhost" in text
    # a floor of x1.2 swallows it
    noise.save({**rec, "metrics": {**rec["metrics"], "sec_per_iter": {**rec["metrics"]["sec_per_iter"],
                                                                       "floor": math.log(1.2), "factor": 1.2}}})
    spi = judge.judge(judge.load_side(a), judge.load_side(b)).get("sec_per_iter").judgement
    assert spi.verdict == "within noise" and "noise floor x1.2" in spi.reasons[0]


def test_different_layout_software_or_hardware_is_not_comparable(tmp_path):
    a = make_bundle(tmp_path, [1.0, 1.0, 1.0])
    b = make_bundle(tmp_path, [0.5, 0.5, 0.5], plan={"dp": 2, "world_size": 2}, software={"torch": "2.14.0"},
                    host={"cpu_model": "A64FX"})
    j = judge.judge(judge.load_side(a), judge.load_side(b))
    assert "layout: dp 1 vs 2" in j.not_comparable and "layout: world_size 1 vs 2" in j.not_comparable
    assert "software: torch 2.13.0 vs 2.14.0" in j.not_comparable and "hardware: cpu_model Xeon vs A64FX" in j.not_comparable
    assert {m.judgement.verdict for m in j.metrics if m.judgement} == {"not comparable"}
    assert j.get("sec_per_iter").ratio == pytest.approx(0.5)
    c = make_bundle(tmp_path, [1.0, 1.0, 1.0], plan={"recipe_sha256": "s" * 64, "overrides": ["train.iters=4"]})
    j = judge.judge(judge.load_side(a), judge.load_side(c))
    assert j.not_comparable == ["recipe values: tiny vs tiny --set train.iters=4 (the resolved recipes hash differently)"]


def test_a_directory_of_several_groups_is_refused_in_one_line(tmp_path):
    make_group(tmp_path / "res", BASE[:2], group="group-a")
    make_group(tmp_path / "res", BASE[:2], group="group-b")
    with pytest.raises(Exception, match="not one group"):
        judge.load_side(tmp_path / "res")
    proc = kit_cli("compare", str(tmp_path / "res"), str(tmp_path / "res" / "group-a"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "group-a, group-b" in proc.stderr


def test_failed_runs_of_a_group_are_left_out(tmp_path):
    a = make_group(tmp_path, BASE, group="group-a")
    make_bundle(a, [9.0, 9.0, 9.0], group="group-a", status="failed")
    side = judge.load_side(a)
    assert len(side.bundles) == 6 and len(side.ok) == 5 and max(side.values("sec_per_iter")) < 2
    bundle_mod.Bundle.create(a, recipe="tiny", preset="baseline", group="group-a")  # a repeat still running
    side = judge.load_side(a)
    assert len(side.bundles) == 6 and len(side.left_out) == 1 and "1 left out" in side.describe()


def test_what_a_bundle_says_is_escaped_in_the_verdict_lines(tmp_path):
    a = make_bundle(tmp_path, [1.0, 1.0, 1.0])
    b = make_bundle(tmp_path, [1.0, 1.0, 1.0], host={"cpu_model": "\x1b]0;pwned\x07Xeon"}, plan={"recipe": "t\u202einy"})
    proc = kit_cli("compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("not comparable:"))
    assert "\\x1b]0;pwned\\x07Xeon" in line and "\x1b" not in proc.stdout and "\u202e" not in proc.stdout
