"""`kit bundle import` holds its limits before anything is read, inflated or written: real
hostile archives (oversized and many-record PAX headers, negative sizes, a 1 MB archive that
inflates to 1 GiB, too many members, links, devices, escapes) are refused with one line
naming the archive and the reason, and nothing is left in the results directory."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import pytest

import tarcraft as tc
from conftest import kit_cli
from kit.errors import KitError
from kit.results import archive, tarstream
from synthetic_bundle import make_bundle


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("packed")
    return archive.pack(make_bundle(d / "res"), d)


@pytest.fixture
def bid(packed) -> str:
    return packed.name.removesuffix(".tar.gz")


def refused(arc: Path, tmp_path: Path, match: str, limits: archive.Limits | None = None) -> str:
    """Import ``arc``; it must be refused with ``match`` in the message and nothing left in ``into``."""
    into = tmp_path / "into"
    with pytest.raises(KitError) as e:
        archive.import_archive(arc, into, limits)
    msg = str(e.value)
    assert match in msg, msg
    assert msg.startswith(f"{arc}: ") and "\n" not in msg
    assert [p.name for p in into.iterdir()] == [] if into.exists() else True, "something was materialized"
    return msg


def with_extra(packed: Path, tmp_path: Path, name: str, extra: bytes) -> Path:
    return tc.write(tmp_path / name, tc.members_of(packed) + extra + tc.end())


# -- the honest path --------------------------------------------------------------------------------
def test_packed_bundle_imports(packed, tmp_path, bid):
    assert archive.import_archive(packed, tmp_path / "r").name == bid


def test_uncompressed_tar_imports(packed, tmp_path, bid):
    plain = tc.write(tmp_path / "plain.tar", tc.tar_bytes(packed), compress=False)
    assert archive.import_archive(plain, tmp_path / "r").name == bid


def test_long_names_through_pax_and_gnu_headers_import(tmp_path):
    """Paths over 100 bytes arrive through a PAX path record (pack) or a GNU long name (GNU tar)."""
    b = make_bundle(tmp_path / "res")
    long = "logs/" + "n" * 150 + ".log"
    (b / long).write_text("x\n")
    from kit import bundle as bundle_mod
    bundle_mod.Bundle.open(b).finalize("ok")
    arc = archive.pack(b, tmp_path / "pax")
    assert archive.import_archive(arc, tmp_path / "r1").joinpath(long).read_text() == "x\n"
    gnu = tmp_path / "gnu.tar.gz"
    with tarfile.open(arc) as src, tarfile.open(gnu, "w:gz", format=tarfile.GNU_FORMAT) as out:
        for ti in src.getmembers():
            out.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
    assert b"././@LongLink" in tc.tar_bytes(gnu)
    assert archive.import_archive(gnu, tmp_path / "r2").joinpath(long).read_text() == "x\n"


# -- extended headers --------------------------------------------------------------------------------
def test_megabyte_pax_header_refused_before_it_is_read(packed, tmp_path, bid):
    big = tc.pax_record("comment", "A" * (1 << 20) + "B" * 100_000)
    arc = with_extra(packed, tmp_path, "bigpax.tar.gz", tc.pax(big) + tc.header(f"{bid}/x") + tc.data(b""))
    assert arc.stat().st_size < 64 << 10
    refused(arc, tmp_path, f"a PAX extended header of {len(big)} bytes (the limit is 65536)")


def test_pax_header_declaring_gigabytes_refused_from_its_size_field(packed, tmp_path, bid):
    arc = with_extra(packed, tmp_path, "hugepax.tar.gz", tc.header("PaxHeader", size=3 << 30, kind=b"x"))
    refused(arc, tmp_path, "PAX extended header of 3221225472 bytes")


def test_pax_header_holding_a_gibibyte_refused_before_it_is_inflated(packed, tmp_path, bid):
    """The issue's case: a ~1 MB archive whose PAX header holds 1 GiB (tarfile reads it whole:
    2.1 GB of memory). Refused from the header's size field: the stream is never inflated."""
    arc = zero_filled_gzip(tmp_path / "pax1g.tar.gz", tc.members_of(packed) + tc.header("PaxHeader", size=1 << 30, kind=b"x"),
                           1 << 30, tc.header(f"{bid}/x") + tc.end())
    assert arc.stat().st_size < 1100 << 10
    refused(tmp_path / "pax1g.tar.gz", tmp_path, "a PAX extended header of 1073741824 bytes (the limit is 65536)")


