"""Hand-made tar bytes for hostile-archive tests: headers with any field value (negative
sizes, base-256 numbers, oversized PAX headers), which :mod:`tarfile` refuses to write."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

BLOCK = 512


def header(name: str | bytes, *, size: int = 0, kind: bytes = b"0", size_field: bytes | None = None,
           linkname: str = "", mode: bytes | None = None) -> bytes:
    """One ustar header block with a correct checksum; ``size_field`` overrides the size bytes."""
    b = bytearray(BLOCK)
    raw = name.encode() if isinstance(name, str) else name
    b[0:len(raw[:100])] = raw[:100]
    b[100:108] = mode or (b"0000755\x00" if kind == b"5" else b"0000644\x00")
    b[108:116] = b"0000000\x00"
    b[116:124] = b"0000000\x00"
    b[124:136] = size_field if size_field is not None else f"{size:011o}\x00".encode()
    b[136:148] = b"14000000000\x00"
    b[148:156] = b" " * 8
    b[156:157] = kind
    b[157:157 + len(linkname)] = linkname.encode()
    b[257:265] = b"ustar\x0000"
    chk = sum(b)
    b[148:156] = f"{chk:06o}\x00 ".encode()
    return bytes(b)


def data(payload: bytes) -> bytes:
    return payload + bytes(-len(payload) % BLOCK)


def pax_record(key: str, value: str | bytes) -> bytes:
    v = value.encode() if isinstance(value, str) else value
    body = f" {key}=".encode() + v + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax(records: bytes, name: str = "PaxHeader") -> bytes:
    return header(name, size=len(records), kind=b"x") + data(records)


def end() -> bytes:
    return bytes(2 * BLOCK)


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6)


def write(path: Path, raw: bytes, *, compress: bool = True) -> Path:
    path.write_bytes(gz(raw) if compress else raw)
    return path


def tar_bytes(archive: Path) -> bytes:
    """The uncompressed tar stream of a real ``.tar.gz``."""
    return gzip.decompress(archive.read_bytes())


def members_of(archive: Path) -> bytes:
    """A real archive's tar stream without its end-of-archive blocks (to append members to)."""
    raw = tar_bytes(archive)
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        t.getmembers()
        return raw[:t.offset]
