"""kit bundle pack/verify/import/show, kit report, kit compare — on bundles from real runs."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import shutil
import tarfile
from pathlib import Path

import pytest

from kit import bundle as bundle_mod
from kit.errors import KitError
from kit.results import archive, compare, store
from conftest import kit_cli

pytestmark = pytest.mark.slow  # every test here reads bundles of real training runs


# -- helpers ----------------------------------------------------------------------------------------
def copy_bundle(src: Path, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(src, dest_dir / src.name))


def restamp(path: Path, **changes) -> None:
    """Rewrite a bundle's manifest as a kit would (status, reason) and re-checksum it: a *valid* bundle."""
    m = bundle_mod.read_manifest(path)
    b = bundle_mod.Bundle(path=path, manifest=m)
    b.finalize(changes.get("status", m.status), changes.get("reason", m.reason))


def clone(src: Path, dest_dir: Path, suffix: str, **changes) -> Path:
    """A copy of a real bundle under a new id (as if from another run), restamped with ``changes``."""
    new = copy_bundle(src, dest_dir / "tmp-clone")
    target = dest_dir / f"{src.name}-{suffix}"
    new.rename(target)
    (dest_dir / "tmp-clone").rmdir()
    m = bundle_mod.read_manifest(target)
    m.id = target.name
    bundle_mod.Bundle(path=target, manifest=m).finalize(changes.get("status", m.status), changes.get("reason", m.reason))
    return target


def repack(src_archive: Path, dest: Path, *, replace: dict[str, bytes] | None = None,
           extra: list[tuple[tarfile.TarInfo, bytes | None]] | None = None) -> Path:
    """Copy an archive member by member, replacing some files' content and appending hostile members."""
    replace = replace or {}
    with tarfile.open(src_archive, "r:gz") as src, tarfile.open(dest, "w:gz") as out:
        for ti in src.getmembers():
            data = src.extractfile(ti).read() if ti.isreg() else None
            for suffix, new in replace.items():
                if ti.name.endswith(suffix):
                    data = new
                    ti.size = len(new)
            out.addfile(ti, io.BytesIO(data) if data is not None else None)
        for ti, data in extra or []:
            if data is not None:
                ti.size = len(data)
            out.addfile(ti, io.BytesIO(data) if data is not None else None)
    return dest


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes | None = b"x") -> tuple:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.mode = 0o644
    return ti, (data if kind == tarfile.REGTYPE else None)


@pytest.fixture(scope="module")
def packed(real_bundles, tmp_path_factory) -> Path:
    return archive.pack(real_bundles[0], tmp_path_factory.mktemp("packed"))