def test_pax_record_shape_that_backtracks_in_tarfile_is_refused_at_once(packed, tmp_path, bid):
    """'3 a' repeated then one '=': Python 3.11's tarfile regex rescans to the '=' for every
    record (quadratic). The record parser here rejects the first record's length."""
    body = b"3 a" * 20_000 + b"="
    arc = with_extra(packed, tmp_path, "redos.tar.gz", tc.pax(body) + tc.header(f"{bid}/x") + tc.data(b""))
    refused(arc, tmp_path, "malformed PAX record at offset 0 (length 3)")


def test_many_tiny_pax_records_refused(packed, tmp_path, bid):
    """The shape of the quadratic PAX parse in Python 3.11's tarfile: thousands of tiny records."""
    records = tc.pax_record("a", "b") * 9000
    arc = with_extra(packed, tmp_path, "quadpax.tar.gz",
                     tc.pax(records) + tc.header(f"{bid}/x") + tc.data(b""))
    refused(arc, tmp_path, f"more than {tarstream.MAX_PAX_RECORDS} records", archive.Limits(max_header=1 << 20))


def test_gnu_long_name_over_cap_refused(packed, tmp_path, bid):
    arc = with_extra(packed, tmp_path, "longname.tar.gz",
                     tc.header("././@LongLink", size=100_000, kind=b"L") + tc.data(b"a" * 100_000))
    refused(arc, tmp_path, "a GNU long name of 100000 bytes")


@pytest.mark.parametrize("records,why", [
    (tc.pax_record("GNU.sparse.map", "0,10"), "sparse file"),
    (tc.pax_record("hdrcharset", "BINARY"), "names must be UTF-8"),
    (tc.pax_record("size", "-1"), "negative size in a PAX header"),
    (tc.pax_record("path", b"\xff\xfe"), "not UTF-8"),
    (b"99999 path=x\n", "malformed PAX record"),
    (b"5 a=b\n", "malformed PAX record"),
])
def test_hostile_pax_records_refused(packed, tmp_path, bid, records, why):
    arc = with_extra(packed, tmp_path, "pax.tar.gz", tc.pax(records) + tc.header(f"{bid}/x", size=1) + tc.data(b"x"))
    refused(arc, tmp_path, why)


def test_pax_global_header_refused(packed, tmp_path):
    arc = with_extra(packed, tmp_path, "global.tar.gz",
                     tc.header("pax_global_header", size=12, kind=b"g") + tc.data(tc.pax_record("a", "bc")))
    refused(arc, tmp_path, "PAX global header")


# -- numeric fields ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,why", [
    (b"-0000000001\x00", "negative size (-0000000001)"),
    (b"\xff" * 12, "negative size (base-256)"),
    (b"0000000001x\x00", "malformed size field"),
])
def test_bad_size_fields_refused(packed, tmp_path, bid, field, why):
    arc = with_extra(packed, tmp_path, "size.tar.gz", tc.header(f"{bid}/neg", size_field=field) + tc.data(b"x" * 600))
    msg = refused(arc, tmp_path, why)
    assert "damaged" in msg or "refused" in msg


def test_negative_size_cannot_lift_the_total_cap(packed, tmp_path, bid):
    """tarfile takes '-1' for -1 and the running total goes down: here it is refused outright."""
    neg = tc.header(f"{bid}/neg", size_field=f"-{(1 << 30):o}".rjust(11, "0").encode() + b"\x00")
    big = tc.header(f"{bid}/big", size=2 << 20) + tc.data(bytes(2 << 20))
    arc = with_extra(packed, tmp_path, "negtotal.tar.gz", neg + big)
    refused(arc, tmp_path, "negative size", archive.Limits(max_total=1 << 20))


def test_base256_size_over_limits_refused(packed, tmp_path, bid):
    field = b"\x80" + (5 << 30).to_bytes(11, "big")
    arc = with_extra(packed, tmp_path, "b256.tar.gz", tc.header(f"{bid}/huge", size_field=field))
    refused(arc, tmp_path, "5120.0 MiB, over the 1024 MiB per-file limit")


# -- sizes, counts, ratio, time ---------------------------------------------------------------------------
_ZERO_MIB = bytes(1 << 20)


