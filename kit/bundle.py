"""The result bundle: one directory holding a run's metrics next to its full provenance.

    results/<id>/
      manifest.json     schema version, id, status, created/finished, kit version,
                        sha256 and size of every other file
      metrics.json      summary + per-iteration series        (kit.metrics)
      provenance.json   what ran, where, with what, under which job (kit.provenance)
      recipe.yaml, preset.yaml   as resolved
      finalizer.json    which kit finalized the bundle (host, pid, command, time)
      logs/             every rank's output, the launcher's, job script, scheduler output

**The one door in.** Every file enters a bundle through ``Bundle``'s writer: documents and
texts through ``write_json``/``write_yaml``/``write_text``, the launcher's log through
``log_writer``, all passed through :mod:`kit.redact` on the way; files the launcher writes
itself (torchrun's and MPI's per-rank logs, the scheduler's output) are redacted in place at
``finalize``, which also gives every file and directory one mode (the umask's) and then
checksums them. Reading goes through the one door out, :mod:`kit.bundle_reader`.

Every file is written atomically (temporary file + rename). The manifest is written first
with status ``running`` and no checksums, and rewritten last with the final status and the
checksums: a bundle whose writer died half way is reported by :func:`verify` as
incomplete, never silently taken for a finished one. Ids are unique even for runs started
in the same second into one directory (exclusive ``mkdir`` with a random suffix). Only one
kit finalizes a bundle: the one that creates ``finalizer.json`` (:mod:`kit.claim`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

import kit
from kit import bundle_reader as reader, catalog, redact
from kit.bundle_reader import BundleReadError
from kit.digest import sha256_chunks, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: the signature over the manifest (kit.signing); outside the manifest, which it signs
SIGNATURE = "signature.json"
Status = Literal["running", "ok", "failed", "stalled", "interrupted", "submitted"]
FINAL_STATUSES = ("ok", "failed", "stalled", "interrupted")
REQUIRED_FILES = ("metrics.json", "provenance.json", "recipe.yaml", "preset.yaml")
_ID_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: one mode for every file and directory of a bundle: what the user's umask gives
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()
#: directories a bundle has even when empty
KEPT_DIRS = ("logs",)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    size: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int
    id: str
    status: Status
    reason: str = ""
    created: str
    finished: str | None = None
    kit_version: str
    recipe: str
    preset: str
    group: str | None = None  # repeats of one plan share it (kit run --repeat, a sweep's repeat:)
    files: dict[str, FileEntry] = {}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` whole (fsync + rename) or not at all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # name the file the caller asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would make documents unlike the logs beside them
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


def _id_name(name: str) -> str:
    """A recipe or preset as it appears in an id: its name, or for a file given by path, the
    file's stem and a short hash of the path as given (no directory ever enters an id)."""
    if not catalog.is_path(name):
        return name
    return f"{Path(name).stem[:24]}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def new_id(recipe: str, preset: str, when: dt.datetime | None = None) -> str:
    """``<time>_<recipe>_<preset>_<random>``, e.g. ``20261203-142947_tiny_boost+tcmalloc_fc5aaa``:
    from names only (``preset`` is a composition ``a+b``; a part given by path becomes
    ``stem-<hash>``), in safe characters (letters, digits, ``._+-``), unique by the random tail."""
    when = when or dt.datetime.now()
    names = f"{_id_name(recipe)}_{'+'.join(_id_name(p) for p in preset.split('+'))}"
    return f"{when:%Y%m%d-%H%M%S}_{_ID_SAFE.sub('-', names)[:60]}_{secrets.token_hex(3)}"


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    _extra_files: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    # -- writing ----------------------------------------------------------------------------
    @classmethod
    def create(cls, out_dir: Path, *, recipe: str, preset: str, group: str | None = None) -> "Bundle":
        """Make a new bundle directory with a unique id and a ``running`` manifest."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            bid = new_id(recipe, preset)
            path = out_dir / bid
            try:
                path.mkdir()
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 100 collisions of 24 random bits in one second
            raise RuntimeError(f"could not make a unique bundle directory in {out_dir}")
        (path / "logs").mkdir()
        manifest = Manifest(schema_version=SCHEMA_VERSION, id=bid, status="running", created=now_iso(),
                            kit_version=kit.__version__, recipe=recipe, preset=preset, group=group)
        b = cls(path=path, manifest=manifest)
        b._write_manifest()
        return b

    @classmethod
    def open(cls, path: Path) -> "Bundle":
        """An existing bundle directory (``kit job-run``, ``kit collect``)."""
        return cls(path=Path(path), manifest=read_manifest(Path(path)))

    def write_json(self, name: str, data: Any) -> Path:
        """A JSON document, secrets redacted."""
        p = self.path / name
        atomic_write(p, dump_json(redact.scrub(data)))
        return p

    def write_yaml(self, name: str, data: Any) -> Path:
        """A YAML document, secrets redacted."""
        p = self.path / name
        atomic_write(p, yaml.safe_dump(redact.scrub(data), sort_keys=False))
        return p

    def write_text(self, name: str, text: str) -> Path:
        """A text (a job script, a log), secret values masked."""
        p = self.path / name
        atomic_write(p, redact.scrub_text(text))
        return p

    def log_writer(self, name: str) -> "LogWriter":
        """A log the kit writes as it goes (``logs/launcher.log``), line-buffered, each line
        redacted before it reaches the disk."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return LogWriter(p)

    def set_status(self, status: Status, reason: str = "") -> None:
        self.manifest.status = status
        self.manifest.reason = reason
        self._write_manifest()

    def finalize(self, status: Status, reason: str = "") -> None:
        """Redact what the launcher wrote itself, give every file one mode, checksum every
        file and write the final manifest (the last write of a run)."""
        self.manifest.status = status
        self.manifest.reason = redact.redact_value(reason)
        self.manifest.finished = now_iso()
        seal_tree(self.path)
        self.manifest.files = {rel: FileEntry(sha256=d, size=s) for rel, (d, s) in checksum_tree(self.path).items()}
        self._write_manifest()

    def _write_manifest(self) -> None:
        # no group: the manifest as before (kits without the field read it)
        atomic_write(self.path / MANIFEST, dump_json(self.manifest.model_dump(exclude=None if self.manifest.group else {"group"})))


