"""Verdicts: is B faster than A, slower, or within noise, and can the two be compared at all?

Pure statistics over plain numbers (no bundle reading: ``kit.results.compare`` gathers the
samples). Every figure is judged as a *ratio* B/A on a log scale, so a metric and its
inverse always agree: sec/it 0.5x is TFLOPs 2x, and the interval of one is the inverse of
the other's (``Judgement.inverted``).

The estimate and the interval (rank-based, distribution-free)
    The ratio is exp of the Hodges–Lehmann shift: the median of every pairwise difference
    ``ln b_j - ln a_i``. Its 95% interval is the matching Mann–Whitney interval: the k-th
    smallest and k-th largest of those differences, k from the exact distribution of the
    Mann–Whitney U statistic (m*n <= ``EXACT_MAX_PAIRS``; a normal approximation with
    continuity correction beyond). Nothing is assumed about the shape of the timings (they
    are skewed: a loaded machine only ever slows a run down), no random numbers are drawn
    (the same samples always give the same interval), swapping A and B negates every
    difference (the ratio and interval invert exactly, the verdict flips), and multiplying
    every sample by a constant leaves the differences alone.

What the samples are (``basis``)
    ``runs``: one value per run (each bundle's sec/it, the median of its iterations after
    warm-up), when each side has enough runs for a 95% interval to exist at all: the
    exact U distribution must put less than 2.5% on its extreme, i.e. C(m+n, m) >= 40
    (4 vs 4, 3 vs 5, 2 vs 8; not 3 vs 3). These intervals include run-to-run spread, so
    they carry the verdict on their own.
    ``iterations``: otherwise (one run per side, typically), every timed iteration after
    warm-up of every run on each side, pooled. Iterations of one run share that run's
    machine state, so this interval is too narrow for what a re-run would show: the host's
    run-to-run noise floor must then be exceeded as well (below).
    ``values``: a metric with one value per run and too few runs (peak memory of 1 vs 1):
    no interval, only the noise floor can judge it.

The thresholds (``decide``)
    ``faster``/``slower`` need all of:
    1. the 95% interval excludes 1 (``CONFIDENCE``: the usual level; with 5 repeats a
       side the exact test reaches it with room to spare, p >= 2/252);
    2. the effect |ln ratio| is at least ``MIN_EFFECT`` = ln 1.01 (1%): iteration times are
       logged to 0.1 ms and no sweep decision turns on less;
    3. on the ``iterations`` and ``values`` bases only: the effect exceeds the host's
       noise floor for the recipe (``kit noise``, :func:`noise_floor`): the factor within
       which two more identical runs fall with 95% confidence, from the stored runs'
       spread with Student's t for their number, so that one run per side is called
       faster or slower only when identical runs would differ by as much less than 5% of
       the time. Without a floor the verdict is ``within noise`` and says why: one run per
       side cannot tell a change from a loaded machine (the issue's own case: the same
       command re-ran 3.6x faster on one CI machine).
    ``within noise`` otherwise, with the reason. ``not comparable`` when the two sides differ
    in what the number measures (recipe values, layout, hardware, software), each named by
    the caller; the ratio is still shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import median
from typing import Sequence

CONFIDENCE = 0.95
MIN_EFFECT = math.log(1.01)
EXACT_MAX_PAIRS = 2_500
VERDICTS = ("faster", "slower", "within noise", "not comparable")

BASIS_TEXT = {
    "runs": "over {na} vs {nb} runs",
    "iterations": "over the timed iterations of {ra} vs {rb} run(s) ({na} vs {nb} iterations after warm-up)",
    "values": "one value per run, {na} vs {nb} run(s)",
}


@dataclass(frozen=True)
class Shift:
    """The Hodges–Lehmann estimate of ln(B/A) and its rank interval (None: too few samples)."""
    estimate: float
    low: float | None
    high: float | None


def _u_cdf_exact(m: int, n: int) -> list[float]:
    """P(U <= u) for u = 0..m*n under no difference: the Gaussian binomial [m+n, m]_q's
    coefficients (the number of arrangements with each U) over C(m+n, m)."""
    # prod_{k=1..m} (1 - q^(n+k)) / (1 - q^k), as integer polynomial arithmetic
    size = m * n + 1
    poly = [0] * size
    poly[0] = 1
    for k in range(1, m + 1):
        for i in range(size - 1, n + k - 1, -1):  # times (1 - q^(n+k))
            poly[i] -= poly[i - n - k]
        for i in range(k, size):  # divided by (1 - q^k)
            poly[i] += poly[i - k]
    total = math.comb(m + n, m)
    out, acc = [], 0
    for c in poly:
        acc += c
        out.append(acc / total)
    return out


def _rank(m: int, n: int, confidence: float) -> int | None:
    """k (1-based) such that the k-th smallest and k-th largest pairwise differences bound
    the interval; None when no interval at this confidence exists for m vs n samples."""
    alpha = 1 - confidence
    if m * n <= EXACT_MAX_PAIRS:
        cdf = _u_cdf_exact(min(m, n), max(m, n))
        c = -1
        while c + 1 < len(cdf) and cdf[c + 1] <= alpha / 2:
            c += 1
        return c + 1 if c >= 0 else None
    z = _z(1 - alpha / 2)
    k = math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12) - 0.5)
    return k if k >= 1 else None


def _z(p: float) -> float:
    """The standard normal quantile (bisection on erf: no scipy needed for one number)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def interval_exists(m: int, n: int, confidence: float = CONFIDENCE) -> bool:
    return m > 0 and n > 0 and _rank(m, n, confidence) is not None