def zero_filled_gzip(path: Path, head: bytes, zeros: int, tail: bytes) -> Path:
    """A real gzip file of ``head``, ``zeros`` zero bytes (a multiple of 1 MiB) and ``tail``,
    made without compressing gigabytes: after a full flush the deflate window is reset, so each
    1 MiB of zeros compresses to the same block, written again and again."""
    n, rest = divmod(zeros, len(_ZERO_MIB))
    assert rest == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(_ZERO_MIB) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(_ZERO_MIB) + c.flush(zlib.Z_FULL_FLUSH) == block
    last = c.compress(tail) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(n):
        crc = zlib.crc32(_ZERO_MIB, crc)
    crc = zlib.crc32(tail, crc)
    total = len(head) + zeros + len(tail)
    with path.open("wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first)
        for _ in range(n):
            f.write(block)
        f.write(last + crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little"))
    return path


def gzip_bomb(path: Path, top: str, member: int) -> Path:
    """A real gzip file whose tar stream holds one zero-filled member of ``member`` bytes."""
    head = tc.header(f"{top}/", kind=b"5") + tc.header(f"{top}/zeros", size=member)
    return zero_filled_gzip(path, head, member, tc.end())


def test_one_megabyte_archive_inflating_to_a_gibibyte_refused_by_ratio(packed, tmp_path, bid):
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", bid, 1 << 30)
    assert bomb.stat().st_size < (11 << 20) // 10  # about 1 MB
    d = zlib.decompressobj(31)  # it is a real, well-formed gzip file of 1 GiB
    n = 0
    with bomb.open("rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                n += len(d.decompress(chunk, 64 << 20))
                chunk = d.unconsumed_tail
    assert n > 1 << 30 and d.eof
    # within the size defaults (1 GiB per file, 4 GiB in all): only the ratio stops it
    refused(bomb, tmp_path, "inflates more than 200 times its compressed size")


def test_ratio_limit_is_a_knob(tmp_path, packed, bid):
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", bid, 16 << 20)
    refused(bomb, tmp_path, "inflates more than 200 times")
    # trusted: with the ratio raised the same archive is read through (and then fails on content)
    with pytest.raises(Exception) as e:
        archive.import_archive(bomb, tmp_path / "t", archive.Limits(max_ratio=1e6))
    assert "inflates" not in str(e.value)


def test_too_many_members_refused(packed, tmp_path, bid):
    extra = b"".join(tc.header(f"{bid}/logs/f{i}") for i in range(20_001))
    arc = with_extra(packed, tmp_path, "many.tar.gz", extra)
    refused(arc, tmp_path, "more than 20000 members")


def test_time_limit(packed, tmp_path):
    refused(packed, tmp_path, "longer than 0 s (the time limit)", archive.Limits(max_seconds=0))


def test_size_caps(packed, tmp_path):
    refused(packed, tmp_path / "a", "per-file limit", archive.Limits(max_member=1000))
    refused(packed, tmp_path / "b", "limit for one bundle", archive.Limits(max_total=4000))
    refused(packed, tmp_path / "c", "over the 0 MiB limit", archive.Limits(max_archive=100))
    refused(packed, tmp_path / "d", "more than 3 members", archive.Limits(max_members=3))


# -- types and paths ---------------------------------------------------------------------------------------
HOSTILE = {
    "absolute": (lambda bid: tc.header("/tmp/kit-evil-abs", size=1) + tc.data(b"x"), "absolute path"),
    "dotdot": (lambda bid: tc.header(f"{bid}/../../kit-evil", size=1) + tc.data(b"x"), "climbs out"),
    "symlink": (lambda bid: tc.header(f"{bid}/logs/passwd", kind=b"2", linkname="/etc/passwd"), "symbolic link"),
    "hardlink": (lambda bid: tc.header(f"{bid}/logs/hard", kind=b"1", linkname="/etc/passwd"), "hard link"),
    "chardev": (lambda bid: tc.header(f"{bid}/logs/null", kind=b"3"), "is a device"),
    "blockdev": (lambda bid: tc.header(f"{bid}/logs/sda", kind=b"4"), "is a device"),
    "fifo": (lambda bid: tc.header(f"{bid}/logs/fifo", kind=b"6"), "FIFO"),
    "contiguous": (lambda bid: tc.header(f"{bid}/logs/c", kind=b"7"), "not a plain file"),
    "gnu-sparse": (lambda bid: tc.header(f"{bid}/logs/s", kind=b"S"), "not a plain file"),
    "second-top-level": (lambda bid: tc.header("other/metrics.json", size=1) + tc.data(b"x"), "one bundle per archive"),
    "duplicate": (lambda bid: tc.header(f"{bid}/metrics.json", size=2) + tc.data(b"{}"), "appears twice"),
    "dir-with-data": (lambda bid: tc.header(f"{bid}/d", kind=b"5", size=512) + tc.data(b"x"), "declares 512 bytes"),
    "file-then-dir": (lambda bid: tc.header(f"{bid}/f", size=1) + tc.data(b"x") + tc.header(f"{bid}/f/g", size=1)
                      + tc.data(b"x"), "collides with another member"),
    "not-utf8": (lambda bid: tc.header(f"{bid}/\xff".encode("latin-1"), size=1) + tc.data(b"x"), "not UTF-8"),
    "backslash": (lambda bid: tc.header(f"{bid}/..\\..\\x", size=1) + tc.data(b"x"), "backslash"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_member_refused_and_nothing_written(packed, tmp_path, bid, kind):
    make, why = HOSTILE[kind]
    arc = with_extra(packed, tmp_path, f"{kind}.tar.gz", make(bid))
    refused(arc, tmp_path, why)
    assert not Path("/tmp/kit-evil-abs").exists() and not (tmp_path / "kit-evil").exists()


def test_damaged_archives(packed, tmp_path, bid):
    raw = tc.tar_bytes(packed)
    cut_pax = tc.members_of(packed) + tc.header("PaxHeader", size=600, kind=b"x")  # ends where its data begins
    refused(tc.write(tmp_path / "cutpax.tar.gz", cut_pax), tmp_path, "truncated inside a PAX extended header")
    refused(tc.write(tmp_path / "trunc.tar.gz", raw[:4000]), tmp_path, "damaged archive: truncated")
    bad = bytearray(raw)
    bad[0] ^= 0x01  # the first header's checksum no longer matches
    refused(tc.write(tmp_path / "chk.tar.gz", bytes(bad)), tmp_path, "not a readable tar archive: bad header checksum")
    refused(tc.write(tmp_path / "cut.tar.gz", packed.read_bytes()[:-100], compress=False), tmp_path,
            "truncated gzip stream")
    refused(tc.write(tmp_path / "junk.tar.gz", b"not a tar at all" * 10, compress=False), tmp_path,
            "not a readable tar archive")
    refused(tc.write(tmp_path / "empty.tar.gz", b""), tmp_path, "the archive is empty")


def test_archive_that_is_a_fifo_or_missing(tmp_path):
    import os
    fifo = tmp_path / "fifo.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(KitError, match="not a regular file"):
        archive.import_archive(fifo, tmp_path / "r")
    with pytest.raises(KitError, match="no such archive"):
        archive.import_archive(tmp_path / "missing.tar.gz", tmp_path / "r")


def test_archive_named_through_a_link_is_followed(packed, bid, tmp_path):
    # the archive is the user's own file, named on the command line: a link to it is fine
    # (a bundle's files are never read through a link)
    link = tmp_path / "link.tar.gz"
    link.symlink_to(packed)
    assert archive.import_archive(link, tmp_path / "r").name == bid


# -- the command line ---------------------------------------------------------------------------------------
def test_cli_refusal_is_one_line_exit_2(packed, tmp_path, bid):
    arc = with_extra(packed, tmp_path, "neg.tar.gz", tc.header(f"{bid}/neg", size_field=b"-0000000001\x00"))
    proc = kit_cli("bundle", "import", str(arc), "--into", str(tmp_path / "r"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(arc) in proc.stderr and "negative size" in proc.stderr
    proc = kit_cli("bundle", "verify", str(arc), timeout=120)
    assert proc.returncode == 2 and "negative size" in proc.stderr and proc.stderr.count("\n") == 1


def test_cli_limit_options_and_variables(packed, tmp_path):
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "a"), "--max-members", "2", timeout=120)
    assert proc.returncode == 2 and "more than 2 members" in proc.stderr
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "b"), "--max-member-mib", "0.0001",
                   timeout=120)
    assert proc.returncode == 2 and "per-file limit" in proc.stderr
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "c"), env={"KIT_IMPORT_MAX_RATIO": "lots"},
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "KIT_IMPORT_MAX_RATIO" in proc.stderr
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "d"), "--max-ratio", "-1", timeout=120)
    assert proc.returncode == 2 and "--max-ratio" in proc.stderr
    proc = kit_cli("bundle", "import", str(packed), "--into", str(tmp_path / "e"), "--max-ratio", "50",
                   "--max-seconds", "60", timeout=120)
    assert proc.returncode == 0, proc.stderr
