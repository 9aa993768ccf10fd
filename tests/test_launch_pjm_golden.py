"""Golden PJM job scripts, one per row of the sweep table (shared/reference/fugaku-config-sweep.md).

Each script must read like a Fugaku user's own (the DeepSpeedFugaku scripts): node count,
rscgrp, elapse, one -L line with the power knobs, --mpi proc / max-proc-per-node, -x for
the exported variables, -j -S, and the mpiexec -std-proc line the kit runs.
Regenerate after an intended change with KIT_UPDATE_GOLDEN=1.

Where each line comes from (issue 20; shared/reference/fugaku-site.md):
- ``-L "rscunit=rscunit_ft01,rscgrp=…"``, ``-g GROUP``, ``-x PJM_LLIO_GFSCACHE=/vol0003:/vol0004``:
  every RIKEN and DeepSpeedFugaku script (124m_dp512.sh at 218ef2b); from sites/fugaku.yaml.
- the power line writes all six knobs (``freq``, ``retention_state``, ``eco_state``,
  ``throttling_state``, ``issue_state``, ``ex_pipe_state``): Users Guide §7.1 gives Fugaku's
  defaults as freq 2200, eco_state 2, retention_state 1 and says they may change; the sweep
  authors' later scripts (scripts/13b/*_outer.sh) write every knob. Normal mode (0) is the
  table's baseline (env/baseline.yaml).
- ``-x GLOO_SOCKET_IFNAME=tofu1`` and ``MASTER_ADDR`` from the master node's ``tofu1``:
  compute nodes have tofu0, tofu1, virbr0; gloo needs the Tofu interface.
- ``-std-proc …/%j/%m/%/1000r/out``: Users Guide, MPI input/output redirection; the sweep
  authors used ``output.%j/%m/%/1000r/stdproc`` for large jobs (one directory per 1000 ranks).
- ``-x KIT_WORLD_SIZE``/``KIT_RANKS_PER_NODE``: under Fujitsu MPI only ``PMIX_RANK`` was set in
  a public user's log (kit.rankenv derives LOCAL_RANK from it).
- the last line runs the site's job-side Python (``job_python``), not the login node's
  (login nodes are x86-64, compute nodes A64FX).
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
SITES = Path(__file__).resolve().parent.parent / "sites"
JOB_PYTHON = "/vol0004/hp190122/u01234/venv-aarch64/bin/python3"

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
    # sites/fugaku.yaml as a user fills it in: their group and a Python made on a compute node
    site = tmp_path / "fugaku.yaml"
    site.write_text((SITES / "fugaku.yaml").read_text().replace("group: null", "group: hp190122")
                    .replace("job_python: null", f"job_python: {JOB_PYTHON}"))
    monkeypatch.setenv("KIT_SITE", str(site))
    return lib


def render(name, recipe, presets, overrides, tcmalloc: Path, **job) -> tuple[str, plan_mod.Plan]:
    p = plan_mod.resolve(recipe_name=recipe, preset_names=presets, overrides=overrides, launcher="pjm",
                         job=plan_mod.JobOptions(**job) if job else None)
    text = schedulers.get("pjm").render(p, BUNDLE, warnings=known_bad.script_warnings(p))
    text = text.replace(str(tcmalloc), "/home/u01234/lib/libtcmalloc.so")
    assert sys.executable not in text.splitlines()[-1], "the job starts the site's Python"
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
    assert '#PJM -L "node=1"' in lines and '#PJM -L "rscunit=rscunit_ft01,rscgrp=small"' in lines
    assert '#PJM -L "elapse=01:00:00"' in lines and "#PJM -g hp190122" in lines
    assert "#PJM -x PJM_LLIO_GFSCACHE=/vol0003:/vol0004" in lines and "#PJM -x GLOO_SOCKET_IFNAME=tofu1" in lines
    power = [ln for ln in lines if ln.startswith("#PJM") and "freq=" in ln]
    assert len(power) == 1, "the power knobs share one -L line"
    knobs = dict(kv.split("=") for kv in power[0].split('"')[1].split(","))
    assert knobs == {"freq": str(p.preset.freq_mhz), "retention_state": str(p.preset.retention_state), "eco_state": "0",
                     "throttling_state": "0", "issue_state": "0", "ex_pipe_state": "0"}
    stated = [ln.replace("/home/u01234/lib/libtcmalloc.so", str(fake_tcmalloc)) for ln in lines
              if ln.startswith("# setting")]
    for s in p.settings:  # each directive the plan records is in the script verbatim, each setting stated
        if s.by == "pjm":
            assert s.applied_by in lines, s
        if s.status != "not-requested":
            assert any(f"{s.name}={s.requested}" in ln and ln.endswith(f": {s.applied_by}") for ln in stated), s
    assert f'#PJM --mpi "proc={p.world_size}"' in lines
    assert f'#PJM --mpi "max-proc-per-node={p.ranks_per_node}"' in lines
    assert f"#PJM -x OMP_NUM_THREADS={48 // p.ranks_per_node}" in lines  # 48 cores / K
    assert "#PJM -j" in lines and "#PJM -S" in lines
    assert re.search(rf"mpiexec -np {p.world_size} -std-proc \S+/logs/stdproc/%j/%m/%/1000r/out", text)
    assert "-x KIT_WORLD_SIZE=" in text and "-x GLOO_SOCKET_IFNAME" in text
    # tcmalloc reaches the ranks only, never the job script's shell
    assert not any(ln.startswith("#PJM -x LD_PRELOAD") for ln in lines)
    assert ("-x LD_PRELOAD" in text) == (p.preset.allocator == "tcmalloc")
    assert lines[-1] == f"{JOB_PYTHON} -m kit job-run {BUNDLE}"


def test_pjm_options_llio_group_rscgrp(fake_tcmalloc):
    text, _ = render("x", "gpt-124m", ["tuned"], [], fake_tcmalloc, time_limit="24:00:00", queue="large",
                     account="hp190122", llio=["localtmp-size=50Gi", "sharedtmp-size=10Gi"])
    assert '#PJM -L "rscunit=rscunit_ft01,rscgrp=large"' in text and '#PJM -L "elapse=24:00:00"' in text
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
    line = '#PJM -L "freq=2200,retention_state=0,eco_state=0,throttling_state=0,issue_state=0,ex_pipe_state=0"'
    for knob in ("freq_mhz", "retention_state", "eco_state", "throttling_state", "issue_state", "ex_pipe_state"):
        assert p.setting(knob).applied_by == line and p.setting(knob).by == "pjm"
    assert p.setting("ranks_per_node").applied_by == '#PJM --mpi "max-proc-per-node=4"'
    assert p.threads_per_rank == 12


def test_pjm_writes_every_power_knob_even_when_no_preset_sets_it(fake_tcmalloc, tmp_path, monkeypatch):
    """Fugaku's defaults (eco_state=2, freq 2200) are not the table's baseline and may change
    (Users Guide §7.1): unset knobs are written at normal mode and recorded as requested."""
    (tmp_path / "bare.yaml").write_text("description: sets nothing\n")
    monkeypatch.setenv("KIT_PRESETS", str(tmp_path))
    p = plan_mod.resolve(recipe_name="gpt-124m", preset_names=["bare"], launcher="pjm")
    text = schedulers.get("pjm").render(p, BUNDLE)
    assert ('#PJM -L "freq=2000,retention_state=1,eco_state=0,throttling_state=0,issue_state=0,ex_pipe_state=0"'
            in text.splitlines())
    eco = p.setting("eco_state")
    assert eco.requested == 0 and eco.status == "applied" and "written explicitly" in eco.note


def test_pjm_script_says_tcmalloc_is_resolved_on_the_node(monkeypatch, fake_tcmalloc):
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
