"""The host's noise floor (kit.verdict.noise_floor, kit.noise's record, kit.repeat's --spread):
a 95% bound on how much two identical runs differ, with Student's t for the number of runs,
accumulated over sessions. Pure statistics and the kit's own cache files: no run, no timing
(a fake clock stands in for waiting between repeats)."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from kit import noise, repeat, verdict
from kit.errors import EXIT_INTERRUPTED, KitError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                         (30, 2.0423), (1000, 1.9623)])
def test_t_quantile_matches_the_table(df, expected):
    assert verdict.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_the_floor_bounds_a_new_pair_of_identical_runs_95_percent_of_the_time():
    """Calibration: runs whose ln(sec/it) is normal; a floor from 3 runs, then two more runs.
    Their |ln ratio| exceeds the floor in ~5% of trials. The runs' own range, the floor before
    this change, is exceeded far more often (it takes the few runs' luck for the host's)."""
    rng = random.Random(17)
    trials, over_floor, over_range = 4000, 0, 0
    for _ in range(trials):
        runs = [math.exp(rng.gauss(0, 0.1)) for _ in range(3)]
        a, b = math.exp(rng.gauss(0, 0.1)), math.exp(rng.gauss(0, 0.1))
        effect = abs(math.log(b / a))
        over_floor += effect > verdict.noise_floor([runs]).value
        over_range += effect > verdict.spread(runs)
    assert 0.035 < over_floor / trials < 0.065
    assert over_range / trials > 0.25


def test_benchmarks_case_three_back_to_back_runs_no_longer_call_a_1_6x_difference_slower():
    """BENCHMARKS.md section 7: three runs spread x1.21; one run a side differed x1.60 (interval
    [1.22, 2.03] over their iterations) where five repeats a side were within noise."""
    three = [7.19, 8.54, 8.70]
    f = verdict.noise_floor([three])
    assert math.exp(verdict.spread(three)) == pytest.approx(1.21, abs=0.005)
    assert math.exp(f.value) > 1.6 and f.df == 2
    a = [6.87 * x for x in (0.98, 1.0, 1.01, 0.99, 1.02, 1.0, 0.97, 1.03)]
    b = [x * 1.6 for x in a]
    j = verdict.decide(a, b, basis="iterations", floor=f.value)
    assert j.low > 1 and j.verdict == "within noise" and "within this host's noise floor" in j.reasons[0]
    assert verdict.decide(a, b, basis="iterations", floor=verdict.spread(three)).verdict == "slower"


def test_presets_are_pooled_around_their_own_means():
    """Two presets of one recipe: their difference is an effect, not noise."""
    base, fast = [1.0, 1.01, 0.99], [0.5, 0.505, 0.495]
    pooled = verdict.noise_floor([base, fast])
    assert pooled.df == 4 and math.exp(pooled.value) < 1.05
    assert math.exp(verdict.noise_floor([base + fast]).value) > 2


def _runs(values, start, every_min=10, prefix="r"):
    return [{"bundle": f"{prefix}{i}", "started": (start + timedelta(minutes=i * every_min)).isoformat(),
             "sec_per_iter": v, "peak_mem_mib": 700.0} for i, v in enumerate(values)]


def test_sessions_accumulate_without_counting_a_run_twice():
    t0 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    first = noise.session(presets=["baseline"], group="g1", runs=_runs([1.0, 1.02, 0.99], t0))
    rec = noise.add_session(host="h", recipe="tiny", recipe_sha256="s" * 64, new=first)
    noise.save(rec)
    assert rec["runs"] == 3 and rec["span_s"] == 20 * 60 and "under 30 min" in noise.describe(rec)
    later = noise.session(presets=["baseline"], group="g2", runs=_runs([1.3, 1.25], t0 + timedelta(hours=5), prefix="s"))
    rec2 = noise.add_session(host="h", recipe="tiny", recipe_sha256="s" * 64, new=later)
    assert rec2["runs"] == 5 and len(rec2["sessions"]) == 2 and rec2["span_s"] == 5 * 3600 + 10 * 60
    assert noise.floor_of(rec2, "sec_per_iter") > noise.floor_of(rec, "sec_per_iter")  # the afternoon was slower
    assert "in 2 session(s) over 5 h 10 min" in noise.describe(rec2) and "under 30 min" not in noise.describe(rec2)
    noise.save(rec2)
    dup = noise.add_session(host="h", recipe="tiny", recipe_sha256="s" * 64, new=later)
    assert dup["runs"] == 5 and len(dup["sessions"]) == 2
    fresh = noise.add_session(host="h", recipe="tiny", recipe_sha256="s" * 64, new=later, reset=True)
    assert fresh["runs"] == 2 and len(fresh["sessions"]) == 1


def test_old_sessions_and_runs_beyond_the_cap_are_dropped():
    now = datetime(2026, 12, 3, tzinfo=timezone.utc)
    old = {**noise.session(presets=["baseline"], group="old", runs=_runs([5.0, 6.0], now)),
           "added": (now - timedelta(days=noise.MAX_AGE_DAYS + 1)).isoformat()}
    many = [{**noise.session(presets=["baseline"], group=f"g{k}", runs=_runs([1.0] * 30, now, prefix=f"g{k}-")),
             "added": now.isoformat()} for k in range(4)]
    rec = noise.make_record(host="h", recipe="tiny", recipe_sha256="s" * 64, sessions=[old, *many], now=now)
    assert [s["group"] for s in rec["sessions"]] == ["g1", "g2", "g3"] and rec["runs"] == 90 <= noise.MAX_RUNS


def test_a_record_in_the_older_layout_is_ignored(tmp_path):
    p = noise.path_for("h", "tiny", "s" * 64)
    p.parent.mkdir(parents=True)
    p.write_text('{"metrics": {"sec_per_iter": {"floor": 0.19}}, "runs": 3}')
    assert noise.load("h", "tiny", "s" * 64) is None


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("1d", 86400)])
def test_durations(text, seconds):
    assert repeat.parse_duration(text, "--spread") == seconds


def test_a_bad_duration_names_the_option():
    with pytest.raises(KitError) as e:
        repeat.parse_duration("soon", "kit noise --spread")
    assert "kit noise --spread" in str(e.value) and "30m" in str(e.value)


class FakeClock:
    """Stands in for the wall clock: sleeping advances it, and a run takes 60 s."""

    def __init__(self, interrupt_at_sleep: int | None = None):
        self.now, self.sleeps, self.interrupt_at = 1000.0, [], interrupt_at_sleep

    def monotonic(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        if self.interrupt_at is not None and len(self.sleeps) == self.interrupt_at:
            raise KeyboardInterrupt
        self.now += s


def _fake_group(monkeypatch, tmp_path, clock, n, spread_s):
    from types import SimpleNamespace

    from rich.console import Console

    monkeypatch.setattr(repeat.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(repeat.time, "sleep", clock.sleep)
    starts = []

    def run(plan, out, console, **kw):
        starts.append(clock.now)
        clock.now += 60
        return SimpleNamespace(status="ok", exit_code=0)

    monkeypatch.setattr(repeat.runner, "run", run)
    plan = SimpleNamespace(recipe_name="tiny", preset=SimpleNamespace(name="baseline"))
    g = repeat.run_group(plan, n, tmp_path, Console(quiet=True), group="g", spread_s=spread_s)
    return g, starts


def test_spread_spaces_the_starts_evenly(monkeypatch, tmp_path):
    clock = FakeClock()
    g, starts = _fake_group(monkeypatch, tmp_path, clock, 4, 3 * 600)
    assert [s - starts[0] for s in starts] == [0, 600, 1200, 1800] and g.exit_code == 0
    assert clock.sleeps == [540, 540, 540]  # each run took 60 s of its 600


def test_ctrl_c_while_waiting_stops_the_group_as_interrupted(monkeypatch, tmp_path):
    g, starts = _fake_group(monkeypatch, tmp_path, FakeClock(interrupt_at_sleep=2), 4, 1800)
    assert len(starts) == 2 and g.interrupted and g.exit_code == EXIT_INTERRUPTED


def test_a_run_named_twice_in_one_session_counts_once():
    t0 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    runs = _runs([1.0, 1.1, 0.95], t0)
    once = noise.add_session(host="h", recipe="tiny", recipe_sha256="s" * 64,
                             new=noise.session(presets=["baseline"], group="g", runs=runs))
    twice = noise.add_session(host="h", recipe="tiny", recipe_sha256="s" * 64,
                              new=noise.session(presets=["baseline"], group="g", runs=runs + runs))
    assert twice["runs"] == once["runs"] == 3
    assert noise.floor_of(twice, "sec_per_iter") == pytest.approx(noise.floor_of(once, "sec_per_iter"))


def test_the_spread_shown_is_within_one_preset():
    t0 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    rec = noise.make_record(host="h", recipe="tiny", recipe_sha256="s" * 64, sessions=[
        noise.session(presets=["baseline"], group="a", runs=_runs([1.0, 1.1], t0, prefix="a")),
        noise.session(presets=["tuned"], group="b", runs=_runs([0.5, 0.52], t0, prefix="b"))])
    assert rec["metrics"]["sec_per_iter"]["spread"] == pytest.approx(math.log(1.1))  # not ln(1.1 / 0.5)


@pytest.mark.parametrize("damage", [
    lambda d: d["sessions"][0].pop("runs"),
    lambda d: d["metrics"]["sec_per_iter"].update(factor="x2"),
    lambda d: d["metrics"]["sec_per_iter"].update(values=[1.0, True]),
    lambda d: d["sessions"][0]["runs"][0].update(sec_per_iter="fast"),
    lambda d: d.update(span_s=[1]),
])
def test_a_damaged_record_is_not_used(damage):
    t0 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    rec = noise.make_record(host="h", recipe="tiny", recipe_sha256="s" * 64, sessions=[
        noise.session(presets=["baseline"], group="g", runs=_runs([1.0, 1.1, 0.9], t0))])
    noise.save(rec)
    assert noise.load("h", "tiny", "s" * 64) == json.loads(json.dumps(rec))
    damage(rec)
    noise.save(rec)
    assert noise.load("h", "tiny", "s" * 64) is None


def test_describe_escapes_what_came_from_a_bundle():
    t0 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    rec = noise.make_record(host="h\x1b[2Jx", recipe="tiny", recipe_sha256="s" * 64, sessions=[
        noise.session(presets=["base\x1b]0;pwned\x07"], group="g", runs=_runs([1.0, 1.1], t0))])
    assert "\x1b" not in noise.describe(rec) and "\x07" not in noise.describe(rec)


def test_a_spread_beyond_the_records_age_is_refused():
    with pytest.raises(KitError) as e:
        repeat.parse_duration("99999999999999d", "kit noise --spread")
    assert "30 days" in str(e.value)


def _tiny_sha():
    from kit import plan as plan_mod

    return plan_mod.resolve(recipe_name="tiny", preset_names=None).summary()["recipe_sha256"]


def test_from_keys_the_record_by_the_runs_host_and_counts_a_run_once(tmp_path):
    """Bundles written by the kit's writer (no training run): a group of three and one of its
    own bundles named again; the record is the runs' host's (a compute node's, say)."""
    from conftest import kit_cli
    from verdict_bundles import make_bundle

    sha = _tiny_sha()
    g = tmp_path / "group-x"
    paths = [make_bundle(g, [v, v], group="group-x", plan={"recipe_sha256": sha}, host={"hostname": "node7"})
             for v in (1.0, 1.1, 0.95)]
    proc = kit_cli("noise", "tiny", "--from", str(g), "--from", str(paths[0]), "--json")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)["record"]
    assert rec["host"] == "node7" and rec["runs"] == 3
    shown = kit_cli("noise", "tiny", "--show", "--host", "node7")
    assert shown.returncode == 0 and "noise floor of tiny on node7" in shown.stdout


