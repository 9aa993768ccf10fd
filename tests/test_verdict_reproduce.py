"""kit reproduce's judging: the whole loss curve, and timing with the verdicts (tolerance
factor, unless a verdict with the host's noise floor calls the difference noise). Metrics
documents from the kit's bundle writer with chosen timings and losses: no run, no timing."""

from __future__ import annotations

import math

import pytest

from kit import noise, reproduce
from kit.results import judge, store
from verdict_bundles import make_bundle

LOSSES = [10.0, 9.5, 9.1, 8.8, 8.6, 8.5, 8.45]
ITER = [1.0, 1.01, 0.99, 1.0, 1.02, 1.0]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


def _checks(tmp_path, old_iter, new_iter, new_losses=LOSSES, tol=reproduce.Tolerance()):
    a = store.load(make_bundle(tmp_path, old_iter, losses=LOSSES))
    b = store.load(make_bundle(tmp_path, new_iter, losses=new_losses))
    j = judge.judge(judge.Side(str(a.path), [a]), judge.Side(str(b.path), [b]))
    return {c.name: c for c in reproduce.compare_metrics(a.metrics, b.metrics, tol, j)}


def test_a_wrong_loss_curve_fails_even_with_the_right_final_loss(tmp_path):
    same = _checks(tmp_path, ITER, ITER)
    assert same["loss_curve"].ok and same["final_loss"].ok
    bent = LOSSES[:3] + [8.9] + LOSSES[4:]  # iteration 4 off by 0.1, the end identical
    c = _checks(tmp_path, ITER, ITER, bent)
    assert c["final_loss"].ok and c["loss_curve"].ok is False
    assert "largest |difference| 0.1 at iteration 4" in c["loss_curve"].line() and "DIFFERS" in c["loss_curve"].line()
    short = _checks(tmp_path, ITER, ITER[:-1], LOSSES[:-1])
    assert short["loss_curve"].ok is False and "logged by one run only" in short["loss_curve"].note


def test_timing_beyond_the_tolerance_is_forgiven_only_by_a_noise_floor(tmp_path):
    slower = [x * 1.3 for x in ITER]
    c = _checks(tmp_path, ITER, slower)  # no floor: the tolerance (x1.25) alone decides
    assert c["sec_per_iter"].ok is False and c["tflops"].ok is False
    assert "judged by the tolerance alone" in c["sec_per_iter"].note
    rec = noise.make_record(host="testhost", recipe="tiny", recipe_sha256="r" * 64, sessions=[noise.session(
        presets=["baseline"], group="g", runs=[{"bundle": "x", "sec_per_iter": 1.0}, {"bundle": "y", "sec_per_iter": 1.5}])])
    noise.save(rec)  # identical runs here differed by 1.5x: 1.3x is noise
    c = _checks(tmp_path, ITER, slower)
    assert c["sec_per_iter"].ok and c["tflops"].ok and "within noise" in c["sec_per_iter"].note
    noise.save({**rec, "metrics": {**rec["metrics"], "sec_per_iter": {**rec["metrics"]["sec_per_iter"],
                                                                       "floor": math.log(1.05), "factor": 1.05}}})
    c = _checks(tmp_path, ITER, slower)  # a quiet host: 1.3x is real and beyond the tolerance
    assert c["sec_per_iter"].ok is False and c["sec_per_iter"].note.startswith("slower")
    assert _checks(tmp_path, ITER, slower, tol=reproduce.Tolerance(timing=math.inf))["sec_per_iter"].line().endswith("not judged")
