"""Property-based fuzzing of the bounded tar reader behind `kit bundle import`: random bytes and
mutated real archives are either refused with one line (KitError, or the verifier's problem
list) or imported; never another exception, never a hang (the reader's time limit is 20 s,
the test's own timeout 600 s), never a file outside the results directory."""

from __future__ import annotations

import atexit
import gzip
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tarcraft as tc
from kit.errors import KitError
from kit.results import VerificationFailed, archive, tarstream
from synthetic_bundle import make_bundle

pytestmark = pytest.mark.timeout(600)

LIMITS = archive.Limits(max_member=1 << 20, max_total=4 << 20, max_members=200, max_seconds=20)
_WORK = Path(tempfile.mkdtemp(prefix="kit-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)
PACKED = archive.pack(make_bundle(_WORK / "res"), _WORK)
RAW = tc.tar_bytes(PACKED)
FUZZ = settings(max_examples=int(os.environ.get("KIT_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def attempt(data: bytes, name: str = "fuzz.tar.gz") -> str:
    """Import ``data``: 'imported' or 'refused'; any other outcome fails the test."""
    with tempfile.TemporaryDirectory(dir=_WORK) as d:
        arc = Path(d) / name
        arc.write_bytes(data)
        into = Path(d) / "results"
        try:
            out = archive.import_archive(arc, into, LIMITS)
        except KitError as e:
            assert "\n" not in str(e) and str(e).startswith(f"{arc}: "), str(e)
            outcome = "refused"
        except VerificationFailed as e:
            assert e.problems and all(str(arc) in p for p in e.problems)
            outcome = "refused"
        else:
            assert out.parent == into
            outcome = "imported"
        for root, dirs, files in os.walk(d):
            for f in files + dirs:
                p = Path(root, f)
                assert not p.is_symlink() and (p.is_dir() or p.is_file()), p
        leftovers = [p.name for p in into.iterdir()] if into.exists() else []
        assert all(n == archive.IMPORT_LOCK or outcome == "imported" for n in leftovers), leftovers
        return outcome


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_random_bytes(data, compress):
    attempt(gzip.compress(data) if compress else data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(RAW) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_real_archive(edits):
    raw = bytearray(RAW)
    for pos, value in edits:
        raw[pos] = value
    attempt(gzip.compress(bytes(raw)))


@FUZZ
@given(st.integers(0, len(RAW) - 1), st.binary(min_size=1, max_size=600))
def test_spliced_real_archive(pos, junk):
    attempt(gzip.compress(RAW[:pos] + junk + RAW[pos:]))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, PACKED.stat().st_size - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_compressed_bytes(edits):
    raw = bytearray(PACKED.read_bytes())
    for pos, value in edits:
        raw[pos] = value
    attempt(bytes(raw))


HEADER_FIELDS = {"name": (0, 100), "mode": (100, 108), "size": (124, 136), "mtime": (136, 148),
                 "chksum": (148, 156), "type": (156, 157), "linkname": (157, 257), "magic": (257, 265),
                 "prefix": (345, 500)}


@FUZZ
@given(st.sampled_from(sorted(HEADER_FIELDS)), st.binary(min_size=1, max_size=100), st.booleans())
def test_mutated_header_fields_with_fixed_checksum(field, value, pax):
    """Edit a header field of the first real member and fix the checksum, so the edit is judged."""
    raw = bytearray(RAW)
    off = 3 * tc.BLOCK if pax else 0  # the first PAX header, or the first member's own header
    lo, hi = HEADER_FIELDS[field]
    raw[off + lo:off + hi] = (value + bytes(hi - lo))[: hi - lo]
    if field != "chksum":
        raw[off + 148:off + 156] = b" " * 8
        raw[off + 148:off + 156] = f"{sum(raw[off:off + tc.BLOCK]):06o}\x00 ".encode()
    attempt(gzip.compress(bytes(raw)))


@FUZZ
@given(st.lists(st.tuples(st.text(min_size=1, max_size=20).filter(lambda k: "=" not in k), st.binary(max_size=40)),
                max_size=10))
def test_random_pax_records(records):
    body = b"".join(tc.pax_record(k, v) for k, v in records)
    bid = PACKED.name.removesuffix(".tar.gz")
    members = tc.members_of(PACKED)
    attempt(gzip.compress(members + tc.pax(body) + tc.header(f"{bid}/extra", size=1) + tc.data(b"x") + tc.end()))


@FUZZ
@given(st.binary(max_size=2048))
def test_pax_parser_alone(data):
    """The record parser on any bytes: records or one of the two refusals, in one pass."""
    try:
        out = tarstream.parse_pax(data)
    except (tarstream.UnsafeArchive, tarstream.DamagedArchive):
        return
    assert len(out) <= tarstream.MAX_PAX_RECORDS


def test_the_unmutated_archive_imports():
    assert attempt(PACKED.read_bytes()) == "imported"
