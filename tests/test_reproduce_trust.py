"""kit reproduce treats a shared bundle as data: nothing its sender chose runs.

Each hostile bundle here is fully consistent (re-finalized after the change, as a sender
would make it), so it verifies: the refusal comes from reproduce's allow-list, not from a
checksum."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kit.bundle import Bundle, verify
from conftest import kit_cli

pytestmark = pytest.mark.slow


def _hostile(src: Path, tmp_path: Path, edit) -> Path:
    b = Path(shutil.copytree(src, tmp_path / src.name))
    plan = json.loads((b / "plan.json").read_text())
    edit(plan)
    (b / "plan.json").write_text(json.dumps(plan))
    bb = Bundle.open(b)
    bb.finalize(bb.manifest.status)
    assert verify(b).ok
    return b


def test_a_command_override_from_a_bundle_is_refused_and_nothing_runs(real_bundles, tmp_path):
    marker = tmp_path / "pwned"
    b = _hostile(real_bundles[0], tmp_path, lambda p: p["overrides"].append(f"command=[sh, -c, 'touch {marker}']"))
    proc = kit_cli("reproduce", str(b), "--out", str(tmp_path / "new"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "command=" in proc.stderr and "does not take from a bundle" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "new").exists()


@pytest.mark.parametrize("edit,where", [
    (lambda p: p.update(recipe_name="/etc/kit-evil.yaml"), "recipe_name"),
    (lambda p: p.update(preset_names=["../../evil"]), "preset_names"),
    (lambda p: p["overrides"].append("data=/etc/shadow"), "overrides"),
])
def test_paths_chosen_by_a_bundle_are_refused(real_bundles, tmp_path, edit, where):
    b = _hostile(real_bundles[0], tmp_path, edit)
    proc = kit_cli("reproduce", str(b), "--out", str(tmp_path / "new"))
    assert proc.returncode == 2 and where in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "new").exists()


def test_image_launcher_and_force_are_not_taken_and_what_runs_is_printed(real_bundles, tmp_path):
    def edit(p):
        p.update(image="evil.example/x:latest", runtime="podman", launcher="mpirun", force=True)
    b = _hostile(real_bundles[0], tmp_path, edit)
    proc = kit_cli("reproduce", str(b), "--out", str(tmp_path / "new"), "--tolerance", "inf", "--mem-tolerance", "1")
    text = proc.stdout
    assert "the bundle ran with --image evil.example/x:latest; not taken from it" in text
    assert "the bundle ran with --launcher mpirun; not taken from it" in text
    assert "the bundle was run with --force" in text
    assert "will run: local launcher, 1 rank(s) on 1 node(s), runtime host" in text
    assert "command: " in text and "-m kit.workload" in text
    assert "evil.example" not in text.split("will run:")[1]
