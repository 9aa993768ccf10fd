"""The two doors of a bundle, tried with hostile and broken inputs.

In: every document and log passes the redactor (names and values), every file gets one mode;
a full disk ends the run ``failed`` in one line, never ``ok``. Out: readers open only regular
files inside the bundle (a FIFO never blocks them), capped and validated; verify names
links, special files and unexpected directories. The fuzz test hands the readers documents
of any shape: each is refused with one line or read; never an exception or a hang.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kit import bundle_reader
from kit.bundle import FILE_MODE, Bundle, read_manifest, verify
from kit.bundle_reader import BundleReadError
from kit.errors import KitError
from kit.results import report, store

SECRET = "ghp_" + "a1b2c3d4e5" * 4


def _finished(tmp_path: Path, status: str = "ok", reason: str = "", **docs) -> Bundle:
    """A finalized bundle written through the writer, with minimal valid documents."""
    b = Bundle.create(tmp_path, recipe="tiny", preset="baseline")
    base = {
        "metrics.json": {"summary": {"sec_per_iter": 1.0, "tflops": 0.1}, "iterations": []},
        "provenance.json": {"plan": {"nodes": 1, "dp": 1, "tp": 1, "pp": 1, "micro_batch": 1, "global_batch": 8,
                                     "ranks_per_node": 1, "settings": []},
                            "runtime": {}, "software": {}, "host": {}},
    }
    base.update(docs)
    for name, doc in base.items():
        b.write_json(name, doc)
    b.write_yaml("recipe.yaml", {"name": "tiny"})
    b.write_yaml("preset.yaml", {"name": "baseline"})
    (b.logs / "launcher.log").write_text("ok\n")
    b.finalize(status, reason)
    return b


# -- the door in -------------------------------------------------------------------------------
def test_every_document_and_log_is_redacted_by_the_writer(tmp_path):
    b = Bundle.create(tmp_path, recipe="tiny", preset="baseline")
    b.write_json("inputs.json", {"env": {"HF_TOKEN": "hf_x", "OMP_NUM_THREADS": "2"},
                               "rank_argv": ["python", "train.py", "--api-key", "abc123"],
                               "overrides": [f"command=[python, x.py, --token={SECRET}]"],
                               "summary": {"tokens_per_sec": 5.0}})
    b.write_yaml("preset.yaml", {"env": {"DB_PASS": "hunter2", "MY_PW": "pw1"}})
    b.write_text("job/job.sh", "#PJM -x WANDB_API_KEY=0123456789abcdef\nexport SSHPASS=pw2\n")
    with b.log_writer("logs/launcher.log") as log:
        log.write("connecting to redis://:pw3@cache:6379\n")
        log.write("AccountKey=c2VjcmV0; token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.abcdefghijk\n")
    # a rank log the launcher writes itself (torchrun/mpirun), redacted at finalize
    (b.logs / "torchrun").mkdir()
    (b.logs / "torchrun" / "rank0.log").write_text(f"using {SECRET}\nloss 2.0\n")
    b.write_json("metrics.json", {"summary": {}, "iterations": []})
    b.write_json("provenance.json", {"plan": {}, "runtime": {}, "software": {}, "host": {},
                                     "scheduler": {"SLURM_JOB_COMMENT": "https://u:pw4@h/x"}})
    b.finalize("ok", reason=f"done with {SECRET}")
    everything = "".join(p.read_text() for p in b.path.rglob("*") if p.is_file())
    for secret in ("hf_x", "abc123", SECRET, "hunter2", "pw1", "0123456789abcdef", "pw2", "pw3", "c2VjcmV0",
                   "eyJzdWIiOiIxMjM0NSJ9", "pw4"):
        assert secret not in everything, secret
    assert "tokens_per_sec" in everything and "loss 2.0" in everything  # not over-redacted
    # the redacted rank log was checksummed as redacted
    assert not [p for p in verify(b.path).problems if "checksum" in p or "not listed" in p]


def test_every_bundle_file_has_one_mode(tmp_path):
    b = _finished(tmp_path)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in b.path.rglob("*") if p.is_file()}
    assert modes == {FILE_MODE}


def test_a_batch_plan_carrying_a_secret_is_refused():
    from kit import plan as plan_mod, runner

    plan = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
    plan.env["HF_TOKEN"] = "hf_abcdefghijklmnopqrstuvwxyz"
    with pytest.raises(KitError, match=r"env\.HF_TOKEN.*export it"):
        runner.refuse_secrets(plan)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs (a real full disk) needs root")
def test_a_full_disk_ends_failed_in_one_line_never_ok(tmp_path):
    """A real full filesystem (a 1 MiB tmpfs filled up) while the bundle is finalized."""
    from rich.console import Console

    from kit import finalize, plan as plan_mod, runner, runtimes

    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        plan = plan_mod.resolve(recipe_name="tiny", preset_names=["baseline"])
        b = Bundle.create(mnt, recipe="tiny", preset="baseline")
        runner.write_inputs(b, plan)
        with open(mnt / "filler", "wb") as f:  # fill it up
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        buf = io.StringIO()
        out = finalize.finalize(finalize.RunRecord(
            plan=plan, bundle=b, runtime=runtimes.get("host"), status="ok", reason="", records=[], monitors=[],
            rank_failures={}, launcher_rc=0, argv=[], kit_env={}, env={}, started="", duration=1.0, software={}),
            Console(file=buf, width=300))
        assert out.status == "failed" and "No space left on device" in out.reason
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        assert lines[0].startswith("failed: the bundle could not be written") and "Traceback" not in buf.getvalue()
        assert read_manifest(b.path).status != "ok" and not verify(b.path).ok
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# -- the door out ------------------------------------------------------------------------------
def test_a_fifo_never_blocks_a_reader(tmp_path):
    b = _finished(tmp_path)
    (b.path / "metrics.json").unlink()
    os.mkfifo(b.path / "metrics.json")
    result: list = []

    def read():
        try:
            store.load(b.path)
        except KitError as e:
            result.append(str(e))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "a reader blocked on a FIFO"
    assert "is not a regular file (a FIFO)" in result[0]
    assert any("metrics.json: is a FIFO" in p for p in verify(b.path).problems)


def test_links_special_files_and_unexpected_directories_are_reported(tmp_path):
    b = _finished(tmp_path)
    (b.path / "logs" / "escape").symlink_to("/etc/passwd")
    (b.path / "stray").mkdir()
    os.mkfifo(b.path / "logs" / "pipe")
    problems = "\n".join(verify(b.path).problems)
    assert "logs/escape: is a symbolic link" in problems
    assert "logs/pipe: is a FIFO" in problems
    assert "stray: unexpected directory" in problems


@pytest.mark.parametrize("doc,why", [
    ({"summary": {"sec_per_iter": "fast"}, "iterations": []}, "summary.sec_per_iter is str"),
    ({"summary": {"tflops": True}, "iterations": []}, "summary.tflops is bool"),
    ({"summary": [], "iterations": []}, "summary is not a JSON object"),
])
def test_bad_documents_are_refused_with_one_line(tmp_path, doc, why):
    b = _finished(tmp_path, **{"metrics.json": doc})
    with pytest.raises(KitError, match=why):
        store.load(b.path)


def test_nan_and_deep_nesting_are_refused(tmp_path):
    b = _finished(tmp_path)
    (b.path / "metrics.json").write_text('{"summary": {"sec_per_iter": NaN}, "iterations": []}')
    with pytest.raises(BundleReadError, match="NaN is not a number a bundle may hold"):
        bundle_reader.read_document(b.path, "metrics.json")
    (b.path / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleReadError, match="nested deeper than 64"):
        bundle_reader.read_document(b.path, "metrics.json")


def test_an_oversized_document_is_not_read(tmp_path, monkeypatch):
    b = _finished(tmp_path)
    monkeypatch.setattr(bundle_reader, "MAX_JSON_BYTES", 100)
    with pytest.raises(BundleReadError, match="more than the 100 a reader takes"):
        bundle_reader.read_document(b.path, "provenance.json")


def test_one_bad_bundle_does_not_break_the_report(tmp_path):
    good = _finished(tmp_path)
    bad = _finished(tmp_path, **{"metrics.json": {"summary": {"sec_per_iter": "x"}, "iterations": []}})
    rep = report.build([tmp_path])
    assert [r["id"] for r in rep.rows] == [good.id]
    assert len(rep.skipped) == 1 and bad.id in rep.skipped[0] and "\n" not in rep.skipped[0]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                    max_leaves=25)
KEYS = st.sampled_from(["summary", "iterations", "plan", "runtime", "software", "host", "ranks", "nodes", "settings",
                        "sec_per_iter", "tflops", "peak_mem_mib", "final_loss", "presets", "overrides", "dp", "nodes"])
DOC = st.dictionaries(KEYS, JSON | st.dictionaries(KEYS, JSON, max_size=6), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(metrics=DOC, prov=DOC)
def test_readers_take_documents_of_any_shape(tmp_path_factory, metrics, prov):
    """Any JSON shape in metrics.json/provenance.json: the report renders the bundle or
    leaves it out with one line; never an exception or a hang."""
    root = tmp_path_factory.mktemp("fuzz")
    b = _finished(root, **{"metrics.json": metrics, "provenance.json": prov})
    rep = report.build([root])
    assert len(rep.rows) + len(rep.skipped) == 1
    for fmt in ("markdown", "csv", "json"):
        report.render(rep, fmt)
    for s in rep.skipped:
        assert "\n" not in s and b.id in s


def test_strings_from_a_bundle_cannot_forge_report_rows_or_formulas(tmp_path):
    """A reason with a newline and pipes, a setting value with a pipe and ANSI, a recipe name
    that is a spreadsheet formula: the Markdown keeps one row per bundle with its columns,
    the CSV cell is not a formula."""
    evil = "x | y\n| forged | row | \x1b]0;pwned\x07"
    prov = {"plan": {"nodes": 1, "dp": 1, "tp": 1, "pp": 1, "micro_batch": 1, "global_batch": 8, "ranks_per_node": 1,
                     "recipe": "=HYPERLINK(\"http://x\")",
                     "settings": [{"name": "allocator", "requested": "/lib/a|b.so"}]},
            "runtime": {}, "software": {}, "host": {}}
    _finished(tmp_path, status="stalled", reason=evil, **{"provenance.json": prov})
    rep = report.build([tmp_path])
    md = report.render(rep, "markdown")
    assert "\x1b" not in md and "\n| forged" not in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| 1")]
    assert len(rows) == 1
    header = next(ln for ln in md.splitlines() if ln.startswith("| Nodes"))
    unescaped = lambda ln: ln.replace("\\|", "")  # noqa: E731
    assert unescaped(rows[0]).count("|") == header.count("|")
    assert not any(ln.startswith("| forged") for ln in md.splitlines())
    csv_text = report.render(rep, "csv")
    assert ",'=HYPERLINK(" in csv_text or ",\"'=HYPERLINK(" in csv_text