def timing_basis(runs_a: int, runs_b: int) -> str:
    """``runs`` when the runs alone give an interval, else ``iterations`` (module docstring)."""
    return "runs" if interval_exists(runs_a, runs_b) else "iterations"


def log_shift(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Shift:
    """Hodges–Lehmann ln(B/A) with its Mann–Whitney interval; samples must be positive."""
    if not a or not b:
        raise ValueError("both sides need at least one sample")
    if min(*a, *b) <= 0 or not all(math.isfinite(x) for x in (*a, *b)):
        raise ValueError("samples must be positive, finite numbers")
    la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
    diffs = sorted(y - x for x in la for y in lb)
    est = median(diffs)
    k = _rank(len(a), len(b), confidence)
    if k is None:
        return Shift(est, None, None)
    return Shift(est, diffs[k - 1], diffs[len(diffs) - k])


def finite(v: object) -> bool:
    """A real, finite number as a bundle or cache document may hold one (a bool is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def spread(values: Sequence[float]) -> float | None:
    """ln(max/min) of identical runs' values: the largest factor by which they differed (shown
    beside the floor; not the floor: a few runs see less than the host will show)."""
    vals = [v for v in values if v is not None and v > 0]
    return math.log(max(vals) / min(vals)) if len(vals) >= 2 else None


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (p > 0.5; bisection on the
    closed-form CDF for integer df, so no scipy for one number)."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError("t_quantile needs df >= 1 and 0.5 < p < 1")

    def two_sided(t: float) -> float:  # P(|T| < t): Abramowitz & Stegun 26.7.3-4
        theta = math.atan(t / math.sqrt(df))
        c2, s = math.cos(theta) ** 2, math.sin(theta)
        if df % 2:
            term, acc = 1.0, 1.0 if df > 1 else 0.0
            for k in range(3, df - 1, 2):
                term *= c2 * (k - 1) / k
                acc += term
            return (2 / math.pi) * (theta + (s * math.cos(theta) * acc if df > 1 else 0.0))
        term, acc = 1.0, 1.0
        for k in range(2, df - 1, 2):
            term *= c2 * (k - 1) / k
            acc += term
        return s * acc

    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while two_sided(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if two_sided(mid) < target else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Floor:
    """A host's noise floor for one metric: ``value`` = ln of the factor within which two more
    identical runs fall with ``confidence`` (module docstring, condition 3)."""
    value: float
    runs: int
    df: int
    sd: float  # of ln(value) around each group's mean


def noise_floor(groups: Sequence[Sequence[float]], confidence: float = CONFIDENCE) -> Floor | None:
    """The prediction bound on |ln(b/a)| for two further runs like these: t(df) * s * sqrt(2).

    ``groups``: identical runs' values, one list per setting measured (a preset's runs); s is
    the pooled standard deviation of ln(value) around each group's own mean, df = runs -
    groups. Student's t makes few runs count for what they are (3 runs: t = 4.30; many: 1.96),
    where the runs' own range would take their luck as the host's: BENCHMARKS.md section 7,
    three back-to-back runs spread x1.21 where five over 46 minutes spread x2.60. None with
    fewer than one degree of freedom."""
    logs = [[math.log(v) for v in g if v is not None and v > 0] for g in groups]
    logs = [g for g in logs if g]
    n = sum(len(g) for g in logs)
    df = n - len(logs)
    if df < 1:
        return None
    ss = sum((x - sum(g) / len(g)) ** 2 for g in logs for x in g)
    sd = math.sqrt(ss / df)
    return Floor(value=t_quantile(1 - (1 - confidence) / 2, df) * sd * math.sqrt(2), runs=n, df=df, sd=sd)


@dataclass(frozen=True)
class Judgement:
    """One metric of B against A. ``ratio``/``low``/``high`` are B/A; ``verdict`` one of
    :data:`VERDICTS` (or the metric's own words for lower/higher, e.g. smaller/larger)."""
    verdict: str
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    basis: str | None = None  # runs | iterations | values
    n_a: int = 0
    n_b: int = 0
    runs_a: int = 0
    runs_b: int = 0
    floor: float | None = None  # noise floor as a factor (e.g. 1.12), where one was used
    reasons: tuple[str, ...] = field(default_factory=tuple)
    confidence: float = CONFIDENCE

    def inverted(self) -> "Judgement":
        """The same judgement of the inverse metric (TFLOPs from sec/it): ratio and interval
        inverted, the verdict kept (faster is faster)."""
        def inv(x):
            return None if x is None else 1 / x
        return replace(self, ratio=inv(self.ratio), low=inv(self.high), high=inv(self.low))

    def basis_text(self) -> str:
        if self.basis is None:
            return ""
        return BASIS_TEXT[self.basis].format(na=self.n_a, nb=self.n_b, ra=self.runs_a, rb=self.runs_b)

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "ratio": self.ratio, "low": self.low, "high": self.high,
                "confidence": self.confidence, "basis": self.basis, "basis_text": self.basis_text(),
                "samples": [self.n_a, self.n_b], "runs": [self.runs_a, self.runs_b], "noise_floor": self.floor,
                "reasons": list(self.reasons)}


