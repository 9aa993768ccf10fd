"""Packing a bundle into one ``.tar.gz``, and importing one safely.

``pack(dir)`` refuses a bundle that does not verify (a tampered or unfinished bundle is not
passed around), then writes ``<id>.tar.gz`` atomically: every member under ``<id>/``, plain
files and directories only, owner and mode normalized.

``import_archive(file, into)`` trusts nothing in the archive:

- the archive's own size, each member's size, the members' total and their count are capped
  (:class:`Limits`, configurable);
- each member is checked before anything is written: no absolute path, no ``..``, no
  links (symbolic or hard), devices, FIFOs or other special members, no duplicate names,
  one top-level directory (the bundle id, a safe name);
- members are extracted into a temporary directory *inside* the target
  (``into/.import-XXXX``), with Python's ``filter="data"`` as a second guard;
- the extracted bundle is verified (:func:`kit.bundle.verify`: schema, final status, every
  checksum, no extra files); a bundle that does not verify is removed and refused;
- it is renamed into place under a lock (``into/.kit-import.lock``); an existing
  ``into/<id>`` is never replaced.

Nothing is ever written outside ``into``. Exit codes (``kit bundle ...``): 0 ok; 1 the bundle
does not verify (each problem on its own line, naming the file); 2 bad input or an unsafe
archive (one line).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from kit import bundle as bundle_mod, locks
from kit.errors import KitError
from kit.results import VerificationFailed

MiB = 1 << 20
GiB = 1 << 30
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
IMPORT_LOCK = ".kit-import.lock"


@dataclass(frozen=True)
class Limits:
    """Caps on what an import reads and writes (bytes, except ``max_members``)."""
    max_archive: int = 2 * GiB
    max_member: int = 1 * GiB
    max_total: int = 4 * GiB
    max_members: int = 20000


def _env_limits() -> Limits:
    """Limits, with ``KIT_IMPORT_MAX_{ARCHIVE,MEMBER,TOTAL}_MIB`` / ``KIT_IMPORT_MAX_MEMBERS`` overrides."""
    d = Limits()
    def mib(name: str, default: int) -> int:
        v = os.environ.get(name)
        return int(float(v) * MiB) if v else default
    return Limits(max_archive=mib("KIT_IMPORT_MAX_ARCHIVE_MIB", d.max_archive),
                  max_member=mib("KIT_IMPORT_MAX_MEMBER_MIB", d.max_member),
                  max_total=mib("KIT_IMPORT_MAX_TOTAL_MIB", d.max_total),
                  max_members=int(os.environ.get("KIT_IMPORT_MAX_MEMBERS") or d.max_members))


# -- pack -------------------------------------------------------------------------------------
def pack(bundle_dir: Path, out: Path | None = None) -> Path:
    """Verify ``bundle_dir`` and write it as one ``<id>.tar.gz`` (into ``out``, a file or directory)."""
    if not bundle_dir.is_dir():
        raise KitError("not a directory", where=str(bundle_dir), fix="name a bundle directory written by `kit run`")
    v = bundle_mod.verify(bundle_dir)
    if not v.ok:
        raise VerificationFailed(f"{bundle_dir}: not packed, the bundle does not verify", v.problems)
    m = bundle_mod.read_manifest(bundle_dir)
    if out is None:
        target = bundle_dir.parent / f"{m.id}.tar.gz"
    elif out.is_dir() or str(out).endswith(os.sep):
        target = out / f"{m.id}.tar.gz"
    else:
        target = out
    target.parent.mkdir(parents=True, exist_ok=True)
    names = [bundle_mod.MANIFEST, *sorted(m.files)]
    dirs = sorted({str(PurePosixPath(n).parent) for n in names} - {"."})
    all_dirs = sorted({str(p) for d in dirs for p in [PurePosixPath(d), *PurePosixPath(d).parents] if str(p) != "."})
    with bundle_mod.atomic_file(target) as f, tarfile.open(fileobj=f, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mode = 0o755 if ti.isdir() else 0o644
            return ti
        top = tar.gettarinfo(str(bundle_dir), arcname=m.id)
        tar.addfile(norm(top))
        for d in all_dirs:
            tar.addfile(norm(tar.gettarinfo(str(bundle_dir / d), arcname=f"{m.id}/{d}")))
        for rel in names:
            p = bundle_dir / rel
            ti = norm(tar.gettarinfo(str(p), arcname=f"{m.id}/{rel}"))
            if not ti.isreg():
                raise KitError("not a plain file", where=str(p), fix="bundles hold plain files only")
            with p.open("rb") as src:
                tar.addfile(ti, src)
    return target


# -- import -----------------------------------------------------------------------------------
def _unsafe(archive: Path, what: str) -> KitError:
    return KitError(f"refused: {what}", where=str(archive),
                    fix="nothing was imported; ask for the bundle again or pack it with `kit bundle pack`")


def check_member(archive: Path, ti: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path parts, or a KitError saying why it is unsafe."""
    name = ti.name
    if "\x00" in name or "\\" in name:
        raise _unsafe(archive, f"member {name!r} has a NUL or backslash in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, f"member {name!r} has an absolute path")
    parts = tuple(x for x in PurePosixPath(name).parts if x not in ("", "."))
    if ".." in parts:
        raise _unsafe(archive, f"member {name!r} climbs out of the bundle (..)")
    if not parts:
        raise _unsafe(archive, f"member {name!r} has an empty path")
    if ti.issym() or ti.islnk():
        raise _unsafe(archive, f"member {name!r} is a {'symbolic' if ti.issym() else 'hard'} link (to {ti.linkname!r}); "
                               f"bundles hold plain files only")
    if ti.ischr() or ti.isblk():
        raise _unsafe(archive, f"member {name!r} is a device; bundles hold plain files only")
    if ti.isfifo():
        raise _unsafe(archive, f"member {name!r} is a FIFO; bundles hold plain files only")
    if not (ti.isreg() or ti.isdir()):
        raise _unsafe(archive, f"member {name!r} is not a plain file or directory (type {ti.type!r})")
    return parts


@contextmanager
def _open(archive: Path, limits: Limits) -> Iterator[tarfile.TarFile]:
    if not archive.is_file():
        raise KitError("no such archive", where=str(archive), fix="name a .tar.gz written by `kit bundle pack`")
    size = archive.stat().st_size
    if size > limits.max_archive:
        raise _unsafe(archive, f"the archive is {size / MiB:.1f} MiB, over the {limits.max_archive / MiB:.0f} MiB limit "
                               f"(raise it with KIT_IMPORT_MAX_ARCHIVE_MIB or --max-archive-mib if you trust it)")
    try:
        tar = tarfile.open(archive, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise KitError(f"not a readable tar archive: {e}", where=str(archive),
                       fix="name a .tar.gz written by `kit bundle pack`") from None
    try:
        yield tar
    finally:
        tar.close()


def extract_checked(archive: Path, dest: Path, limits: Limits | None = None) -> Path:
    """Check every member and extract into the existing, empty directory ``dest``; return ``dest/<id>``."""
    limits = limits or _env_limits()
    top: str | None = None
    seen: set[tuple[str, ...]] = set()
    total = count = 0
    with _open(archive, limits) as tar:
        try:
            for ti in tar:
                count += 1
                if count > limits.max_members:
                    raise _unsafe(archive, f"more than {limits.max_members} members")
                parts = check_member(archive, ti)
                if top is None:
                    top = parts[0]
                    if not _SAFE_ID.match(top):
                        raise _unsafe(archive, f"top-level directory {top!r} is not a bundle id")
                elif parts[0] != top:
                    raise _unsafe(archive, f"member {ti.name!r} is outside the bundle directory {top!r} "
                                           f"(one bundle per archive)")
                if len(parts) == 1 and not ti.isdir():
                    raise _unsafe(archive, f"member {ti.name!r}: the top level must be the bundle directory")
                if parts in seen:
                    raise _unsafe(archive, f"member {ti.name!r} appears twice (a later copy would replace the first)")
                seen.add(parts)
                if ti.size > limits.max_member:
                    raise _unsafe(archive, f"member {ti.name!r} is {ti.size / MiB:.1f} MiB, over the "
                                           f"{limits.max_member / MiB:.0f} MiB per-file limit")
                total += ti.size
                if total > limits.max_total:
                    raise _unsafe(archive, f"members total more than {limits.max_total / MiB:.0f} MiB "
                                           f"(the limit for one bundle)")
                ti.name = "/".join(parts)
                if ti.isdir():
                    (dest / ti.name).mkdir(parents=True, exist_ok=True)
                    continue
                ti.mode = 0o644
                try:
                    tar.extract(ti, dest, set_attrs=False, filter="data")
                except TypeError:  # Python without extraction filters: our own checks above stand alone
                    tar.extract(ti, dest, set_attrs=False)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            if isinstance(e, tarfile.FilterError):
                raise _unsafe(archive, f"extraction filter: {e}") from None
            raise KitError(f"damaged archive: {e}", where=str(archive),
                           fix="the file is truncated or not a tar.gz; copy it again") from None
    if top is None:
        raise _unsafe(archive, "the archive is empty")
    if (top, bundle_mod.MANIFEST) not in seen:
        raise VerificationFailed(f"{archive}: not a bundle",
                                 [f"{archive}:{top}/{bundle_mod.MANIFEST}: missing: the archive holds no bundle manifest"])
    return dest / top


def _relabel(problems: list[str], real: Path, shown: str) -> list[str]:
    return [p.replace(str(real), shown) for p in problems]


def verify_archive(archive: Path, limits: Limits | None = None) -> bundle_mod.Verdict:
    """Extract (checked) into a private temporary directory and verify; problems name ``archive:<id>/file``."""
    with tempfile.TemporaryDirectory(prefix="kit-verify-") as tmp:
        root = extract_checked(archive, Path(tmp), limits)
        v = bundle_mod.verify(root)
        v.problems = _relabel(v.problems, root, f"{archive}:{root.name}")
        v.path = archive
        return v


@contextmanager
def results_lock(into: Path, name: str = IMPORT_LOCK) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on a file in ``into`` (shared by imports into one directory)."""
    with locks.exclusive(into / name):
        yield


def import_archive(archive: Path, into: Path, limits: Limits | None = None) -> Path:
    """Safely extract and verify ``archive`` into ``into/<id>``; return that path."""
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=into, prefix=".import-"))
    try:
        root = extract_checked(archive, tmp, limits)
        if (into / root.name).exists():
            raise KitError(f"bundle {root.name} already exists in {into}", where=str(archive),
                           fix=f"it was imported before; compare with `kit bundle verify {into / root.name}`")
        v = bundle_mod.verify(root)
        if not v.ok:
            raise VerificationFailed(f"{archive}: refused, the bundle does not verify",
                                     _relabel(v.problems, root, f"{archive}:{root.name}"))
        with results_lock(into):
            final = into / root.name
            if final.exists():
                raise KitError(f"bundle {root.name} already exists in {into}", where=str(archive),
                               fix=f"it was imported before; compare with `kit bundle verify {final}`")
            os.rename(root, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_path(path: Path, limits: Limits | None = None) -> list[bundle_mod.Verdict]:
    """Verify a bundle directory, an archive, or every bundle under a results directory."""
    from kit.results import store

    if path.is_file():
        return [verify_archive(path, limits)]
    if not path.exists():
        raise KitError("no such file or directory", where=str(path), fix="name a bundle, a .tar.gz or a results directory")
    if store.is_bundle(path):
        return [bundle_mod.verify(path)]
    found = store.find([path])
    if not found:
        return [bundle_mod.verify(path)]  # says what is missing
    return [bundle_mod.verify(p) for p in found]
