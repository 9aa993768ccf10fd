"""Machine settings (kit.settings): one spec per knob gives the table label, the directive
each scheduler or launcher emits verbatim, and how the run verifies it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kit import launchers, plan as plan_mod, schedulers, settings


def _contains(argv: list[str], words: list[str]) -> bool:
    return any(argv[i:i + len(words)] == words for i in range(len(argv) - len(words) + 1))


@pytest.mark.parametrize("launcher,presets,overrides", [
    ("local", ["boost"], ["parallel.dp=2"]),
    ("srun", ["boost"], ["parallel.dp=2"]),
    ("mpirun", ["tuned"], ["parallel.dp=2"]),
])
def test_launcher_command_carries_each_directive_verbatim(launcher, presets, overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(launchers.get(launcher).__class__, "validate", lambda self, plan: None)
    p = plan_mod.resolve(recipe_name="tiny", preset_names=presets, overrides=overrides, launcher=launcher)
    argv = launchers.get(launcher).command(p, p.rank_argv, python=p.python, log_dir=tmp_path)
    applied = [s for s in p.settings if s.by == launcher]
    assert applied, "the launcher applies at least the ranks per node"
    for s in applied:
        assert _contains(argv, shlex.split(s.applied_by)), (s.applied_by, argv)


def test_srun_frequency_directive_is_the_recorded_one(tmp_path):
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["boost"], overrides=["parallel.dp=2"], launcher="srun")
    assert p.setting("freq_mhz").applied_by == "--cpu-freq=2200000" and p.setting("freq_mhz").by == "srun"


def test_knob_nobody_applies_is_recorded_not_applied():
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["noretention"], launcher="slurm")
    r = p.setting("retention_state")
    assert r.requested == 0 and r.status == "not-applied" and r.applied_by is None
    assert "#SBATCH" not in (r.applied_by or "")


def test_every_scheduler_script_emits_its_directives(tmp_path):
    for name in schedulers.names():
        p = plan_mod.resolve(recipe_name="tiny", preset_names=["tuned"], overrides=["parallel.dp=2"], launcher=name)
        lines = schedulers.get(name).render(p, tmp_path).splitlines()
        for s in p.settings:
            if s.by == name:
                assert s.applied_by in lines, (name, s)


@pytest.mark.parametrize("requested,label", [
    ({"freq_mhz": 2000, "retention_state": 1, "allocator": "glibc", "ranks_per_node": 1}, ""),
    ({"freq_mhz": 2200, "retention_state": 0, "allocator": "tcmalloc", "ranks_per_node": 1},
     '2.2Hz, LD_PRELOAD=libtcmalloc.so, "retention_state=0"'),
    ({"freq_mhz": 2000, "retention_state": 1, "allocator": "/opt/lib/libjemalloc.so.2", "ranks_per_node": 4},
     "max-proc-per-node=4, LD_PRELOAD=libjemalloc.so.2"),
    ({"freq_mhz": None, "allocator": None, "ranks_per_node": 1}, ""),
])
def test_table_label_from_the_specs(requested, label):
    assert settings.label(requested) == label


def test_row_order_puts_retention_before_frequency_before_allocator():
    assert settings.row_order({"freq_mhz": 2200, "retention_state": 0, "allocator": "tcmalloc"}) == [1, 2, 3]
    assert settings.row_order({"freq_mhz": 2000, "retention_state": 1, "allocator": "glibc"}) == []


def test_frequency_is_read_on_a_core_of_the_ranks_cpu_set(monkeypatch):
    """Not cpu0 (an assistant core on Fugaku) but the first core of the CPU set the ranks inherit."""
    import os

    from kit import hostinfo

    read = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {12, 13, 59})  # Fugaku: compute cores 12-59
    monkeypatch.setattr(hostinfo, "_read", lambda path: read.append(path) or ("2200000" if "cpufreq" in path else None))
    s = settings.Setting(name="freq_mhz", requested=2200, status="applied", applied_by="x", by="pjm")
    out = settings.observed([s], [])
    assert read[0] == "/sys/devices/system/cpu/cpu12/cpufreq/scaling_cur_freq"
    assert out[0]["verified"] is True and out[0]["seen"]["cpu"] == 12 and out[0]["seen"]["mhz"] == 2200.0


def test_allocator_verified_from_each_ranks_memory_map():
    s = settings.Setting(name="allocator", requested="tcmalloc", status="applied", applied_by="LD_PRELOAD=x")
    mon = [{"node": "n1", "ranks": {"0": {"rank": 0, "allocator": {"allocator": "tcmalloc"}},
                                    "1": {"rank": 1, "allocator": {"allocator": "glibc"}}}}]
    out = settings.observed([s], mon)[0]
    assert out["seen"] == {"0": "tcmalloc", "1": "glibc"} and out["verified"] is False


def test_the_threads_spec_owns_the_ranks_thread_variable(monkeypatch):
    p = plan_mod.resolve(recipe_name="tiny", launcher="local")
    assert settings.BY_NAME["threads_per_rank"].env_var == "OMP_NUM_THREADS"
    assert p.env["OMP_NUM_THREADS"] == str(p.threads_per_rank)
    assert p.setting("threads_per_rank").applied_by == f"OMP_NUM_THREADS={p.threads_per_rank}"
    # the plan takes the variable from the spec: renamed there, it changes in the plan
    import dataclasses

    specs = tuple(dataclasses.replace(s, env_var="KIT_TEST_THREADS") if s.name == "threads_per_rank" else s
                  for s in settings.SPECS)
    monkeypatch.setattr(settings, "SPECS", specs)
    p = plan_mod.resolve(recipe_name="tiny", launcher="local")
    assert p.env["KIT_TEST_THREADS"] == str(p.threads_per_rank) and "OMP_NUM_THREADS" not in p.env
    assert p.setting("threads_per_rank").applied_by == f"KIT_TEST_THREADS={p.threads_per_rank}"


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "LD_PRELOAD", "LOCAL_RANK", "MASTER_PORT", "KIT_RUN_ID"])
def test_a_recipe_env_may_not_set_what_the_kit_sets(tmp_path, name):
    """The knobs' variables (from their specs), the allocator's preload, the rank contract and
    the kit's own names: refused in one line naming the recipe file and key."""
    from kit.errors import KitError

    r = tmp_path / "r.yaml"
    r.write_text((Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml").read_text() + f"env:\n  {name}: '1'\n")
    with pytest.raises(KitError) as e:
        plan_mod.resolve(recipe_name=str(r), preset_names=["baseline"])
    assert f"{r}: env.{name}" in str(e.value) and "preset" in str(e.value)
    ok = tmp_path / "ok.yaml"
    ok.write_text((Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml").read_text() + "env:\n  PYTHONPATH: /x\n")
    plan_mod.resolve(recipe_name=str(ok), preset_names=["baseline"])  # any other name is the recipe's own


def test_recipes_list_marks_a_recipe_setting_a_reserved_variable_invalid(tmp_path, monkeypatch):
    import json

    from conftest import kit_cli

    (tmp_path / "threads.yaml").write_text(
        (Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml").read_text() + "env:\n  OMP_NUM_THREADS: '4'\n")
    proc = kit_cli("recipes", "list", "--json", env={"KIT_RECIPES": str(tmp_path)})
    row = next(r for r in json.loads(proc.stdout) if r["name"] == "threads")
    assert row["recipe"] is None and "env.OMP_NUM_THREADS" in row["error"]
