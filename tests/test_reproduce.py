"""kit reproduce: re-run a real bundle, compare within a printed tolerance, refuse mismatched environments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kit import reproduce
from kit.results import store
from conftest import REPO, kit_cli

pytestmark = pytest.mark.slow


def test_compare_metrics_tolerances(real_bundles):
    a, b = (store.load(p).metrics for p in real_bundles)
    sa = a["summary"]
    wide = reproduce.compare_metrics(a, a, reproduce.Tolerance())
    assert all(c.ok for c in wide) and [c.name for c in wide][-1] == "loss_curve"
    tight = reproduce.compare_metrics(a, {**a, "summary": {**sa, "sec_per_iter": sa["sec_per_iter"] * 1.5,
                                                          "final_loss": sa["final_loss"] + 0.01}},
                                      reproduce.Tolerance(timing=0.25, loss=1e-3))
    verdict = {c.name: c.ok for c in tight}
    assert verdict == {"sec_per_iter": False, "tflops": True, "peak_mem_mib": True, "final_loss": False, "loss_curve": True}
    assert "DIFFERS" in next(c for c in tight if c.name == "sec_per_iter").line()
    # the CI case that failed: sec/it -72% and TFLOPs +258% are one factor of 3.6, judged alike
    slow = {**a, "summary": {**sa, "sec_per_iter": 2.84, "tflops": 0.79 / 2.84}}
    fast = {**a, "summary": {**sa, "sec_per_iter": 0.79, "tflops": 1.0}}
    for tol in (1.5, 2.7):
        v = {c.name: c.ok for c in reproduce.compare_metrics(slow, fast, reproduce.Tolerance(timing=tol))}
        assert v["sec_per_iter"] == v["tflops"] == (tol >= 2.6)
    missing = reproduce.compare_metrics({**a, "summary": {**sa, "peak_mem_mib": None}}, b, reproduce.Tolerance())
    assert next(c for c in missing if c.name == "peak_mem_mib").ok is None


def test_tampered_bundle_is_not_reproduced(real_bundles, tmp_path):
    b = Path(shutil.copytree(real_bundles[0], tmp_path / real_bundles[0].name))
    plan = json.loads((b / "plan.json").read_text())
    plan["overrides"].append("train.iters=2")
    (b / "plan.json").write_text(json.dumps(plan))
    proc = kit_cli("reproduce", str(b), "--out", str(tmp_path / "new"))
    assert proc.returncode == 1
    assert f"{b}/plan.json: checksum mismatch" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_changed_preset_is_an_environment_mismatch(real_bundles, tmp_path):
    presets = tmp_path / "env"
    presets.mkdir()
    for f in (REPO / "env").glob("*.yaml"):
        shutil.copy(f, presets / f.name)
    (presets / "baseline.yaml").write_text((presets / "baseline.yaml").read_text().replace("freq_mhz: 2000", "freq_mhz: 1800"))
    proc = kit_cli("reproduce", str(real_bundles[0]), "--out", str(tmp_path / "new"), env={"KIT_PRESETS": str(presets)})
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "environment mismatch: preset:" in proc.stdout and "baseline.yaml" in proc.stdout
    assert "not run" in proc.stdout and not (tmp_path / "new").exists()


def test_reproduce_real_run(real_bundles, tmp_path):
    orig = real_bundles[0]
    out = tmp_path / "new"
    # Either run may have happened on a loaded machine (the original was recorded at 2.84 s/it
    # and re-run at 0.79 s/it on one fresh CI machine): timing is not judged here, so the
    # outcome does not depend on load; memory and the loss must match.
    proc = kit_cli("reproduce", str(orig), "--out", str(out), "--tolerance", "inf", "--mem-tolerance", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert ("tolerance: timing (sec/it, TFLOPs) not judged, peak memory within 50%, final loss within 0.001 (absolute), "
            "loss curve within 0.001 at every iteration") in text
    lines = text.splitlines()
    for name in ("sec_per_iter", "tflops"):
        assert any(ln.strip().startswith(name) and ln.rstrip().endswith("not judged") for ln in lines), name
    for name in ("peak_mem_mib", "final_loss"):
        assert any(ln.strip().startswith(name) and ln.rstrip().endswith("ok") for ln in lines), name
    assert any(ln.strip().startswith("loss_curve") and " ok  (" in ln for ln in lines), text  # every iteration matched
    assert "reproduced within tolerance" in text
    new = store.find([out])
    assert len(new) == 1
    rj = json.loads((new[0] / "reproduce.json").read_text())
    assert rj["original"] == orig.name and rj["tolerance"]["timing"] is None  # not judged (JSON has no inf)
    old_plan, new_plan = (store.load(p).provenance["plan"] for p in (orig, new[0]))
    for k in ("recipe_sha256", "preset_sha256", "overrides", "presets", "dp", "world_size"):
        assert old_plan[k] == new_plan[k], k
    # the same experiment, judged strictly on time: exits 1 and says which metric
    strict = reproduce.compare_metrics(store.load(orig).metrics, store.load(new[0]).metrics,
                                       reproduce.Tolerance(timing=0.0, memory=0.0, loss=0.0))
    timing = {c.name: c.ok for c in strict if c.name in ("sec_per_iter", "tflops")}
    assert timing["sec_per_iter"] == timing["tflops"]  # symmetric: the two never disagree
    assert next(c for c in strict if c.name == "final_loss").ok  # same seed, same data: the same loss
    assert next(c for c in strict if c.name == "loss_curve").ok  # ... at every iteration
