"""A bounded reader for untrusted tar archives (plain or gzip-compressed), used by
``kit bundle import`` and ``kit bundle verify ARCHIVE`` instead of Python's :mod:`tarfile`.

Python's reader reads a PAX extended header whole into memory before anything can look at
its size, parses it in quadratic time on some versions, and accepts a negative size. Here
every limit is checked *before* the bytes it guards are read or inflated, whatever the
Python version:

- the compressed file is read in 64 KiB chunks and inflated at most 256 KiB at a time, so
  memory stays flat; the inflated total may not exceed ``max_ratio`` times the compressed
  bytes read so far (past a small allowance), which stops a gzip bomb early;
- a PAX extended header or a GNU long name is refused when its declared size is over
  ``max_header``, before it is read; PAX records are parsed in one linear pass, each record's
  length checked against what is left, and at most :data:`MAX_PAX_RECORDS` of them;
- numeric header fields are octal or a *positive* base-256 number; a negative value
  (``-1`` in octal, or base-256 with the sign bit) is refused; header checksums are checked;
- a deadline (``max_seconds``) is checked between chunks and headers.

The reader yields :class:`Member` (name, type, size, link target) and streams a regular
file's data on request; what to accept (file types, paths, sizes, counts) is decided by the
caller (:mod:`kit.results.archive`). Problems are :class:`UnsafeArchive` (a limit or a
refused construct) or :class:`DamagedArchive` (not a tar stream, truncated, bad checksum).
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

BLOCK = 512
READ_CHUNK = 64 << 10  # compressed bytes read from the file at a time
INFLATE_CHUNK = 256 << 10  # inflated bytes produced at a time
RATIO_ALLOWANCE = 8 << 20  # inflated bytes always allowed before the ratio is judged
MAX_PAX_RECORDS = 256
MAX_NAME = 4096  # a path longer than PATH_MAX is not a bundle's
GZIP_MAGIC = b"\x1f\x8b"

REGULAR = "file"
DIRECTORY = "dir"
#: tar type flags the caller is told about by name (everything else is reported by its flag)
_TYPES = {b"0": REGULAR, b"\x00": REGULAR, b"5": DIRECTORY, b"1": "hardlink", b"2": "symlink",
          b"3": "chardev", b"4": "blockdev", b"6": "fifo", b"7": "contiguous"}
_PAX_TIME = re.compile(rb"-?[0-9]{1,20}(\.[0-9]{1,9})?")
_DIGITS = re.compile(rb"[0-9]{1,20}")


class UnsafeArchive(ValueError):
    """The archive asks for something refused, or goes past a limit."""


class DamagedArchive(ValueError):
    """The bytes are not a well-formed tar stream (or gzip stream)."""


@dataclass(frozen=True)
class ReadLimits:
    max_header: int = 64 << 10  # PAX extended header / GNU long name, bytes
    max_ratio: float = 200.0  # inflated / compressed bytes
    max_seconds: float = 600.0  # wall time for the whole read


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # REGULAR, DIRECTORY, a name from _TYPES, or "type 'X'"
    size: int
    linkname: str = ""


class _Inflater:
    """Bytes of the tar stream, inflated (if gzip) in bounded chunks, with the ratio and time caps."""

    def __init__(self, f: BinaryIO, limits: ReadLimits):
        self.f = f
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.buf = bytearray()
        self.pos = 0  # offset of the stream (inflated) already handed out
        self.inflated = 0
        head = f.read(2)
        self.compressed = len(head)
        self.gzip = head == GZIP_MAGIC
        self.z = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzip else None
        self.pending = head  # compressed (or raw) bytes not yet inflated

    def check_time(self) -> None:
        if time.monotonic() >= self.deadline:
            raise UnsafeArchive(f"reading took longer than {self.limits.max_seconds:g} s (the time limit)")

    def _fill(self) -> bool:
        """Add at most INFLATE_CHUNK bytes to the buffer; False at the end of the stream."""
        self.check_time()
        if self.z is None:  # a plain tar
            data = self._next_input()
            if not data:
                return False
            self.buf += data
            self.inflated += len(data)
            return True
        while True:
            if self.z.unconsumed_tail:
                data = self.z.unconsumed_tail
            elif self.z.eof:
                data = self.z.unused_data or self._next_input()
                if not data:
                    return False
                if not data.startswith(GZIP_MAGIC[: len(data)]):
                    raise DamagedArchive("data after the end of the gzip stream")
                self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a multi-member gzip file
            else:
                data = self._next_input()
                if not data:
                    raise DamagedArchive("truncated gzip stream")
            try:
                out = self.z.decompress(data, INFLATE_CHUNK)
            except zlib.error as e:
                raise DamagedArchive(f"not a valid gzip stream ({e})") from None
            if out:
                self.inflated += len(out)
                if (self.inflated > RATIO_ALLOWANCE
                        and self.inflated > self.limits.max_ratio * max(self.compressed, 1)):
                    raise UnsafeArchive(f"it inflates more than {self.limits.max_ratio:g} times its compressed size "
                                        f"({self.inflated} bytes from {self.compressed}; a decompression bomb)")
                self.buf += out
                return True
            self.check_time()

    def _next_input(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        data = self.f.read(READ_CHUNK)
        self.compressed += len(data)
        return data

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (``n`` bounded by the caller), b"" at a clean end, or DamagedArchive."""
        while len(self.buf) < n:
            if not self._fill():
                if not self.buf:
                    return b""
                raise DamagedArchive(f"truncated at byte {self.pos + len(self.buf)} of the tar stream")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.pos += n
        return out

    def copy(self, n: int, sink: Callable[[bytes], object]) -> None:
        """Pass exactly ``n`` bytes to ``sink``, in bounded pieces."""
        while n:
            if not self.buf and not self._fill():
                raise DamagedArchive(f"truncated at byte {self.pos} of the tar stream (inside a member's data)")
            k = min(n, len(self.buf))
            sink(bytes(self.buf[:k]))
            del self.buf[:k]
            self.pos += k
            n -= k


