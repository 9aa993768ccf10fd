"""kit noise and kit run --repeat with real runs: a group of identical runs in OUT/<group>/,
their spread stored as this host's noise floor for the recipe, read back by --show and by
kit compare, and added to by --from. Nothing here asserts a timing: only where figures go
and that they agree."""

from __future__ import annotations

import json
import math

import pytest

from kit import bundle as bundle_mod, verdict
from kit.results import judge, store
from conftest import kit_cli

SHORT = ["--set", "train.iters=4", "--set", "train.warmup_iters=1"]


@pytest.mark.slow
def test_noise_runs_a_group_and_stores_its_spread(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))  # for the kit here and in the subprocesses
    env = {}
    proc = kit_cli("noise", "tiny", "--preset", "baseline", *SHORT, "--repeat", "2", "--out", str(tmp_path / "res"), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    groups = [p for p in (tmp_path / "res").iterdir() if p.is_dir()]
    assert len(groups) == 1 and groups[0].name.startswith("group-")
    bundles = store.find(groups)
    assert len(bundles) == 2
    manifests = [bundle_mod.read_manifest(b) for b in bundles]
    assert {m.group for m in manifests} == {groups[0].name} and all(bundle_mod.verify(b).ok for b in bundles)
    stored = list((tmp_path / "cache" / "noise").rglob("tiny-*.json"))
    assert len(stored) == 1
    rec = json.loads(stored[0].read_text())
    spi = sorted(store.load(b).metrics["summary"]["sec_per_iter"] for b in bundles)
    assert sorted(rec["metrics"]["sec_per_iter"]["values"]) == spi
    floor = verdict.noise_floor([spi]).value  # Student's t with 1 degree of freedom: wide, as 2 runs deserve
    assert rec["metrics"]["sec_per_iter"]["floor"] == pytest.approx(floor) and floor > math.log(spi[1] / spi[0])
    assert rec["metrics"]["sec_per_iter"]["spread"] == pytest.approx(math.log(spi[1] / spi[0]))
    assert [s["group"] for s in rec["sessions"]] == [groups[0].name] and rec["presets"] == ["baseline"]
    assert rec["runs"] == 2 and rec["span_s"] > 0
    host = store.load(bundles[0]).provenance["host"]["hostname"]
    assert stored[0].parent.name == host
    shown = kit_cli("noise", "tiny", *SHORT, "--show", env=env)
    assert shown.returncode == 0 and "noise floor of tiny on" in shown.stdout and "2 runs" in shown.stdout
    assert json.loads(kit_cli("noise", "tiny", *SHORT, "--show", "--json", env=env).stdout) == rec
    # another recipe value: no floor stored for it
    other = kit_cli("noise", "tiny", "--set", "train.iters=5", "--show", env=env)
    assert other.returncode == 2 and "no noise floor stored" in other.stderr
    # kit compare of the group's two runs reads the floor it was measured with
    j = judge.judge(judge.load_side(bundles[0]), judge.load_side(bundles[1]))
    assert j.noise and j.get("sec_per_iter").judgement.floor == pytest.approx(math.exp(floor))
    # --from the same group: its runs are stored already, nothing is counted twice
    again = kit_cli("noise", "tiny", *SHORT, "--from", str(groups[0]), "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["record"]["runs"] == 2 and len(json.loads(stored[0].read_text())["sessions"]) == 1
    # a group of another recipe value is refused in one line, the stored record kept
    wrong = kit_cli("noise", "tiny", "--set", "train.iters=5", "--from", str(groups[0]), env=env)
    assert wrong.returncode == 2 and "another recipe" in wrong.stderr and "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and json.loads(stored[0].read_text())["runs"] == 2


def test_show_reads_this_hosts_floor_for_the_resolved_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    from kit import hostinfo, noise, plan as plan_mod

    plan = plan_mod.resolve(recipe_name="tiny", overrides=["train.iters=4"], preset_names=None)
    runs = [{"bundle": "a", "sec_per_iter": 0.4, "peak_mem_mib": 700.0},
            {"bundle": "b", "sec_per_iter": 0.5, "peak_mem_mib": 710.0}]
    rec = noise.make_record(host=str(hostinfo.describe()["hostname"]), recipe="tiny",
                            recipe_sha256=plan.summary()["recipe_sha256"],
                            sessions=[noise.session(presets=["baseline"], group="g", runs=runs)])
    noise.save(rec)
    proc = kit_cli("noise", "tiny", "--set", "train.iters=4", "--show", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    spi, mem = verdict.noise_floor([[0.4, 0.5]]).value, verdict.noise_floor([[700.0, 710.0]]).value
    assert got["metrics"]["sec_per_iter"]["floor"] == pytest.approx(spi) and got["runs"] == 2
    text = kit_cli("noise", "tiny", "--set", "train.iters=4", "--show").stdout
    assert f"sec_per_iter x{math.exp(spi):.3f}" in text and f"peak_mem_mib x{math.exp(mem):.3f}" in text
    assert "spread within a preset up to x1.250" in text and "under 30 min" in text
    assert kit_cli("noise", "tiny", "--show").returncode == 2  # the recipe as resolved without the override: none
