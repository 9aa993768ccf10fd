"""Bundle writing and verification: atomic files, unique ids, checksums, incomplete bundles."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

from kit.bundle import MANIFEST, Bundle, atomic_write, read_manifest, sha256_file, verify


PLAN = {"nodes": 1, "dp": 1, "tp": 1, "pp": 1, "micro_batch": 1, "global_batch": 8, "ranks_per_node": 1}


def make(tmp_path, status="ok"):
    b = Bundle.create(tmp_path, recipe="tiny", preset="tuned")
    b.write_json("metrics.json", {"summary": {"sec_per_iter": 1.0}, "iterations": []})
    b.write_json("provenance.json", {"plan": PLAN, "runtime": {}, "software": {}, "host": {}})
    b.write_yaml("recipe.yaml", {"name": "tiny"})
    b.write_yaml("preset.yaml", {"name": "tuned"})
    b.write_text("logs/launcher.log", "iteration 1/ 1 |\n")
    b.finalize(status)
    return b


def test_finalized_bundle_verifies(tmp_path):
    b = make(tmp_path)
    v = verify(b.path)
    assert v.ok, v.problems
    m = read_manifest(b.path)
    assert set(m.files) == {"metrics.json", "provenance.json", "recipe.yaml", "preset.yaml", "logs/launcher.log"}
    assert m.files["logs/launcher.log"].sha256 == sha256_file(b.path / "logs/launcher.log")[0]


def test_tampered_file_is_reported_by_name(tmp_path):
    b = make(tmp_path)
    (b.path / "metrics.json").write_text('{"summary": {"sec_per_iter": 0.5}, "iterations": []}\n')
    v = verify(b.path)
    assert not v.ok
    assert any("metrics.json" in p and "checksum mismatch" in p for p in v.problems)


def test_extra_and_missing_files_are_reported(tmp_path):
    b = make(tmp_path)
    (b.path / "logs/launcher.log").unlink()
    (b.path / "extra.txt").write_text("x")
    problems = "\n".join(verify(b.path).problems)
    assert "launcher.log: listed in the manifest but missing" in problems
    assert "extra.txt: not listed in the manifest" in problems


def test_running_bundle_is_incomplete(tmp_path):
    b = Bundle.create(tmp_path, recipe="tiny", preset="tuned")
    b.write_json("metrics.json", {})
    v = verify(b.path)
    assert not v.ok and v.status == "running"
    assert "incomplete" in v.problems[0]


def test_corrupt_manifest_is_a_schema_error(tmp_path):
    b = make(tmp_path)
    data = json.loads((b.path / MANIFEST).read_text())
    del data["status"]
    (b.path / MANIFEST).write_text(json.dumps(data))
    v = verify(b.path)
    assert not v.ok and "schema" in v.problems[0] and "status" in v.problems[0]


def test_ids_never_collide_in_one_second(tmp_path):
    with ThreadPoolExecutor(8) as ex:
        bundles = list(ex.map(lambda _: Bundle.create(tmp_path, recipe="tiny", preset="tuned"), range(64)))
    assert len({b.id for b in bundles}) == 64
    assert len(os.listdir(tmp_path)) == 64


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a" / "f.json"
    atomic_write(p, "1")
    atomic_write(p, "2")
    assert p.read_text() == "2"
    assert os.listdir(p.parent) == ["f.json"]


def test_document_missing_keys_is_a_schema_problem(tmp_path):
    b = Bundle.create(tmp_path, recipe="tiny", preset="tuned")
    b.write_json("metrics.json", {"iterations": []})
    b.write_json("provenance.json", {"plan": PLAN, "runtime": {}, "software": {}, "host": {}})
    b.write_yaml("recipe.yaml", {"name": "tiny"})
    b.write_yaml("preset.yaml", {"name": "tuned"})
    b.finalize("ok")
    problems = verify(b.path).problems
    assert any("metrics.json" in p and "summary" in p for p in problems), problems