# -- pack / verify / import / show ------------------------------------------------------------------
def test_pack_verify_import_show_roundtrip(real_bundles, tmp_path):
    base = real_bundles[0]
    proc = kit_cli("bundle", "pack", str(base), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    arc = tmp_path / f"{base.name}.tar.gz"
    assert arc.is_file() and f"packed: {arc}" in proc.stdout
    with tarfile.open(arc) as t:
        names = t.getnames()
        assert all(n == base.name or n.startswith(base.name + "/") for n in names)
        assert all(m.isreg() or m.isdir() for m in t.getmembers())
        assert f"{base.name}/manifest.json" in names and f"{base.name}/metrics.json" in names

    proc = kit_cli("bundle", "verify", str(arc))
    assert proc.returncode == 0 and "ok:" in proc.stdout, proc.stderr

    into = tmp_path / "results"
    proc = kit_cli("bundle", "import", str(arc), "--into", str(into))
    assert proc.returncode == 0, proc.stderr
    imported = into / base.name
    assert bundle_mod.verify(imported).ok
    assert (imported / "metrics.json").read_bytes() == (base / "metrics.json").read_bytes()
    assert [p.name for p in into.iterdir() if not p.name.startswith(".")] == [base.name]
    assert not list(into.glob(".import-*")), "temporary extraction directory left behind"

    again = kit_cli("bundle", "import", str(arc), "--into", str(into))
    assert again.returncode == 2 and "already exists" in again.stderr

    show = kit_cli("bundle", "show", str(imported))
    assert show.returncode == 0, show.stderr
    assert "status   ok" in show.stdout and "verified: every checksum matches" in show.stdout
    assert "presets  baseline" in show.stdout and "| 7M |" in show.stdout
    js = json.loads(kit_cli("bundle", "show", str(imported), "--json").stdout)
    assert js["verified"] and js["metrics"]["sec_per_iter"] > 0 and js["layout"]["world_size"] == 1


def test_verify_results_directory_and_bad_input(real_bundles, tmp_path):
    d = tmp_path / "res"
    for b in real_bundles:
        copy_bundle(b, d)
    proc = kit_cli("bundle", "verify", str(d))
    assert proc.returncode == 0 and proc.stdout.count("ok:") == 2, proc.stderr
    proc = kit_cli("bundle", "verify", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such file" in proc.stderr


def test_tampered_bundle_is_named_file_by_file(real_bundles, tmp_path):
    b = copy_bundle(real_bundles[0], tmp_path)
    m = json.loads((b / "metrics.json").read_text())
    m["summary"]["sec_per_iter"] = 0.001  # a "better" number
    (b / "metrics.json").write_text(json.dumps(m))
    (b / "logs" / "launcher.log").unlink()
    (b / "notes.txt").write_text("added later")
    proc = kit_cli("bundle", "verify", str(b))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any(f"{b}/metrics.json: checksum mismatch" in x for x in lines), proc.stderr
    assert any(f"{b}/logs/launcher.log: listed in the manifest but missing" in x for x in lines)
    assert any(f"{b}/notes.txt: not listed in the manifest" in x for x in lines)
    assert kit_cli("bundle", "pack", str(b), "--out", str(tmp_path)).returncode == 1
    assert not list(tmp_path.glob("*.tar.gz"))


def test_schema_and_incomplete_are_reported(real_bundles, tmp_path):
    b = copy_bundle(real_bundles[0], tmp_path / "a")
    m = json.loads((b / "metrics.json").read_text())
    del m["summary"]
    (b / "metrics.json").write_text(json.dumps(m))
    p = json.loads((b / "provenance.json").read_text())
    del p["plan"]["dp"]
    (b / "provenance.json").write_text(json.dumps(p))
    restamp(b)  # checksums match again: only the schema is wrong
    v = bundle_mod.verify(b)
    assert f"{b}/metrics.json: schema: missing key(s) summary" in v.problems
    assert f"{b}/provenance.json: schema: plan: missing key(s) dp" in v.problems

    c = copy_bundle(real_bundles[0], tmp_path / "c")
    mj = json.loads((c / "manifest.json").read_text())
    mj["status"] = "running"
    (c / "manifest.json").write_text(json.dumps(mj))
    v = bundle_mod.verify(c)
    assert not v.ok and "incomplete: status is 'running'" in v.problems[0]


def test_import_refuses_tampered_archive(packed, tmp_path):
    bid = packed.name.removesuffix(".tar.gz")
    tampered = repack(packed, tmp_path / "tampered.tar.gz",
                      replace={"/metrics.json": b'{"summary": {"sec_per_iter": 0.001}, "iterations": []}'})
    into = tmp_path / "results"
    proc = kit_cli("bundle", "import", str(tampered), "--into", str(into))
    assert proc.returncode == 1
    assert "refused, the bundle does not verify" in proc.stderr
    assert f"{tampered}:{bid}/metrics.json: checksum mismatch" in proc.stderr
    assert not (into / bid).exists() and not list(into.glob(".import-*"))
    assert kit_cli("bundle", "verify", str(tampered)).returncode == 1


HOSTILE = {
    "absolute": lambda bid: [member("/tmp/kit-evil-abs")],
    "dotdot": lambda bid: [member(f"{bid}/../../kit-evil-dotdot")],
    "symlink": lambda bid: [member(f"{bid}/logs/passwd", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": lambda bid: [member(f"{bid}/logs/hard", tarfile.LNKTYPE, "/etc/passwd")],
    "device": lambda bid: [member(f"{bid}/logs/null", tarfile.CHRTYPE)],
    "fifo": lambda bid: [member(f"{bid}/logs/fifo", tarfile.FIFOTYPE)],
    "second-top-level": lambda bid: [member("other-bundle/metrics.json")],
    "duplicate": lambda bid: [member(f"{bid}/metrics.json", data=b'{"summary": {}, "iterations": []}')],
}
WHY = {"absolute": "absolute path", "dotdot": "climbs out", "symlink": "symbolic link", "hardlink": "hard link",
       "device": "is a device", "fifo": "FIFO", "second-top-level": "one bundle per archive", "duplicate": "appears twice"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_import_refuses_hostile_archive(packed, tmp_path, kind):
    bid = packed.name.removesuffix(".tar.gz")
    evil = repack(packed, tmp_path / f"{kind}.tar.gz", extra=HOSTILE[kind](bid))
    into = tmp_path / "deep" / "results"
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(KitError) as e:
        archive.import_archive(evil, into)
    assert "refused" in str(e.value) and WHY[kind] in str(e.value), str(e.value)
    assert str(evil) in str(e.value)
    after = sorted(p for p in tmp_path.rglob("*") if not p.name.startswith(".kit-import"))
    assert [p for p in after if p not in before and p not in (into, into.parent)] == [], "something was written"
    assert not Path("/tmp/kit-evil-abs").exists()


def test_import_cli_refuses_hostile_archive_with_one_line(packed, tmp_path):
    bid = packed.name.removesuffix(".tar.gz")
    evil = repack(packed, tmp_path / "evil.tar.gz", extra=[member(f"{bid}/../../escaped.txt")])
    proc = kit_cli("bundle", "import", str(evil), "--into", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("kit: error: ") and proc.stderr.count("\n") == 1
    assert "climbs out of the bundle" in proc.stderr
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_import_size_caps(packed, tmp_path, monkeypatch):
    small = archive.Limits(max_member=4096)
    with pytest.raises(KitError, match="per-file limit"):
        archive.import_archive(packed, tmp_path / "a", small)
    with pytest.raises(KitError, match="limit for one bundle"):
        archive.import_archive(packed, tmp_path / "b", archive.Limits(max_total=10_000))
    with pytest.raises(KitError, match="over the .* MiB limit"):
        archive.import_archive(packed, tmp_path / "c", archive.Limits(max_archive=100))
    with pytest.raises(KitError, match="more than 3 members"):
        archive.import_archive(packed, tmp_path / "d", archive.Limits(max_members=3))
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "e"), "--max-member-mib", "0.001")
    assert proc.returncode == 2 and "per-file limit" in proc.stderr
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "f"),
                   env={"KIT_IMPORT_MAX_TOTAL_MIB": "0.01"})
    assert proc.returncode == 2 and "limit for one bundle" in proc.stderr
    for d in "abcdef":
        assert not [p for p in (tmp_path / d).iterdir() if not p.name.startswith(".kit-import")] if (tmp_path / d).exists() else True
    # a gzip bomb: one huge zero-filled member, refused from its header before it is inflated
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as t:
        ti = tarfile.TarInfo("b/big")
        ti.size = 64 << 20
        t.addfile(tarfile.TarInfo("b") if False else _dir("b"))
        t.addfile(ti, io.BytesIO(bytes(ti.size)))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(KitError, match="per-file limit"):
        archive.import_archive(bomb, tmp_path / "g", archive.Limits(max_member=1 << 20))


def _dir(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    return ti


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(KitError, match="not a readable tar archive"):
        archive.import_archive(junk, tmp_path / "r")


# -- concurrency ------------------------------------------------------------------------------------
def _import_worker(args):
    arc, into = args
    try:
        return ("ok", str(archive.import_archive(Path(arc), Path(into))))
    except KitError as e:
        return ("refused", str(e))


def _create_worker(args):
    src, into, n = args
    out = []
    for _ in range(n):
        b = bundle_mod.Bundle.create(Path(into), recipe="tiny", preset="baseline")
        for rel in ("metrics.json", "provenance.json", "recipe.yaml", "preset.yaml", "plan.json"):
            shutil.copy(Path(src) / rel, b.path / rel)
        b.write_json("worker.json", {"bundle": b.id})
        b.finalize("ok")
        out.append(b.id)
    return out


def test_concurrent_imports_and_runs_never_mix(packed, real_bundles, tmp_path):
    into = tmp_path / "results"
    ctx = mp.get_context("fork")
    with ctx.Pool(6) as pool:
        imports = pool.map_async(_import_worker, [(str(packed), str(into))] * 6)
        creates = pool.map_async(_create_worker, [(str(real_bundles[0]), str(into), 5)] * 4)
        results = imports.get(120)
        created = [i for ids in creates.get(120) for i in ids]
    assert sorted(r[0] for r in results).count("ok") == 1, results
    assert all("already exists" in r[1] for r in results if r[0] == "refused")
    assert len(set(created)) == 20
    found = store.find([into])
    assert len(found) == 21
    for b in found:
        assert bundle_mod.verify(b).ok, bundle_mod.verify(b).problems
        if b.name in created:
            assert json.loads((b / "worker.json").read_text())["bundle"] == b.name
    assert not list(into.glob(".import-*"))


# -- report -------------------------------------------------------------------------------------------
def test_report_markdown_layout(real_bundles, tmp_path):
    d = tmp_path / "res"
    base, tuned = (copy_bundle(b, d) for b in real_bundles)
    stalled = clone(real_bundles[0], d, "stalled", status="stalled",
                    reason="no new iteration for 61s (limit 60s) after iteration 1")
    proc = kit_cli("report", str(d))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    lines = text.splitlines()
    assert "### 7M model, Sequence Length=128" in lines
    i = lines.index("### 7M model, Sequence Length=128")
    assert lines[i + 1].startswith("| Nodes | Size | DP | TP | PP | MBS |  GBS | Mem  | Sec/it | TFLOPs |Est. Aggr. PetaFLOPs| Notes |")
    rows = [x for x in lines[i + 3:] if x.startswith("| ")]
    assert len(rows) == 3
    # the table's order: plain rows first, the combined preset after; stalled marked ^^ with - timing
    assert rows[0].startswith("| 1 | 7M | 1 | 1 | 1 | 1 | 8 | ") or rows[0].startswith("| 1^^ | 7M")
    assert any(r.startswith('| 1 (2.2Hz, LD_PRELOAD=libtcmalloc.so, "retention_state=0") | 7M | 1 | 1 | 1 | 1 | 8 |') for r in rows)
    st = next(r for r in rows if r.startswith("| 1^^ |"))
    cells = [c.strip() for c in st.strip("|").split("|")]
    assert cells[8] == "-" and cells[9] == "-" and cells[10] == "-" and cells[7].endswith("MiB")
    assert "^^ Stalled" in text and "after iteration 1" in text
    created = bundle_mod.read_manifest(base).created
    assert all(r.rstrip(" |").endswith(created[5:10]) for r in rows)

    # csv and json carry the same rows with raw numbers
    csv_rows = list(csv.DictReader(io.StringIO(kit_cli("report", str(d), "-f", "csv").stdout)))
    assert len(csv_rows) == 3 and {r["status"] for r in csv_rows} == {"ok", "stalled"}
    ok = [r for r in csv_rows if r["status"] == "ok"]
    assert all(float(r["sec_per_iter"]) > 0 for r in ok)
    assert all(r["device_mem_mib"] == "" for r in csv_rows)  # CPU runs: no GPU memory, not a 0
    js = json.loads(kit_cli("report", str(d), "--format", "json").stdout)
    assert {r["id"] for r in js["rows"]} == {base.name, tuned.name, stalled.name}
    assert kit_cli("report", str(d), "-f", "xml").returncode == 2


def test_report_plots_and_left_out_bundles(real_bundles, tmp_path):
    d = tmp_path / "res"
    for b in real_bundles:
        copy_bundle(b, d)
    bad = clone(real_bundles[0], d, "tampered")
    (bad / "metrics.json").write_text("{}")
    proc = kit_cli("report", str(d), "--plot", str(tmp_path / "plots"))
    assert proc.returncode == 1  # printed, but says what it left out
    assert f"warning: {bad}: left out:" in proc.stderr and proc.stdout.count("| 7M |") == 2
    for name in ("sec_per_iter.png", "tflops.png", "memory.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert kit_cli("report", str(tmp_path / "empty-nothing")).returncode == 2
    (tmp_path / "empty").mkdir()
    proc = kit_cli("report", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no bundles found" in proc.stderr


# -- compare ------------------------------------------------------------------------------------------
def test_compare_real_bundles(real_bundles):
    base, tuned = real_bundles
    c = compare.compare(store.load(base), store.load(tuned))
    keys = {(d.section, d.key) for d in c.diffs}
    assert ("plan", "presets") in keys and ("plan", "preset_sha256") in keys
    assert ("settings", "freq_mhz") in keys and ("settings", "allocator") in keys
    assert ("settings", "retention_state") in keys and ("environment", "LD_PRELOAD") in keys
    assert ("plan", "recipe_sha256") not in keys and ("hardware", "cpu_model") not in keys
    m = {x.name: x for x in c.metrics}
    a_s = json.loads((base / "metrics.json").read_text())["summary"]["sec_per_iter"]
    b_s = json.loads((tuned / "metrics.json").read_text())["summary"]["sec_per_iter"]
    assert m["sec_per_iter"].a == a_s and m["sec_per_iter"].b == b_s
    assert m["sec_per_iter"].judgement.verdict in ("faster", "slower", "within noise")
    assert m["tflops"].ratio == pytest.approx(1 / m["sec_per_iter"].ratio)  # one judgement, seen both ways

    proc = kit_cli("compare", str(base), str(tuned))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "== metrics (B vs A)" in out and "sec_per_iter" in out and "95% interval" in out
    assert "== settings:" in out and "tcmalloc" in out and "== environment:" in out
    assert "== hardware: identical" in out
    js = json.loads(kit_cli("compare", str(base), str(tuned), "--json").stdout)
    assert any(d["key"] == "allocator" for d in js["differences"])
    assert kit_cli("compare", str(base), "/nonexistent").returncode == 2


def test_compare_shows_cpu_capability_and_blas_core(tmp_path):
    """Two runs of one image, on the generic path and on A64FX kernels, differ in what the
    inventory recorded; a bundle whose blas is not a mapping compares as unknown, not a crash."""
    from kit.results.store import BundleDocs

    def docs(software):
        return BundleDocs(path=tmp_path, manifest={}, metrics={}, provenance={"software": software})

    a = docs({"torch_cpu_capability": "DEFAULT", "blas": {"corename": "neoversen1"}})
    b = docs({"torch_cpu_capability": "SVE256", "blas": {"corename": "a64fx"}})
    got = {(d.section, d.key): (d.a, d.b) for d in compare.compare(a, b).diffs}
    assert got[("software", "torch_cpu_capability")] == ("DEFAULT", "SVE256")
    assert got[("software", "blas_core")] == ("neoversen1", "a64fx")
    odd = {(d.section, d.key): (d.a, d.b) for d in compare.compare(a, docs({"blas": ["x"]})).diffs}
    assert odd[("software", "blas_core")] == ("neoversen1", None)
