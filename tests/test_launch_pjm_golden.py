"""Golden PJM job scripts, one per row of the sweep table (shared/reference/fugaku-config-sweep.md).

Each script must read like a Fugaku user's own (the DeepSpeedFugaku scripts): node count,
rscgrp, elapse, one -L line with the power knobs, --mpi proc / max-proc-per-node, -x for
the exported variables, -j -S, and the mpiexec -std-proc line the kit runs.
Regenerate after an intended change with KIT_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from kit import known_bad, plan as plan_mod, schedulers
from kit.errors import KitError

GOLDEN = Path(__file__).parent / "golden" / "pjm"
BUNDLE = Path("/vol0004/hp190122/u01234/results/20230215-000000_row")

# (golden name, recipe, presets, overrides, known bad?) for every row of the table, top to bottom
ROWS = [
    ("124m-baseline", "gpt-124m", ["baseline"], [], False),
    ("124m-noretention", "gpt-124m", ["noretention"], [], False),
    ("124m-boost", "gpt-124m", ["boost"], [], False),
    ("124m-tcmalloc", "gpt-124m", ["tcmalloc"], [], False),
    ("124m-tuned", "gpt-124m", ["tuned"], [], False),
    ("124m-mpn4-dp4", "gpt-124m", ["mpn4"], ["parallel.dp=4"], False),
    ("124m-mpn4-tp4", "gpt-124m", ["mpn4"], ["parallel.tp=4"], True),
    ("124m-mpn4-tuned-dp4", "gpt-124m", ["mpn4-tuned"], ["parallel.dp=4"], False),
    ("124m-mpn4-tuned-tp4", "gpt-124m", ["mpn4-tuned"], ["parallel.tp=4"], True),
    ("1.3b-baseline", "gpt-1.3b", ["baseline"], [], False),
    ("1.3b-noretention", "gpt-1.3b", ["noretention"], [], False),
    ("1.3b-boost", "gpt-1.3b", ["boost"], [], False),
    ("1.3b-tcmalloc", "gpt-1.3b", ["tcmalloc"], [], True),
    ("1.3b-tuned", "gpt-1.3b", ["tuned"], [], True),
    ("1.3b-mpn4-tp4", "gpt-1.3b", ["mpn4"], ["parallel.tp=4"], True),
    ("1.3b-mpn4-tuned-tp4", "gpt-1.3b", ["mpn4-tuned"], ["parallel.tp=4"], True),
]


@pytest.fixture
def fake_tcmalloc(tmp_path, monkeypatch):
    lib = tmp_path / "libtcmalloc.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv("KIT_TCMALLOC", str(lib))
    return lib


def render(name, recipe, presets, overrides, tcmalloc: Path, **job) -> tuple[str, plan_mod.Plan]:
    p = plan_mod.resolve(recipe_name=recipe, preset_names=presets, overrides=overrides, launcher="pjm",
                         job=plan_mod.JobOptions(**job) if job else None)
    text = schedulers.get("pjm").render(p, BUNDLE, warnings=known_bad.script_warnings(p))
    text = text.replace(str(tcmalloc), "/home/u01234/lib/libtcmalloc.so")
    text = text.replace(sys.executable, "/home/u01234/venv/bin/python3")
    text = text.replace(str(Path.cwd()), "/home/u01234/work")
    return text, p


@pytest.mark.parametrize("name,recipe,presets,overrides,bad", ROWS, ids=[r[0] for r in ROWS])
def test_pjm_script_golden(name, recipe, presets, overrides, bad, fake_tcmalloc):
    text, p = render(name, recipe, presets, overrides, fake_tcmalloc)
    path = GOLDEN / f"{name}.sh"
    if os.environ.get("KIT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs (KIT_UPDATE_GOLDEN=1 regenerates it)"
    assert bool(known_bad.check(p)) == bad


@pytest.mark.parametrize("name,recipe,presets,overrides,bad", ROWS, ids=[r[0] for r in ROWS])
def test_pjm_script_reads_like_a_fugaku_script(name, recipe, presets, overrides, bad, fake_tcmalloc):
    text, p = render(name, recipe, presets, overrides, fake_tcmalloc)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash -x"
    assert '#PJM -L "node=1"' in lines and '#PJM -L "rscgrp=small"' in lines and '#PJM -L "elapse=01:00:00"' in lines
    power = [ln for ln in lines if ln.startswith("#PJM") and "freq=" in ln]
    assert len(power) == 1, "freq, eco_state and retention_state share one -L line"
    for s in p.settings:  # each directive the plan records is in the script verbatim, each setting stated
        if s.by == "pjm":
            assert s.applied_by in lines, s
        if s.status != "not-requested":
            stated = f"# setting {s.name}={s.requested}: {s.applied_by}"
            assert stated.replace(str(fake_tcmalloc), "/home/u01234/lib/libtcmalloc.so") in lines, s
    assert f"freq={p.preset.freq_mhz}" in power[0] and f"retention_state={p.preset.retention_state}" in power[0]
    assert f'#PJM --mpi "proc={p.world_size}"' in lines
    assert f'#PJM --mpi "max-proc-per-node={p.ranks_per_node}"' in lines
    assert f"#PJM -x OMP_NUM_THREADS={48 // p.ranks_per_node}" in lines  # 48 cores / K
    assert "#PJM -j" in lines and "#PJM -S" in lines
    assert re.search(rf"mpiexec -np {p.world_size} -std-proc \S+/logs/stdproc/out", text)
    # tcmalloc reaches the ranks only, never the job script's shell
    assert not any(ln.startswith("#PJM -x LD_PRELOAD") for ln in lines)
    assert ("-x LD_PRELOAD" in text) == (p.preset.allocator == "tcmalloc")
    assert lines[-1].endswith(f"-m kit job-run {BUNDLE}")


def test_pjm_options_llio_group_rscgrp(fake_tcmalloc):
    text, _ = render("x", "gpt-124m", ["tuned"], [], fake_tcmalloc, time_limit="24:00:00", queue="large",
                     account="hp190122", llio=["localtmp-size=50Gi", "sharedtmp-size=10Gi"])
    assert '#PJM -L "rscgrp=large"' in text and '#PJM -L "elapse=24:00:00"' in text
    assert "#PJM -g hp190122" in text
    assert "#PJM --llio localtmp-size=50Gi\n#PJM --llio sharedtmp-size=10Gi" in text


def test_retention_on_refused_above_9216_nodes():
    with pytest.raises(KitError, match="retention_state=1 .* 9217 nodes"):
        plan_mod.resolve(recipe_name="gpt-124m", preset_names=["baseline"], launcher="pjm", nodes=9217,
                         overrides=["parallel.dp=9217", "batch.global=9217"])
    # retention off is fine at that size, and 9216 nodes with retention on too
    plan_mod.resolve(recipe_name="gpt-124m", preset_names=["noretention"], launcher="pjm", nodes=9217,
                     overrides=["parallel.dp=9217", "batch.global=9217"])
    plan_mod.resolve(recipe_name="gpt-124m", preset_names=["baseline"], launcher="pjm", nodes=9216,
                     overrides=["parallel.dp=9216", "batch.global=9216"])


def test_pjm_applies_settings_through_the_job_manager(fake_tcmalloc):
    p = plan_mod.resolve(recipe_name="gpt-124m", preset_names=["mpn4-tuned"], overrides=["parallel.dp=4"],
                         launcher="pjm")
    # the power knobs share the one -L line the script writes, and each records that line
    # (before, retention_state claimed a '#PJM -L "retention_state=0"' line no script had)
    assert p.setting("freq_mhz").status == "applied"
    assert p.setting("freq_mhz").applied_by == p.setting("retention_state").applied_by == \
        '#PJM -L "freq=2200,retention_state=0"'
    assert p.setting("ranks_per_node").applied_by == '#PJM --mpi "max-proc-per-node=4"'
    assert p.threads_per_rank == 12


def test_pjm_script_says_tcmalloc_is_resolved_on_the_node(monkeypatch):
    """On a login node without the library (Fugaku's are x86-64), the allocator is left to
    the compute node: the script still says tcmalloc will be preloaded there."""
    from kit import allocator

    monkeypatch.delenv("KIT_TCMALLOC", raising=False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda roots=None: None)
    p = plan_mod.resolve(recipe_name="gpt-124m", preset_names=["tuned"], launcher="pjm")
    text = schedulers.get("pjm").render(p, BUNDLE)
    assert "LD_PRELOAD" not in p.env
    assert ("# setting allocator=tcmalloc: LD_PRELOAD=tcmalloc, resolved on the compute node by kit job-run "
            "(set for the ranks only)") in text.splitlines()
