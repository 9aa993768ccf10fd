"""Fuzzing the recipe and preset loaders: any input gives a valid object or a one-line KitError."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from kit import preset as preset_mod, recipe as recipe_mod
from kit.errors import KitError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["fp32", "bf16", "tcmalloc", "glibc", "synthetic", "/x.so"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)

RECIPE_KEYS = {"model": ["layers", "hidden", "heads", "seq", "vocab", "checkpoint_activations"],
               "parallel": ["dp", "tp", "pp", "zero"], "batch": ["micro", "global"],
               "train": ["iters", "warmup_iters", "seed", "lr", "dtype", "stall_timeout_s"]}


@st.composite
def recipe_docs(draw):
    doc = {}
    for section, keys in RECIPE_KEYS.items():
        if draw(st.booleans()):
            doc[section] = {k: draw(st.one_of(st.integers(-4, 64), scalars)) for k in keys if draw(st.booleans())}
        elif draw(st.integers(0, 5)) == 0:
            doc[section] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return doc


def check_loader(load, path):
    try:
        load(path)
    except KitError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert str(path) in msg, msg
    # any other exception fails the test


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=recipe_docs())
def test_recipe_loader_never_crashes(tmp_path, doc):
    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump(doc))
    check_loader(lambda x: recipe_mod.load(str(x)), p)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_recipe_loader_survives_arbitrary_text(tmp_path, text):
    p = tmp_path / "fuzz.yaml"
    p.write_text(text)
    check_loader(lambda x: recipe_mod.load(str(x)), p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["freq_mhz", "retention_state", "eco_state", "allocator", "ranks_per_node",
                                            "threads_per_rank", "env", "extends", "description", "junk"]), values, max_size=5))
def test_preset_loader_never_crashes(tmp_path, monkeypatch, doc):
    monkeypatch.setenv("KIT_PRESETS", str(tmp_path))
    if "extends" in doc:
        doc["extends"] = ["fuzz"] if isinstance(doc["extends"], str) else doc["extends"]
    (tmp_path / "fuzz.yaml").write_text(yaml.safe_dump(doc))
    try:
        preset_mod.load(["fuzz"])
    except KitError as e:
        assert "\n" not in str(e)
