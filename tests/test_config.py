"""Recipes and presets: validation at load, overrides, composition, one-line errors."""

import pytest

from kit import plan as plan_mod, preset as preset_mod, recipe as recipe_mod
from kit.errors import KitError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


TINY = """
model: {layers: 2, hidden: 64, heads: 4, seq: 32, vocab: 1000}
batch: {micro: 1, global: 8}
train: {iters: 5, warmup_iters: 1}
"""


def test_shipped_recipes_load():
    for name in ("tiny", "gpt-124m", "gpt-1.3b"):
        r, _ = recipe_mod.load(name)
        assert r.name == name
    r, _ = recipe_mod.load("gpt-1.3b")
    assert (r.model.layers, r.model.hidden, r.model.heads, r.model.checkpoint_activations) == (24, 2048, 32, True)
    r, _ = recipe_mod.load("gpt-124m")
    assert (r.model.layers, r.model.hidden, r.model.heads, r.model.seq, r.batch.global_batch) == (12, 768, 12, 1024, 1024)


def test_override_is_applied_and_typed():
    r, _ = recipe_mod.load("tiny", ["train.iters=7", "model.checkpoint_activations=true"])
    assert r.train.iters == 7 and r.model.checkpoint_activations is True


@pytest.mark.parametrize("override,needle", [
    ("model.heads=3", "heads 3 do not divide hidden 128"),
    ("parallel.tp=3", "parallel.tp 3 does not divide model.heads"),
    ("parallel.pp=3", "parallel.pp 3 does not divide model.layers"),
    ("batch.global=7", "batch.global 7 is not divisible by batch.micro 1 x DP"),
    ("model.bogus=1", "model.bogus: unknown key"),
    ("train.iters=-1", "train.iters"),
    ("train.warmup_iters=50", "warmup_iters 50 must be below iters"),
    ("train.dtype=fp8", "train.dtype"),
])
def test_invalid_recipe_values_are_named(override, needle):
    if override.startswith("batch.global"):
        override = [override, "parallel.dp=2"]
    else:
        override = [override]
    with pytest.raises(KitError) as e:
        recipe_mod.load("tiny", override)
    msg = str(e.value)
    assert needle in msg
    assert "tiny.yaml" in msg and "\n" not in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "bad.yaml", "model: {layers: 2\nbatch: [\n")
    with pytest.raises(KitError) as e:
        recipe_mod.load(str(p))
    assert str(p) in str(e.value) and "malformed YAML" in str(e.value)


def test_non_mapping_yaml(tmp_path):
    p = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(KitError, match="expected a mapping"):
        recipe_mod.load(str(p))


def test_unknown_top_level_key(tmp_path):
    p = write(tmp_path, "x.yaml", TINY + "colour: blue\n")
    with pytest.raises(KitError, match="colour: unknown key"):
        recipe_mod.load(str(p))


def test_unknown_recipe_name_lists_known():
    with pytest.raises(KitError) as e:
        recipe_mod.load("nope")
    assert "tiny" in str(e.value)


def test_bad_override_syntax():
    with pytest.raises(KitError, match="key=value"):
        recipe_mod.load("tiny", ["train.iters"])


def test_command_placeholders_filled():
    r, _ = recipe_mod.load("gpt-1.3b")
    argv = r.render_command(python="python3")
    assert argv[:3] == ["python3", "-m", "kit.workload"]
    assert argv[argv.index("--layers") + 1] == "24"
    assert "--checkpoint-activations" in argv
    r, _ = recipe_mod.load("tiny")
    assert "--checkpoint-activations" not in r.render_command(python="python3")


def test_unknown_command_placeholder(tmp_path):
    p = write(tmp_path, "c.yaml", TINY + "command: ['{python}', '{model.nope}']\n")
    r, _ = recipe_mod.load(str(p))
    with pytest.raises(KitError, match="unknown placeholder"):
        r.render_command(python="python3")


# -- presets -------------------------------------------------------------------------------
def test_tuned_composes_boost_tcmalloc_noretention():
    p, files = preset_mod.load(["tuned"])
    assert (p.freq_mhz, p.allocator, p.retention_state) == (2200, "tcmalloc", 0)
    assert [f.stem for f in files] == ["baseline", "boost", "tcmalloc", "noretention", "tuned"]


def test_baseline_values():
    p, _ = preset_mod.load(["baseline"])
    assert (p.freq_mhz, p.allocator, p.retention_state) == (2000, "glibc", 1)