class LogWriter:
    """A text file written line by line through the redactor (see ``Bundle.log_writer``)."""

    def __init__(self, path: Path):
        self._f = path.open("w", buffering=1, encoding="utf-8", errors="replace")
        os.chmod(path, FILE_MODE)

    def write(self, text: str) -> int:
        return self._f.write(redact.scrub_text(text))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _redact_file(path: Path) -> None:
    """Mask secret values in a file the kit did not write itself, streaming, in place
    (rewritten only where a line changed)."""
    try:
        with path.open("rb") as f:
            changed = any(redact.redact_value(line.decode("utf-8", "surrogateescape")) !=
                          line.decode("utf-8", "surrogateescape") for line in f)
        if not changed:
            return
        with path.open("rb") as src, atomic_file(path) as dst:
            for line in src:
                dst.write(redact.redact_value(line.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def seal_tree(root: Path) -> None:
    """Before the checksums: redact the logs the launcher wrote itself (and the node monitors'
    snapshots, written on other nodes), remove empty
    directories (but ``logs``), and give every file and directory the bundle's one mode."""
    for rel, st in sorted(reader.entries(root), key=lambda e: e[0].count("/"), reverse=True):
        p = root / rel
        if stat.S_ISDIR(st.st_mode):
            try:
                if rel not in KEPT_DIRS and not any(os.scandir(p)):
                    p.rmdir()
                    continue
                os.chmod(p, DIR_MODE)
            except OSError:
                pass
        elif stat.S_ISREG(st.st_mode) and not _is_temp(p.name):
            if rel.startswith(("logs/", "monitor/")) and rel != "logs/launcher.log":
                _redact_file(p)
            try:
                os.chmod(p, FILE_MODE)
            except OSError:
                pass


def checksum_tree(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and size of every regular file of the bundle but the manifest (links and
    special files are never followed or read)."""
    out = {}
    for rel, st in sorted(reader.entries(root)):
        if stat.S_ISREG(st.st_mode) and rel not in (MANIFEST, SIGNATURE) and not _is_temp(Path(rel).name):
            out[rel] = sha256_file(root / rel)
    return out


def read_manifest(path: Path) -> Manifest:
    """The bundle's manifest, read through the reader's door and validated."""
    data = reader.read_bytes(path, MANIFEST, reader.MAX_MANIFEST_BYTES)
    reader.parse_json(data, path / MANIFEST)  # depth, NaN: refused before pydantic sees it
    return Manifest.model_validate_json(data)


def load_json(path: Path, name: str) -> dict[str, Any]:
    """A JSON document of the bundle, through the reader's door, validated."""
    return reader.read_document(path, name)


# -- verification ---------------------------------------------------------------------------
@dataclass
class Verdict:
    path: Path
    problems: list[str] = field(default_factory=list)
    status: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path) -> Verdict:
    """Check a bundle directory: manifest schema, final status, every checksum, no extra,
    linked or special files, no unexpected directories, the documents' schema."""
    v = Verdict(path=path)
    mpath = path / MANIFEST
    if not path.is_dir() or path.is_symlink():
        v.problems.append(f"{path}: not a bundle directory")
        return v
    try:
        m = read_manifest(path)
    except BundleReadError as e:
        hint = ": not a bundle, or the kit died before writing anything" if e.why == "missing" else ""
        v.problems.append(f"{e}{hint}")
        return v
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(x) for x in first.get("loc", ()))
        v.problems.append(f"{mpath}: schema: {key} {first.get('msg')}".replace(":  ", ": "))
        return v
    v.status = m.status
    if m.schema_version != SCHEMA_VERSION:
        v.problems.append(f"{mpath}: schema_version {m.schema_version} is not {SCHEMA_VERSION}; use a kit that reads it")
    if m.status in ("running", "submitted"):
        v.problems.append(f"{mpath}: incomplete: status is {m.status!r} (the run or the kit stopped before the bundle "
                          f"was finalized; `kit collect` finalizes a submitted job)")
        return v
    if m.id != path.name:
        v.problems.append(f"{mpath}: id {m.id!r} does not match the directory name {path.name!r}")
    regular: set[str] = set()
    dirs: set[str] = set()
    for rel, st in reader.entries(path):
        if stat.S_ISDIR(st.st_mode):
            dirs.add(rel)
        elif stat.S_ISREG(st.st_mode):
            regular.add(rel)
        else:
            v.problems.append(f"{path / rel}: is {reader.kind(st.st_mode)}; bundles hold plain files only")
    actual = regular - {MANIFEST, SIGNATURE}
    for rel in sorted(set(m.files) - actual):
        if not (path / rel).is_symlink():
            v.problems.append(f"{path / rel}: listed in the manifest but missing")
    for rel in sorted(actual - set(m.files)):
        v.problems.append(f"{path / rel}: not listed in the manifest (added after the run?)")
    expected_dirs = set(KEPT_DIRS) | {parent for rel in m.files for parent in _parents(rel)}
    for rel in sorted(dirs - expected_dirs):
        v.problems.append(f"{path / rel}: unexpected directory (no file of the manifest is in it)")
    for rel in sorted(set(m.files) & actual):
        entry = m.files[rel]
        try:  # never more than the file should hold
            digest, size = sha256_chunks(reader.iter_chunks(path, rel, limit=entry.size + 1))
        except BundleReadError as e:
            v.problems.append(str(e))
            continue
        if size != entry.size or digest != entry.sha256:
            v.problems.append(f"{path / rel}: checksum mismatch (modified after the run): sha256 {digest[:12]}…, "
                              f"manifest says {entry.sha256[:12]}…")
    for req in REQUIRED_FILES:
        if req not in m.files:
            v.problems.append(f"{path / req}: required file missing from the bundle")
    v.problems.extend(_check_documents(path, m))
    return v


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


#: top-level keys each JSON document must have, and the keys inside them that readers rely on
DOCUMENT_SCHEMA: dict[str, dict[str, tuple[str, ...]]] = {
    "metrics.json": {"": ("summary", "iterations"), "summary": ()},
    "provenance.json": {"": ("plan", "runtime", "software", "host"),
                        "plan": ("nodes", "dp", "tp", "pp", "micro_batch", "global_batch", "ranks_per_node")},
    "plan.json": {"": ("recipe", "preset", "recipe_name", "preset_names", "nodes")},
}


def _check_documents(path: Path, m: Manifest) -> list[str]:
    """Schema of the documents readers parse, read through the reader's door: valid,
    validated JSON objects / YAML mappings with the keys the commands need."""
    problems: list[str] = []
    for rel, schema in DOCUMENT_SCHEMA.items():
        if rel not in m.files:
            continue
        p = path / rel
        try:
            doc = reader.read_document(path, rel)
        except BundleReadError as e:
            problems.append(f"{e.path}: schema: {e.why}" if e.path == str(p) else str(e))
            continue
        for section, keys in schema.items():
            node = doc.get(section) if section else doc
            label = f"{section}: " if section else ""
            if not isinstance(node, dict):
                problems.append(f"{p}: schema: {section or 'document'} is not a JSON object")
                continue
            missing = [k for k in keys if k not in node]
            if missing:
                problems.append(f"{p}: schema: {label}missing key(s) {', '.join(missing)}")
    for rel in ("recipe.yaml", "preset.yaml"):
        if rel not in m.files:
            continue
        try:
            reader.read_yaml_mapping(path, rel)
        except BundleReadError as e:
            problems.append(f"{e.path}: schema: {e.why}")
    return problems