@pytest.mark.parametrize("case,expect", [
    ("tampered", "does not verify"),
    ("presets", "several presets"),
    ("hosts", "several hosts"),
    ("badname", "not a plain name"),
])
def test_from_refuses_in_one_line(tmp_path, case, expect):
    from conftest import kit_cli
    from verdict_bundles import make_bundle

    sha = _tiny_sha()
    a = make_bundle(tmp_path / "a", [1.0, 1.0], plan={"recipe_sha256": sha})
    other = {"presets": dict(preset="tuned"), "hosts": dict(host={"hostname": "elsewhere"}),
             "badname": dict(host={"hostname": "bad\x1b[31mname"})}.get(case, {})
    b = make_bundle(tmp_path / "b", [1.1, 1.1], plan={"recipe_sha256": sha}, **other)
    if case == "tampered":
        log = next(p for p in b.rglob("*") if p.is_file() and p.name == "metrics.json")
        log.write_text(log.read_text().replace("1100.0", "500.0"))
    proc = kit_cli("noise", "tiny", "--from", str(a), "--from", str(b))
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr and "\x1b" not in proc.stderr


@pytest.mark.parametrize("args,expect", [
    (["--from", "x", "--repeat", "3"], "--from and --repeat cannot be used together"),
    (["--from", "x", "--show"], "--from and --show cannot be used together"),
    (["--show", "--spread", "1h"], "--show and --spread cannot be used together"),
    (["--host", "n1"], "--host only selects"),
    (["--spread", "soon"], "is not a duration"),
])
def test_noise_option_clashes_are_refused(args, expect):
    from conftest import kit_cli

    proc = kit_cli("noise", "tiny", *args)
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr


def test_run_spread_needs_repeat():
    from conftest import kit_cli

    proc = kit_cli("run", "tiny", "--spread", "10m")
    assert proc.returncode == 2 and "add --repeat" in proc.stderr
