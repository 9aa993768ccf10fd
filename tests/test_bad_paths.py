"""Bad paths and values on the command line: one line on stderr, exit 2, no traceback, and
nothing left half-written (issue 15, faults)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import kit_cli

pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="uses /proc as an unwritable directory")


def _one_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["run", "tiny", "--out", "/proc/kit-results", "--set", "train.iters=2", "--set", "train.warmup_iters=1"],
    ["report", "results-that-do-not-matter", "--out", "/proc/kit-report.md"],
    ["bundle", "import", "/dev/null", "--into", "/proc/kit-results"],
])
def test_an_unwritable_output_path_is_one_line(args, tmp_path):
    if args[0] == "report":  # a real (empty) bundle directory is not needed: a missing one is bad input too
        args = ["report", str(tmp_path), "--out", "/proc/kit-report.md"]
    line = _one_line(kit_cli(*args))
    assert line.startswith("kit: error: ") and ("/proc/" in line or str(tmp_path) in line)


def test_an_output_path_naming_a_file_is_one_line(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    line = _one_line(kit_cli("run", "tiny", "--out", str(f), "--set", "train.iters=2", "--set", "train.warmup_iters=1"))
    assert str(f) in line


def test_deep_yaml_is_one_line(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    line = _one_line(kit_cli("run", "tiny", "--preset", str(p), "--dry-run"))
    assert "nested too deeply" in line and str(p) in line


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_flops_refuses_a_non_finite_or_non_positive_time(value):
    line = _one_line(kit_cli("flops", "--layers", "12", "--hidden", "768", "--seq", "1024", "--vocab", "50257",
                             "--global-batch", "1024", "--sec-per-iter", value, "--world-size", "4"))
    assert "--sec-per-iter" in line
