"""The one door out of a bundle: every command reads a bundle's files through here.

A bundle from someone else is untrusted input, so a reader:

- opens only regular files inside the bundle: the path is relative, has no ``..``, no part
  of it is a symbolic link, and the file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and
  checked with ``fstat`` to be a regular file (a FIFO, device or socket is refused without
  blocking on it);
- reads at most a cap of bytes (a document larger than its cap is refused, never read
  whole);
- parses JSON only after checking its nesting depth (a linear scan, so 100,000 nested
  brackets are refused instead of overflowing the parser), with ``NaN``/``Infinity``
  refused, and YAML with the safe loader, size-capped, as a mapping;
- validates each document before any command uses it: the manifest against its model, the
  metrics summary's figures as finite numbers or null, the sections the commands rely on as
  objects of the right shape.

Every problem is a ``BundleReadError`` naming the file and why, one line; commands that
read many bundles (``kit report``) leave the bad one out with that line and render the rest.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from kit import metricdefs

MAX_JSON_BYTES = 64 << 20  # metrics.json holds the per-iteration series
MAX_YAML_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20  # a sha256 line per file
MAX_TEXT_BYTES = 16 << 20  # job scripts, statistics files
MAX_DEPTH = 64
CHUNK = 1 << 20

#: summary figures that commands format as numbers (declared in kit.metricdefs): finite numbers or null
NUMERIC_SUMMARY = tuple(m.name for m in metricdefs.METRICS if m.kind == "number")
#: summary texts that commands print (energy_source, energy_note): strings or null
TEXT_SUMMARY = tuple(m.name for m in metricdefs.METRICS if m.kind == "text")
#: sections of provenance.json and plan.json that commands index into: objects (or absent)
OBJECT_SECTIONS = {
    "provenance.json": ("plan", "runtime", "software", "host", "kit", "run", "job", "scheduler", "environment"),
    "metrics.json": ("summary", "ranks", "nodes"),
    "plan.json": ("recipe", "preset", "job", "env"),
}


class BundleReadError(Exception):
    """A file of a bundle cannot be read safely; the message is one line naming it."""

    def __init__(self, path: Path | str, why: str):
        self.path = str(path)
        self.why = why
        super().__init__(f"{path}: {why}")


def _relative(bundle: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", "") for p in parts):
        raise BundleReadError(bundle / rel, "not a path inside the bundle")
    cur = Path(bundle)
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise BundleReadError(bundle / rel, "missing") from None
        except OSError as e:
            raise BundleReadError(bundle / rel, f"unreadable ({e.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BundleReadError(cur, "is not a plain directory (a link or a special file)")
    return cur / parts[-1]


class MissingFile(BundleReadError):
    """The file is not there (a ``BundleReadError`` whose ``why`` is "missing")."""

    def __init__(self, path: Path | str):
        super().__init__(path, "missing")


def open_file(path: Path, *, follow_links: bool = False) -> tuple[int, int]:
    """An open descriptor of the regular file at ``path``, and its size: opened with
    ``O_NONBLOCK`` and checked with ``fstat`` (a FIFO, device or socket is refused without
    blocking on it); through a symbolic link only with ``follow_links`` (a file the user names
    on the command line, never a bundle's)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MissingFile(path) from None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise BundleReadError(path, "is a symbolic link; bundles hold plain files only") from None
        raise BundleReadError(path, f"unreadable ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleReadError(path, f"is not a regular file ({kind(st.st_mode)})")
    os.set_blocking(fd, True)
    return fd, st.st_size


def open_regular(bundle: Path, rel: str) -> tuple[int, int]:
    """An open descriptor of the regular file ``rel`` inside ``bundle``, and its size."""
    return open_file(_relative(bundle, rel))


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "a special file"


def read_bytes(bundle: Path, rel: str, cap: int) -> bytes:
    """The whole file, if it is a regular file of at most ``cap`` bytes."""
    return read_capped(_relative(bundle, rel), cap)


def read_capped(path: Path, cap: int, *, follow_links: bool = False) -> bytes:
    """The whole regular file at ``path`` (see ``open_file``), if it holds at most ``cap`` bytes."""
    fd, size = open_file(path, follow_links=follow_links)
    with os.fdopen(fd, "rb") as f:
        if size > cap:
            raise BundleReadError(path, f"{size} bytes, more than the {cap} a reader takes")
        data = f.read(cap + 1)
    if len(data) > cap:  # grew while being read
        raise BundleReadError(path, f"more than the {cap} bytes a reader takes")
    return data


def iter_chunks(bundle: Path, rel: str, limit: int | None = None) -> Iterator[bytes]:
    """The file's bytes in chunks (for checksums), reading at most ``limit`` bytes."""
    fd, _ = open_regular(bundle, rel)
    left = limit
    with os.fdopen(fd, "rb") as f:
        while left is None or left > 0:
            block = f.read(CHUNK if left is None else min(CHUNK, left))
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block


def read_text(bundle: Path, rel: str, cap: int | None = None) -> str:
    return read_bytes(bundle, rel, cap or MAX_TEXT_BYTES).decode("utf-8", errors="replace")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (strings skipped), linear time."""
    depth = deepest = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a bundle may hold")


def parse_json(data: bytes, where: Path | str) -> Any:
    if json_depth(data) > MAX_DEPTH:
        raise BundleReadError(where, f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BundleReadError(where, f"not valid JSON ({str(e).splitlines()[0][:120]})") from None


def read_json(bundle: Path, rel: str, cap: int | None = None) -> Any:
    """A JSON document of the bundle, depth- and size-capped, with no NaN or infinities."""
    return parse_json(read_bytes(bundle, rel, cap or MAX_JSON_BYTES), Path(bundle) / rel)


# libyaml's safe loader where PyYAML has it
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_mapping(bundle: Path, rel: str, cap: int | None = None) -> dict[str, Any]:
    data = read_bytes(bundle, rel, cap or MAX_YAML_BYTES)
    where = Path(bundle) / rel
    if data.count(b"[") + data.count(b"{") > 10_000 or data.count(b"&") > 1_000:
        raise BundleReadError(where, "YAML too deeply nested or with too many anchors")
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=_YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise BundleReadError(where, f"not valid YAML ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict):
        raise BundleReadError(where, "not a YAML mapping")
    return doc


def validate_document(rel: str, doc: Any, where: Path | str) -> dict[str, Any]:
    """``doc`` as the commands may use it, or a BundleReadError saying what is wrong."""
    if not isinstance(doc, dict):
        raise BundleReadError(where, "the document is not a JSON object")
    for section in OBJECT_SECTIONS.get(rel, ()):
        if doc.get(section) is not None and not isinstance(doc[section], dict):
            raise BundleReadError(where, f"{section} is not a JSON object")
    if rel == "metrics.json":
        summary = doc.get("summary") or {}
        for key in NUMERIC_SUMMARY:
            v = summary.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise BundleReadError(where, f"summary.{key} is {type(v).__name__}, not a number or null")
        for key in TEXT_SUMMARY:
            if summary.get(key) is not None and not isinstance(summary[key], str):
                raise BundleReadError(where, f"summary.{key} is {type(summary[key]).__name__}, not a string or null")
        per_node = summary.get("peak_mem_mib_per_node")
        if per_node is not None and not (isinstance(per_node, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in per_node.values())):
            raise BundleReadError(where, "summary.peak_mem_mib_per_node is not an object of numbers")
        if not isinstance(doc.get("iterations", []), list):
            raise BundleReadError(where, "iterations is not a list")
    if rel == "provenance.json":
        plan = doc.get("plan") or {}
        for key in ("nodes", "dp", "tp", "pp", "micro_batch", "global_batch", "ranks_per_node", "world_size",
                    "threads_per_rank"):
            v = plan.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise BundleReadError(where, f"plan.{key} is {type(v).__name__}, not an integer")
        if not isinstance(plan.get("settings", []), list) or not all(
                isinstance(s, dict) and isinstance(s.get("name"), str) for s in plan.get("settings", [])):
            raise BundleReadError(where, "plan.settings is not a list of settings")
        for key in ("presets", "overrides"):
            v = plan.get(key)
            if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise BundleReadError(where, f"plan.{key} is not a list of strings")
    return doc


def read_document(bundle: Path, rel: str) -> dict[str, Any]:
    """A JSON document of the bundle, read through the door and validated for the commands."""
    where = Path(bundle) / rel
    return validate_document(rel, read_json(bundle, rel), where)


def entries(bundle: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``bundle`` (relative posix path, lstat), links and special files
    included, never following a link."""
    stack = [Path(bundle)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in items:
            st = e.stat(follow_symlinks=False)
            rel = Path(e.path).relative_to(bundle).as_posix()
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(e.path))