def test_several_presets_compose_left_to_right():
    p, _ = preset_mod.load(["tuned", "mpn4"])
    assert (p.freq_mhz, p.allocator, p.retention_state, p.ranks_per_node) == (2200, "tcmalloc", 0, 4)
    p, _ = preset_mod.load(["boost", "baseline"])  # baseline already applied first: boost stays
    assert p.freq_mhz == 2200


def test_preset_env_merges_and_later_wins(tmp_path, monkeypatch):
    write(tmp_path, "a.yaml", "env: {A: '1', B: '1'}\nthreads_per_rank: 3\n")
    write(tmp_path, "b.yaml", "extends: [a]\nenv: {B: '2'}\n")
    monkeypatch.setenv("KIT_PRESETS", str(tmp_path))
    p, _ = preset_mod.load(["b"])
    assert p.env == {"A": "1", "B": "2"} and p.threads_per_rank == 3


def test_preset_cycle_is_an_error(tmp_path, monkeypatch):
    write(tmp_path, "x.yaml", "extends: [y]\n")
    write(tmp_path, "y.yaml", "extends: [x]\n")
    monkeypatch.setenv("KIT_PRESETS", str(tmp_path))
    with pytest.raises(KitError, match="extends cycle"):
        preset_mod.load(["x"])


@pytest.mark.parametrize("text,needle", [
    ("freq_mhz: fast\n", "freq_mhz"),
    ("retention_state: 2\n", "retention_state"),
    ("allocator: jemalloc-please\n", "allocator"),
    ("frequency: 2200\n", "frequency: unknown key"),
])
def test_invalid_preset_values(tmp_path, monkeypatch, text, needle):
    write(tmp_path, "bad.yaml", text)
    monkeypatch.setenv("KIT_PRESETS", str(tmp_path))
    with pytest.raises(KitError) as e:
        preset_mod.load(["bad"])
    assert needle in str(e.value) and "bad.yaml" in str(e.value)


# -- plan ----------------------------------------------------------------------------------
def test_plan_derives_dp_from_ranks_per_node():
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["mpn4"], cores_per_node=48)
    assert (p.dp, p.world_size, p.ranks_per_node, p.threads_per_rank) == (4, 4, 4, 12)


def test_plan_threads_follow_ranks_per_node_like_fugaku():
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"], cores_per_node=48)
    assert p.threads_per_rank == 48 and p.env["OMP_NUM_THREADS"] == "48"


def test_plan_layout_mismatch_is_an_error():
    with pytest.raises(KitError) as e:
        plan_mod.resolve(recipe_name="gpt-124m", preset_names=["mpn4"])
    assert "DP 1 x TP 1 x PP 1 = 1 ranks" in str(e.value) and "parallel.dp=4" in str(e.value)


def test_plan_records_frequency_as_not_applied_on_local():
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["tuned"])
    f = p.setting("freq_mhz")
    assert f.requested == 2200 and f.status == "not-applied" and "job manager" in f.note
    a = p.setting("allocator")
    assert a.status == "applied" and "LD_PRELOAD" in a.applied_by
    assert "libtcmalloc" in p.env["LD_PRELOAD"]


def test_missing_tcmalloc_names_the_package(monkeypatch):
    from kit import allocator

    monkeypatch.setattr(allocator, "find_tcmalloc", lambda roots=None: None)
    with pytest.raises(KitError) as e:
        plan_mod.resolve(recipe_name="tiny", preset_names=["tcmalloc"])
    assert "libgoogle-perftools4" in str(e.value)


def test_batch_plan_resolves_tcmalloc_on_the_compute_node(monkeypatch):
    # Fugaku's login nodes are x86-64 and the ranks run on A64FX nodes: the library found
    # on the submitting host would be the wrong one, so a batch plan leaves it to the job.
    from kit import allocator

    monkeypatch.delenv("KIT_TCMALLOC", raising=False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda roots=None: None)  # not on this "login node"
    p = plan_mod.resolve(recipe_name="tiny", preset_names=["tuned"], launcher="slurm")
    assert "LD_PRELOAD" not in p.env
    assert "compute node" in p.setting("allocator").applied_by


def test_bad_cli_values_are_one_line_exit_2():
    from conftest import kit_cli

    for args, needle in ((["run", "--nodes", "abc"], "--nodes"), (["run", "--bogus"], "--bogus"),
                         (["flops", "--layers", "2"], "--hidden"), (["nosuch"], "nosuch")):
        r = kit_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("kit: error:"), r.stderr
        assert "Traceback" not in r.stderr
