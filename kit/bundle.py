"""The result bundle: one directory holding a run's metrics next to its full provenance.

    results/<id>/
      manifest.json     schema version, id, status, created/finished, kit version,
                        sha256 and size of every other file
      metrics.json      summary + per-iteration series        (kit.metrics)
      provenance.json   what ran, where, with what, under which job (kit.provenance)
      recipe.yaml, preset.yaml   as resolved
      finalizer.json    which kit finalized the bundle (host, pid, command, time)
      logs/             every rank's output, the launcher's, job script, scheduler output

Every file is written atomically (temporary file + rename). The manifest is written first
with status ``running`` and no checksums, and rewritten last with the final status and the
checksums: a bundle whose writer died half way is reported by :func:`verify` as
incomplete, never silently taken for a finished one. Ids are unique even for runs started
in the same second into one directory (exclusive ``mkdir`` with a random suffix). Only one
kit finalizes a bundle: the one that creates ``finalizer.json`` (:mod:`kit.claim`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

import kit
from kit import catalog

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: the signature over the manifest (kit.signing); outside the manifest, which it signs
SIGNATURE = "signature.json"
Status = Literal["running", "ok", "failed", "stalled", "interrupted", "submitted"]
FINAL_STATUSES = ("ok", "failed", "stalled", "interrupted")
REQUIRED_FILES = ("metrics.json", "provenance.json", "recipe.yaml", "preset.yaml")
_ID_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


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
    files: dict[str, FileEntry] = {}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` whole (fsync + rename) or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """Streaming sha256 and size: memory stays flat whatever the file size."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


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
    def create(cls, out_dir: Path, *, recipe: str, preset: str) -> "Bundle":
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
                            kit_version=kit.__version__, recipe=recipe, preset=preset)
        b = cls(path=path, manifest=manifest)
        b._write_manifest()
        return b

    @classmethod
    def open(cls, path: Path) -> "Bundle":
        """An existing bundle directory (``kit job-run``, ``kit collect``)."""
        return cls(path=Path(path), manifest=read_manifest(Path(path)))

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path / name
        atomic_write(p, dump_json(data))
        return p

    def write_yaml(self, name: str, data: Any) -> Path:
        p = self.path / name
        atomic_write(p, yaml.safe_dump(data, sort_keys=False))
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        atomic_write(p, text)
        return p

    def set_status(self, status: Status, reason: str = "") -> None:
        self.manifest.status = status
        self.manifest.reason = reason
        self._write_manifest()

    def finalize(self, status: Status, reason: str = "") -> None:
        """Checksum every file and write the final manifest (the last write of a run)."""
        self.manifest.status = status
        self.manifest.reason = reason
        self.manifest.finished = now_iso()
        self.manifest.files = {rel: FileEntry(sha256=d, size=s) for rel, (d, s) in checksum_tree(self.path).items()}
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write(self.path / MANIFEST, dump_json(self.manifest.model_dump()))


def checksum_tree(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            rel = p.relative_to(root).as_posix()
            if rel in (MANIFEST, SIGNATURE) or p.name.endswith(".tmp") and p.name.startswith("."):
                continue
            out[rel] = sha256_file(p)
    return out


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json((path / MANIFEST).read_text())


def load_json(path: Path, name: str) -> dict[str, Any]:
    return json.loads((path / name).read_text())


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
    """Check a bundle directory: manifest schema, final status, every checksum, no extra files."""
    v = Verdict(path=path)
    mpath = path / MANIFEST
    if not path.is_dir():
        v.problems.append(f"{path}: not a bundle directory")
        return v
    if not mpath.is_file():
        v.problems.append(f"{mpath}: missing: not a bundle, or the kit died before writing anything")
        return v
    try:
        m = read_manifest(path)
    except (ValidationError, ValueError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
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
    actual = {p.relative_to(path).as_posix() for p in path.rglob("*") if (p.is_file() or p.is_symlink())} - {MANIFEST, SIGNATURE}
    for rel in sorted(set(m.files) - actual):
        v.problems.append(f"{path / rel}: listed in the manifest but missing")
    for rel in sorted(actual - set(m.files)):
        v.problems.append(f"{path / rel}: not listed in the manifest (added after the run?)")
    for rel in sorted(set(m.files) & actual):
        p = path / rel
        if p.is_symlink():
            v.problems.append(f"{p}: is a symbolic link; bundles hold plain files only")
            continue
        digest, size = sha256_file(p)
        entry = m.files[rel]
        if size != entry.size or digest != entry.sha256:
            v.problems.append(f"{p}: checksum mismatch (modified after the run): sha256 {digest[:12]}…, "
                              f"manifest says {entry.sha256[:12]}…")
    for req in REQUIRED_FILES:
        if req not in m.files:
            v.problems.append(f"{path / req}: required file missing from the bundle")
    v.problems.extend(_check_documents(path, m))
    return v


#: top-level keys each JSON document must have, and the keys inside them that readers rely on
DOCUMENT_SCHEMA: dict[str, dict[str, tuple[str, ...]]] = {
    "metrics.json": {"": ("summary", "iterations"), "summary": ()},
    "provenance.json": {"": ("plan", "runtime", "software", "host"),
                        "plan": ("nodes", "dp", "tp", "pp", "micro_batch", "global_batch", "ranks_per_node")},
    "plan.json": {"": ("recipe", "preset", "recipe_name", "preset_names", "nodes")},
}


# libyaml's safe loader where PyYAML has it: `kit report` checks two YAML files per bundle
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=256)
def _yaml_mapping_problem(text: str) -> str | None:
    """Why ``text`` is not a YAML mapping, or None. Cached by content: the bundles of one
    sweep share their recipe and preset documents."""
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        return f"not valid YAML ({str(e).splitlines()[0]})"
    return None if isinstance(doc, dict) else "not a YAML mapping"


def _check_documents(path: Path, m: Manifest) -> list[str]:
    """Schema of the documents readers parse: valid JSON/YAML mappings with the keys they need."""
    problems: list[str] = []
    for rel, schema in DOCUMENT_SCHEMA.items():
        p = path / rel
        if rel not in m.files or not p.is_file() or p.is_symlink():
            continue
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{p}: schema: not valid JSON ({e})")
            continue
        if not isinstance(doc, dict):
            problems.append(f"{p}: schema: the document is not a JSON object")
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
        p = path / rel
        if rel not in m.files or not p.is_file() or p.is_symlink():
            continue
        try:
            problem = _yaml_mapping_problem(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            problem = f"not valid YAML ({str(e).splitlines()[0]})"
        if problem:
            problems.append(f"{p}: schema: {problem}")
    return problems