def decide(a: Sequence[float], b: Sequence[float], *, basis: str, runs: tuple[int, int] | None = None,
           floor: float | None = None, lower_is_better: bool = True,
           words: tuple[str, str] = ("faster", "slower"), confidence: float = CONFIDENCE) -> Judgement:
    """The verdict on samples ``a`` and ``b`` of a metric (see the module docstring).

    ``floor``: the host's noise floor, ln of a factor (:func:`noise_floor`; None: not measured),
    required on the ``iterations`` and ``values`` bases. ``words``: what B is called when
    its metric is better / worse (``lower_is_better`` says which direction is better).
    """
    if basis not in BASIS_TEXT:
        raise ValueError(f"unknown basis {basis!r}")
    ra, rb = runs or (len(a), len(b))
    common = dict(basis=basis, n_a=len(a), n_b=len(b), runs_a=ra, runs_b=rb,
                  floor=None if floor is None else math.exp(floor), confidence=confidence)
    s = log_shift(a, b, confidence)
    ratio = math.exp(s.estimate)
    low, high = (None, None) if s.low is None or basis == "values" else (math.exp(s.low), math.exp(s.high))
    common.update(ratio=ratio, low=low, high=high)
    effect = abs(s.estimate)
    better = words[0] if (s.estimate < 0) == lower_is_better else words[1]
    if basis != "values" and s.low is None:
        return Judgement("within noise", reasons=(f"too few samples for a {confidence:.0%} interval",), **common)
    if basis != "values" and s.low <= 0 <= s.high:
        return Judgement("within noise", reasons=(f"the {confidence:.0%} interval includes 1",), **common)
    if effect < MIN_EFFECT:
        return Judgement("within noise", reasons=(f"the effect is under {math.exp(MIN_EFFECT) - 1:.0%}",), **common)
    if basis != "runs":
        if floor is None:
            return Judgement("within noise", reasons=(
                "too few runs to see run-to-run spread and no noise floor for this host and recipe "
                "(measure one with `kit noise RECIPE`, or repeat the runs with --repeat)",), **common)
        if effect <= floor:
            return Judgement("within noise", reasons=(
                f"x{math.exp(effect):.3g} is within this host's noise floor x{math.exp(floor):.3g}",), **common)
    return Judgement(better, **common)


def not_comparable(reasons: Sequence[str], a: Sequence[float] = (), b: Sequence[float] = ()) -> Judgement:
    """Two sides that measure different things: the ratio of their medians, no interval, each reason named."""
    ratio = median(b) / median(a) if a and b and median(a) > 0 else None
    return Judgement("not comparable", ratio=ratio, n_a=len(a), n_b=len(b), reasons=tuple(reasons))


def opposite(verdict: str) -> str:
    """The verdict with A and B swapped."""
    pairs = {"faster": "slower", "slower": "faster", "smaller": "larger", "larger": "smaller"}
    return pairs.get(verdict, verdict)
