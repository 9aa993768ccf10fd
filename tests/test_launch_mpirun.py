"""`kit run --launcher mpirun` with OpenMPI: two ranks on this node."""

from __future__ import annotations

import shutil

import pytest

from conftest import FAST, bundle_from_output, kit_cli, load
from kit.bundle import verify

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


@pytest.mark.skipif(not shutil.which("mpirun"), reason="OpenMPI's mpirun is not installed (apt-get install openmpi-bin)")
def test_mpirun_two_ranks(tmp_path):
    proc = kit_cli("run", "tiny", "--preset", "tuned", "--launcher", "mpirun", "--set", "parallel.dp=2", *FAST,
                   "--out", str(tmp_path), env={"KIT_MPI": "openmpi"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b = bundle_from_output(proc.stdout)
    assert verify(b).ok, verify(b).problems
    m, prov = load(b, "metrics.json"), load(b, "provenance.json")
    assert prov["run"]["argv"][0] == "mpirun"
    assert sorted(m["ranks"]) == ["0", "1"]
    assert all(r["allocator"]["allocator"] == "tcmalloc" and r["peak_rss_mib"] > 50 for r in m["ranks"].values())
    assert len(m["iterations"]) == 6
    # OpenMPI's per-rank output files
    assert (b / "logs" / "mpirun").is_dir() and list((b / "logs" / "mpirun").rglob("stdout"))
