"""kit.verdict: symmetric ratios, rank intervals and verdicts (pure statistics, no runs, no timing)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from kit import verdict

# timings as logged: tenths of a millisecond, 1 ms .. 100 s (no two values an ulp apart)
times = st.lists(st.integers(min_value=10, max_value=1_000_000).map(lambda t: t / 10_000), min_size=1, max_size=12)
bases = st.sampled_from(["runs", "iterations", "values"])
floors = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))


@settings(max_examples=300, deadline=None)
@given(a=times, b=times, basis=bases, floor=floors)
def test_swapping_a_and_b_inverts_ratio_interval_and_verdict(a, b, basis, floor):
    ab = verdict.decide(a, b, basis=basis, floor=floor)
    ba = verdict.decide(b, a, basis=basis, floor=floor)
    assert ba.ratio == pytest.approx(1 / ab.ratio, rel=1e-12)
    assert (ab.low is None) == (ba.high is None)
    if ab.low is not None:
        assert ba.high == pytest.approx(1 / ab.low, rel=1e-12) and ba.low == pytest.approx(1 / ab.high, rel=1e-12)
    assert ba.verdict == verdict.opposite(ab.verdict)


@settings(max_examples=300, deadline=None)
@given(a=times, b=times, basis=bases, floor=floors, k=st.integers(min_value=-20, max_value=20))
def test_scaling_both_sides_changes_nothing(a, b, basis, floor, k):
    c = 2.0 ** k
    plain = verdict.decide(a, b, basis=basis, floor=floor)
    scaled = verdict.decide([x * c for x in a], [x * c for x in b], basis=basis, floor=floor)
    assert scaled.ratio == pytest.approx(plain.ratio, rel=1e-9)
    assert scaled.verdict == plain.verdict


@settings(max_examples=200, deadline=None)
@given(a=times, basis=bases, floor=floors)
def test_identical_samples_are_within_noise(a, basis, floor):
    j = verdict.decide(a, list(a), basis=basis, floor=floor)
    assert j.verdict == "within noise" and j.ratio == 1.0


@settings(max_examples=200, deadline=None)
@given(a=times, b=times)
def test_inverse_metric_agrees(a, b):
    """TFLOPs = k / sec_per_iter: judged on the inverse samples, the same verdict, ratio inverted."""
    spi = verdict.decide(a, b, basis="runs")
    tf = verdict.decide([1 / x for x in a], [1 / x for x in b], basis="runs", lower_is_better=False)
    assert tf.verdict == spi.verdict
    assert tf.ratio == pytest.approx(spi.inverted().ratio, rel=1e-9)


def test_rank_interval_matches_the_mann_whitney_table():
    # two-sided 5% critical values of U (e.g. Mann & Whitney 1947; any statistics table): k = U_crit + 1
    assert verdict._rank(5, 5, 0.95) == 3  # U_crit 2
    assert verdict._rank(4, 4, 0.95) == 1  # U_crit 0
    assert verdict._rank(8, 8, 0.95) == 14  # U_crit 13
    assert verdict._rank(3, 3, 0.95) is None  # 1/20 > 2.5%: no 95% interval exists
    assert verdict._rank(2, 7, 0.95) is None and verdict._rank(2, 8, 0.95) == 1
    # the normal approximation takes over smoothly
    exact = verdict._rank(50, 50, 0.95)
    verdict_normal = math.floor(1250 - verdict._z(0.975) * math.sqrt(2500 * 101 / 12) - 0.5)
    assert abs(exact - verdict_normal) <= 1 and verdict._rank(51, 51, 0.95) >= exact


def test_five_repeats_a_side_decide_a_clear_effect_on_their_own():
    a = [1.00, 1.05, 0.98, 1.10, 1.02]
    b = [0.78, 0.80, 0.76, 0.83, 0.79]
    j = verdict.decide(a, b, basis="runs")
    assert j.verdict == "faster" and j.high < 1 and j.low < j.ratio < j.high
    assert verdict.decide(b, a, basis="runs").verdict == "slower"
    # overlapping samples: the interval includes 1
    overlap = verdict.decide(a, [1.01, 0.97, 1.06, 1.0, 1.03], basis="runs")
    assert overlap.verdict == "within noise" and "includes 1" in overlap.reasons[0]


def test_one_run_per_side_needs_the_noise_floor():
    a = [0.40, 0.41, 0.40, 0.42, 0.41, 0.40]
    b = [0.35, 0.36, 0.35, 0.35, 0.36, 0.35]
    no_floor = verdict.decide(a, b, basis="iterations", runs=(1, 1))
    assert no_floor.verdict == "within noise" and "kit noise" in no_floor.reasons[0]
    assert no_floor.high < 1  # the iterations alone would have said faster
    assert verdict.decide(a, b, basis="iterations", runs=(1, 1), floor=math.log(1.05)).verdict == "faster"
    big = verdict.decide(a, b, basis="iterations", runs=(1, 1), floor=math.log(1.2))
    assert big.verdict == "within noise" and "noise floor x1.2" in big.reasons[0]
    assert "1 vs 1 run(s)" in big.basis_text()


def test_a_tiny_effect_is_within_noise_even_when_certain():
    a = [1.000 + i / 1e5 for i in range(10)]
    b = [x * 0.995 for x in a]
    j = verdict.decide(a, b, basis="runs")
    assert j.high < 1 and j.verdict == "within noise" and "under 1%" in j.reasons[0]


def test_values_basis_and_not_comparable():
    assert verdict.decide([800.0], [600.0], basis="values", words=("smaller", "larger")).verdict == "within noise"
    j = verdict.decide([800.0], [600.0], basis="values", floor=math.log(1.1), words=("smaller", "larger"))
    assert j.verdict == "smaller" and j.low is None
    nc = verdict.not_comparable(["layout: dp 1 vs 2"], [1.0], [0.5])
    assert nc.verdict == "not comparable" and nc.ratio == 0.5 and nc.reasons == ("layout: dp 1 vs 2",)
    assert verdict.spread([1.0, 1.2, 1.1]) == pytest.approx(math.log(1.2)) and verdict.spread([1.0]) is None
    assert verdict.noise_floor([[1.0]]) is None and verdict.noise_floor([[1.0], [2.0]]) is None  # no degree of freedom
    with pytest.raises(ValueError):
        verdict.decide([0.0], [1.0], basis="runs")
