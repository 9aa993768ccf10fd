"""The command line as people expect it: --version, completion, human values, --json, ids from
names, catalog sources, and bundle text escaped for the terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path


from kit import bundle as bundle_mod, catalog
from kit.results import humanize
from kit.textsafe import csv_cell, markdown_cell, terminal
from tests.conftest import FAST, REPO, kit_cli

HOSTILE = "\x1b]0;pwned\x07"

SETTINGS = [
    {"name": "freq_mhz", "requested": 2200, "status": "not-applied", "applied_by": None, "note": "",
     "seen": {"mhz": 2600.0, "max_mhz": None, "source": "psutil.cpu_freq"}, "verified": None},
    {"name": "eco_state", "requested": None, "status": "not-requested", "applied_by": None, "note": "", "seen": None,
     "verified": None},
    {"name": "allocator", "requested": "tcmalloc", "status": "applied", "applied_by": "LD_PRELOAD=libtcmalloc.so.4",
     "note": "", "seen": {"0": "tcmalloc", "1": "tcmalloc", "2": "glibc"}, "verified": False},
    {"name": "ranks_per_node", "requested": 1, "status": "applied", "applied_by": "torchrun --nproc-per-node 1",
     "note": "", "seen": {"vm": 1}, "verified": True},
]


def make_bundle(out: Path, *, recipe: str = "tiny", reason: str = "", settings=None, loss: float = 10.2) -> Path:
    """A small finished bundle written through the bundle writer (no run): what show/compare/status read."""
    b = bundle_mod.Bundle.create(out, recipe="tiny", preset="tuned")
    layout = {"nodes": 1, "dp": 1, "tp": 1, "pp": 1, "micro_batch": 1, "global_batch": 8, "ranks_per_node": 1,
              "world_size": 1, "threads_per_rank": 2}
    plan = {"recipe": recipe, "presets": ["tuned"], "overrides": [], "launcher": "local", "runtime": "host",
            "settings": settings if settings is not None else SETTINGS, **layout}
    b.write_json("metrics.json", {"summary": {"sec_per_iter": 0.41, "tflops": 0.08, "final_loss": loss,
                                              "peak_mem_mib": 800.0}, "iterations": []})
    b.write_json("provenance.json", {"plan": plan, "runtime": {"name": "host"}, "software": {},
                                     "host": {"hostname": "vm", "os": "Debian"}})
    b.write_json("plan.json", {"recipe": {}, "preset": {}, "recipe_name": recipe, "preset_names": ["tuned"], "nodes": 1})
    b.write_yaml("recipe.yaml", {"name": recipe})
    b.write_yaml("preset.yaml", {"name": "tuned"})
    b.finalize("ok", reason)
    return b.path


def no_raw_controls(text: str) -> bool:
    return not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)


# -- version and completion ---------------------------------------------------------------------------
def test_version_names_kit_python_torch_and_deepspeed_without_importing_torch():
    import kit

    proc = kit_cli("--version", check=True)
    line = proc.stdout.strip()
    assert line.startswith(f"kit {kit.__version__} (Python {sys.version.split()[0]}")
    assert f"torch {metadata.version('torch')}" in line and f"DeepSpeed {metadata.version('deepspeed')}" in line
    code = ("import sys\nfrom kit.cli import app\n"
            "try:\n    app(['--version'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip().endswith("torch not imported"), out


def test_shell_completion_is_offered_and_completes_names():
    assert "--install-completion" in kit_cli("--help").stdout
    # Typer detects the user's shell from the parent process; under CI there is none, so the
    # shell is named instead (Typer's own switch for that)
    proc = kit_cli("--show-completion", "bash", check=True, env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert "complete" in proc.stdout and "_COMPLETE" in proc.stdout

    def complete(words: str) -> list[str]:
        env = {"_KIT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        code = "import sys; sys.argv = ['kit']; from kit.cli import main; main()"
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=REPO,
                             capture_output=True, text=True)
        return out.stdout.split()

    assert complete("kit re") == ["report", "reproduce", "recipes"]
    assert complete("kit run tiny --preset mp") == ["mpn4-tuned", "mpn4"]
    assert complete("kit recipes show gpt") == ["gpt-1.3b", "gpt-124m"]


# -- values in words ----------------------------------------------------------------------------------
def test_settings_read_as_words_not_python_reprs():
    text = {s["name"]: humanize.setting_text(s) for s in SETTINGS}
    assert text["allocator"] == ("tcmalloc (applied by LD_PRELOAD=libtcmalloc.so.4), "
                                 "seen ranks 0-1: tcmalloc, rank 2: glibc, NOT verified")
    assert text["ranks_per_node"].endswith("seen vm: 1 rank, verified")
    assert text["freq_mhz"] == "2200 (not-applied), seen 2600 MHz (psutil.cpu_freq)"
    assert text["eco_state"] == "not requested"
    assert humanize.seen_text("ranks_per_node", {"a": 2, "b": 1}) == "a: 2 ranks, b: 1 rank"
    assert humanize.per_rank_text({"0": "x", "1": "x", "2": "x", "5": "x"}) == "ranks 0-2, 5: x"
    assert humanize.value_text({"a": None, "b": [1, 2], "c": True}) == "a: -, b: (1, 2), c: yes"
    assert all("{" not in t and "'" not in t for t in text.values())


def test_bundle_show_and_compare_print_words(tmp_path):
    a = make_bundle(tmp_path)
    b = make_bundle(tmp_path, settings=[{**SETTINGS[2], "seen": {"0": "glibc"}}, SETTINGS[3]], loss=9.0)
    show = kit_cli("bundle", "show", str(a))
    assert show.returncode == 0, show.stderr
    assert "seen ranks 0-1: tcmalloc, rank 2: glibc" in show.stdout and "seen vm: 1 rank" in show.stdout
    assert "{'" not in show.stdout
    cmp = kit_cli("compare", str(a), str(b), check=True)
    assert "A: seen" not in cmp.stdout and "seen rank 0: glibc" in cmp.stdout and "{'" not in cmp.stdout


# -- escaping ---------------------------------------------------------------------------------------------
def test_terminal_markdown_and_csv_escapers():
    assert terminal(HOSTILE) == "\\x1b]0;pwned\\x07"
    assert terminal("a\nb\tc\u202ed\x9b") == "a\\x0ab\\x09c\\u202ed\\x9b"
    assert terminal("plain text, ünïcode 日本") == "plain text, ünïcode 日本"
    assert markdown_cell("a|b <script> [x](y) *z*") == "a\\|b \\<script\\> \\[x\\](y) \\*z\\*"
    assert csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and csv_cell("-1.5") == "-1.5" and csv_cell(3) == "3"


def test_hostile_bundle_strings_print_escaped(tmp_path):
    evil_settings = [{**SETTINGS[2], "seen": {"0": HOSTILE}, "applied_by": HOSTILE}]
    a = make_bundle(tmp_path, recipe=HOSTILE, reason="line one\nstatus   ok" + HOSTILE, settings=evil_settings)
    b = make_bundle(tmp_path)
    for args in (("bundle", "show", str(a)), ("compare", str(a), str(b)), ("status", str(a)),
                 ("bundle", "verify", str(a))):
        proc = kit_cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert no_raw_controls(proc.stdout) and no_raw_controls(proc.stderr), (args, proc.stdout)
    show = kit_cli("bundle", "show", str(a)).stdout
    assert "recipe   \\x1b]0;pwned\\x07" in show and "status   ok: line one\\x0astatus   ok" in show
    assert "\\x1b]0;pwned\\x07" in kit_cli("compare", str(a), str(b)).stdout
    assert "line one\\x0astatus" in kit_cli("status", str(a)).stdout
    js = json.loads(kit_cli("bundle", "show", str(a), "--json").stdout)
    assert js["recipe"] == HOSTILE  # JSON carries the value itself, escaped by JSON


# -- --json ----------------------------------------------------------------------------------------------
def test_status_verify_and_show_json(tmp_path):
    a = make_bundle(tmp_path)
    st = json.loads(kit_cli("status", str(a), "--json", check=True).stdout)
    assert st == {"path": str(a), "id": a.name, "status": "ok", "reason": "", "job": None}
    v = json.loads(kit_cli("bundle", "verify", str(a), "--json", check=True).stdout)
    unsigned = {"state": "unsigned", "fingerprint": None, "signer": None, "signed_at": None, "detail": None}
    assert v == {"ok": True, "bundles": [{"path": str(a), "ok": True, "status": "ok", "problems": [],
                                          "signature": unsigned}]}
    (a / "metrics.json").write_text("{}")
    proc = kit_cli("bundle", "verify", str(a), "--json")
    v = json.loads(proc.stdout)
    assert proc.returncode == 1 and not v["ok"] and any("metrics.json" in p for p in v["bundles"][0]["problems"])


def test_status_of_a_batch_run_asks_the_job_manager(tmp_path, pjm_standins):
    """A submitted PJM job the job manager no longer lists (pjstat is tests/standins' stand-in:
    PJM does not exist off Fugaku): the state in words and in JSON, with the hint to collect."""
    b = bundle_mod.Bundle.create(tmp_path, recipe="tiny", preset="tuned")
    (b.path / "job").mkdir()
    (b.path / "job" / "job.json").write_text(json.dumps({"launcher": "pjm", "job_id": "4242"}))
    text = kit_cli("status", str(b.path), env=pjm_standins, check=True).stdout
    assert f"{b.id}: running\npjm job 4242: unknown (pjstat no longer lists job 4242)" in text
    assert f"run `kit collect {b.path}`" in text
    st = json.loads(kit_cli("status", str(b.path), "--json", env=pjm_standins, check=True).stdout)
    assert st["status"] == "running" and st["job"] == {"launcher": "pjm", "job_id": "4242", "state": "unknown",
                                                       "reason": "pjstat no longer lists job 4242", "ended": True}


def test_report_json_flag_is_format_json(tmp_path):
    make_bundle(tmp_path)
    a = kit_cli("report", str(tmp_path), "--json", check=True).stdout
    assert a == kit_cli("report", str(tmp_path), "--format", "json", check=True).stdout
    assert json.loads(a)["rows"][0]["recipe"] == "tiny"


def test_recipes_and_presets_json_and_sources(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "broken.yaml").write_text("model: [unclosed\n")
    shutil.copy(REPO / "recipes" / "tiny.yaml", own / "mine.yaml")
    env = {"KIT_RECIPES": str(own)}
    rows = {r["name"]: r for r in json.loads(kit_cli("recipes", "list", "--json", env=env, check=True).stdout)}
    assert rows["mine"]["source"] == "$KIT_RECIPES/mine.yaml" and rows["mine"]["recipe"]["model"]["layers"] > 0
    assert rows["broken"]["recipe"] is None and "broken.yaml" in rows["broken"]["error"]
    assert rows["tiny"]["source"] == "recipes/tiny.yaml" and rows["tiny"]["error"] is None
    # from elsewhere: the kit's own files are named as such, never by an absolute path
    listing = kit_cli("recipes", "list", cwd=tmp_path, env=env, check=True).stdout
    assert "<kit>/recipes/tiny.yaml" in listing and str(REPO) not in listing and "$KIT_RECIPES/mine.yaml" in listing
    show = json.loads(kit_cli("recipes", "show", "tiny", "--set", "train.iters=30", "--json", check=True).stdout)
    assert show["source"] == "recipes/tiny.yaml" and show["recipe"]["train"]["iters"] == 30
    assert kit_cli("recipes", "show", "tiny", check=True).stdout.startswith("# recipes/tiny.yaml\n")
    presets = {p["name"]: p for p in json.loads(kit_cli("presets", "list", "--json", check=True).stdout)}
    assert presets["tuned"]["preset"]["allocator"] == "tcmalloc" and presets["tuned"]["source"] == "env/tuned.yaml"
    ps = json.loads(kit_cli("presets", "show", "tuned", "mpn4", "--json", check=True).stdout)
    assert ps["names"] == ["tuned", "mpn4"] and ps["sources"][-1] == "env/mpn4.yaml"
    assert ps["preset"]["ranks_per_node"] == 4


def test_catalog_source_names_where_a_file_comes_from(tmp_path, monkeypatch):
    d = tmp_path / "mine"
    d.mkdir()
    monkeypatch.setenv("KIT_PRESETS", str(d))
    monkeypatch.chdir(tmp_path)
    assert catalog.source("preset", d / "x.yaml") == "$KIT_PRESETS/x.yaml"
    assert catalog.source("preset", tmp_path / "env" / "y.yaml") == "env/y.yaml"
    assert catalog.source("preset", catalog.SHIPPED_ROOT / "env" / "tuned.yaml") == "<kit>/env/tuned.yaml"


# -- bundle ids -----------------------------------------------------------------------------------------
def test_bundle_ids_come_from_names_not_paths():
    bid = bundle_mod.new_id("sectiny", "/tmp/kit-bars-sec.EHd1/secpreset.yaml")
    assert re.fullmatch(r"\d{8}-\d{6}_sectiny_secpreset-[0-9a-f]{6}_[0-9a-f]{6}", bid), bid
    assert "tmp" not in bid and "bars" not in bid
    assert re.fullmatch(r"\d{8}-\d{6}_tiny_boost\+tcmalloc_[0-9a-f]{6}", bundle_mod.new_id("tiny", "boost+tcmalloc"))
    # two files with one name in different directories: different ids, neither with a directory
    a = bundle_mod.new_id("tiny", "tuned+a/p.yaml").split("_")[2]
    b = bundle_mod.new_id("tiny", "tuned+b/p.yaml").split("_")[2]
    assert a != b and a.startswith("tuned+p-") and b.startswith("tuned+p-")
    hostile = bundle_mod.new_id(HOSTILE + "/../x", "../../etc/passwd")
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", hostile) and "/" not in hostile


# -- kit run --json -------------------------------------------------------------------------------------
def test_run_dry_run_json_is_one_line():
    proc = kit_cli("run", "tiny", "--preset", "tuned", "--dry-run", "--json", check=True)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["plan"]["recipe"] == "tiny" and doc["script"] is None


def test_run_json_last_line_is_the_result(tmp_path):
    """One tiny real run (torchrun, DeepSpeed on gloo): progress on stderr, the result on stdout's last line."""
    proc = kit_cli("run", "tiny", "--preset", "tuned", *FAST, "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    path = Path(doc["path"])
    assert path.is_dir() and path.name == doc["id"] and doc["status"] == "ok" and doc["exit_code"] == 0
    assert doc["summary"]["sec_per_iter"] > 0 and doc["summary"]["iterations_logged"] == 6
    assert doc["id"].split("_")[1:3] == ["tiny", "tuned"]
    assert "bundle: " in proc.stderr and "bundle: " not in proc.stdout
