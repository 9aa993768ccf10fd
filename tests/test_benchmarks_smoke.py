"""Each benchmark script runs end to end with ``--quick`` (seconds to a minute; not a timing test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script", ["bench_workload.py", "bench_overhead.py", "bench_presets.py", "bench_growth.py"])
def test_benchmark_runs_quick(script: str, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    args = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--json", str(tmp_path / "out.json")]
    if script == "bench_presets.py":
        args += ["--presets", "baseline"]  # tcmalloc may be absent on a test machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "out.json").is_file()


def test_gpu_check_cpu_dry_mode_is_valid_bash() -> None:
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