def _padded(size: int) -> int:
    return -size % BLOCK


def _number(field: bytes, what: str) -> int:
    """An octal or positive base-256 numeric field; a negative or malformed one is refused."""
    if field[:1] and field[0] & 0x80:  # GNU base-256: bit 0x40 of the first byte is the sign
        if field[0] & 0x40:
            raise UnsafeArchive(f"negative {what} (base-256)")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    s = field.split(b"\x00", 1)[0].strip(b" ")
    if not s:
        return 0
    if s.startswith(b"-"):
        raise UnsafeArchive(f"negative {what} ({s.decode('ascii', 'replace')})")
    if not re.fullmatch(rb"[0-7]+", s):
        raise DamagedArchive(f"malformed {what} field {s[:16]!r}")
    return int(s, 8)


def _text(field: bytes, what: str) -> str:
    try:
        return field.split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeArchive(f"a {what} that is not UTF-8") from None


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records ``"%d %s=%s\\n"`` in one linear pass; each length checked against what is left."""
    out: dict[str, bytes] = {}
    pos, n, records = 0, len(data), 0
    while pos < n:
        if data[pos] == 0:  # NUL padding ends the records
            if data.count(0, pos) != n - pos:
                raise DamagedArchive("malformed PAX header (data after NUL padding)")
            break
        sp = data.find(b" ", pos, min(n, pos + 12))
        if sp < 0 or not _DIGITS.fullmatch(data, pos, sp):
            raise DamagedArchive(f"malformed PAX record at offset {pos}")
        length = int(data[pos:sp])
        end = pos + length
        if length < sp - pos + 4 or end > n or data[end - 1] != 0x0A:
            raise DamagedArchive(f"malformed PAX record at offset {pos} (length {length})")
        eq = data.find(b"=", sp + 1, end - 1)
        if eq <= sp + 1:
            raise DamagedArchive(f"malformed PAX record at offset {pos} (no key=value)")
        records += 1
        if records > MAX_PAX_RECORDS:
            raise UnsafeArchive(f"a PAX header with more than {MAX_PAX_RECORDS} records")
        try:
            key = data[sp + 1:eq].decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeArchive("a PAX key that is not UTF-8") from None
        out[key] = data[eq + 1:end - 1]
        pos = end
    return out


def _apply_pax(records: dict[str, bytes]) -> dict[str, object]:
    """The overrides a PAX header makes for the next member; refused keys raise."""
    over: dict[str, object] = {}
    for key, value in records.items():
        if key.startswith("GNU.sparse."):
            raise UnsafeArchive("a sparse file (GNU.sparse PAX records); bundles hold plain files only")
        if key == "hdrcharset" and value != b"ISO-IR 10646 2000 UTF-8":
            raise UnsafeArchive(f"PAX hdrcharset {value[:40]!r}: names must be UTF-8")
        if key == "path":
            if len(value) > MAX_NAME:
                raise UnsafeArchive(f"a PAX path of {len(value)} bytes (over {MAX_NAME})")
            over["name"] = _text(value, "PAX path")
        elif key == "linkpath":
            over["linkname"] = value[:MAX_NAME].decode("utf-8", "replace")
        elif key == "size":
            if value.startswith(b"-"):
                raise UnsafeArchive(f"negative size in a PAX header ({value[:24].decode('ascii', 'replace')})")
            if not _DIGITS.fullmatch(value):
                raise DamagedArchive(f"malformed PAX size {value[:24]!r}")
            over["size"] = int(value)
        elif key in ("uid", "gid"):
            if not _DIGITS.fullmatch(value):
                raise DamagedArchive(f"malformed PAX {key} {value[:24]!r}")
        elif key in ("mtime", "atime", "ctime"):
            if not _PAX_TIME.fullmatch(value):
                raise DamagedArchive(f"malformed PAX {key} {value[:24]!r}")
        # other keys (uname, gname, comment, charset, vendor xattrs) carry nothing the import uses
    return over


class TarReader:
    """Iterate over an archive's members; call :meth:`copy_data` to stream a member's data."""

    def __init__(self, f: BinaryIO, limits: ReadLimits | None = None):
        self.limits = limits or ReadLimits()
        self.stream = _Inflater(f, self.limits)
        self._unread = 0  # data (with padding) of the current member not yet consumed
        self._data_left = 0

    @property
    def compressed(self) -> bool:
        return self.stream.gzip

    def _skip_unread(self) -> None:
        if self._unread:
            self.stream.copy(self._unread, lambda b: None)
            self._unread = self._data_left = 0

    def copy_data(self, sink: Callable[[bytes], object]) -> None:
        """Stream the current member's data (its declared size) to ``sink``."""
        self.stream.copy(self._data_left, sink)
        self.stream.copy(self._unread - self._data_left, lambda b: None)  # padding
        self._unread = self._data_left = 0

    def _extended(self, size: int, what: str, cap: int) -> bytes:
        if size > cap:
            raise UnsafeArchive(f"a {what} of {size} bytes (the limit is {cap})")
        want = size + _padded(size)
        data = self.stream.read(want) if size else b""
        if len(data) != want:
            raise DamagedArchive(f"truncated inside a {what}")
        return data[:size]

    def __iter__(self) -> Iterator[Member]:
        pax: dict[str, object] | None = None
        longname: str | None = None
        longlink: str | None = None
        while True:
            self._skip_unread()
            self.stream.check_time()
            block = self.stream.read(BLOCK)
            if not block or block == bytes(BLOCK):
                return  # the end-of-archive marker (or a clean end without one)
            chk = _number(block[148:156], "header checksum")
            unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
            if chk != unsigned and chk != unsigned - 256 * sum(b >= 0x80 for b in block[:148] + block[156:]):
                raise DamagedArchive(f"bad header checksum at byte {self.stream.pos - BLOCK}")
            flag = block[156:157]
            size = _number(block[124:136], "size")
            for lo, hi, what in ((100, 108, "mode"), (108, 116, "uid"), (116, 124, "gid"), (136, 148, "mtime")):
                _number(block[lo:hi], what)
            if flag in (b"x", b"L", b"K"):
                if (flag == b"x" and pax is not None) or (flag == b"L" and longname is not None) \
                        or (flag == b"K" and longlink is not None):
                    raise UnsafeArchive("two extended headers for one member")
                if flag == b"x":
                    pax = _apply_pax(parse_pax(self._extended(size, "PAX extended header", self.limits.max_header)))
                else:
                    cap = min(self.limits.max_header, MAX_NAME + 1)
                    text = _text(self._extended(size, "GNU long name", cap), "GNU long name")
                    if flag == b"L":
                        longname = text
                    else:
                        longlink = text
                continue
            if flag == b"g":
                raise UnsafeArchive("a PAX global header (kit bundle pack never writes one)")
            name = _text(block[0:100], "member name")
            if block[257:263] == b"ustar\x00":  # POSIX ustar: name = prefix/name
                prefix = _text(block[345:500], "member name prefix")
                if prefix:
                    name = f"{prefix}/{name}"
            linkname = _text(block[157:257], "link name")
            if longname is not None:
                name = longname
            if longlink is not None:
                linkname = longlink
            if pax:
                name = str(pax.get("name", name))
                linkname = str(pax.get("linkname", linkname))
                size = int(pax.get("size", size))  # type: ignore[arg-type]
            pax, longname, longlink = None, None, None
            kind = _TYPES.get(flag, f"type {flag.decode('latin-1')!r}")
            if kind == DIRECTORY and size:
                raise UnsafeArchive(f"directory {name!r} declares {size} bytes of data")
            # data follows regular files only (a link, device or FIFO member carries none)
            carries = kind in (REGULAR, "contiguous")
            self._data_left = size if carries else 0
            self._unread = size + _padded(size) if carries else 0
            yield Member(name=name, kind=kind, size=size, linkname=linkname)
