"""Packing a bundle into one ``.tar.gz``, and importing one safely.

``pack(dir)`` refuses a bundle that does not verify (a tampered or unfinished bundle is not
passed around, nor one whose signature is bad), then writes ``<id>.tar.gz`` atomically: every
member under ``<id>/`` (``signature.json`` too, when signed), plain files and directories
only, owner and mode normalized.

``import_archive(file, into)`` trusts nothing in the archive. It reads it with its own
bounded tar reader (:mod:`kit.results.tarstream`, not :mod:`tarfile`), so every limit holds
before the bytes it guards are read or inflated, whatever the Python version:

- the archive's own size, each member's size, the members' total and their count, the size
  of a PAX extended header or GNU long name, the compression ratio and the wall time are
  capped (:class:`Limits`; ``KIT_IMPORT_*`` variables and ``--max-*`` options);
- numeric header fields must be octal or positive base-256 (a negative size is refused);
- each member is checked from its header before its data is read: no absolute path, no
  ``..``, no links (symbolic or hard), devices, FIFOs or other special members, no duplicate
  names, one top-level directory (the bundle id, a safe name);
- members are written into a temporary directory *inside* the target
  (``into/.import-XXXX``), each file created exclusively, never through a link;
- the extracted bundle is verified (:func:`kit.bundle.verify`: schema, final status, every
  checksum, no extra files; and its signature, :mod:`kit.signing`: a bad one is refused, and
  with trusted keys given, an unsigned or untrusted one too); one that fails is removed;
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
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from kit import bundle as bundle_mod, bundle_reader, locks, signing
from kit.bundle_reader import BundleReadError
from kit.errors import KitError
from kit.results import VerificationFailed, tarstream

MiB = 1 << 20
GiB = 1 << 30
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
IMPORT_LOCK = ".kit-import.lock"


@dataclass(frozen=True)
class Limits:
    """Caps on what an import reads and writes (bytes, except ``max_members``, ``max_ratio``
    and ``max_seconds``). Each is checked before the bytes it guards are read (:mod:`.tarstream`)."""
    max_archive: int = 2 * GiB
    max_member: int = 1 * GiB
    max_total: int = 4 * GiB
    max_members: int = 20000
    max_header: int = 64 << 10  # one PAX extended header or GNU long name
    max_ratio: float = 200.0  # inflated bytes / compressed bytes
    max_seconds: float = 600.0  # wall time of the whole read


#: the limits a user may set: field -> (environment variable, command-line option, scale)
LIMIT_KNOBS = {
    "max_archive": ("KIT_IMPORT_MAX_ARCHIVE_MIB", "--max-archive-mib", MiB),
    "max_member": ("KIT_IMPORT_MAX_MEMBER_MIB", "--max-member-mib", MiB),
    "max_total": ("KIT_IMPORT_MAX_TOTAL_MIB", "--max-total-mib", MiB),
    "max_members": ("KIT_IMPORT_MAX_MEMBERS", "--max-members", 1),
    "max_ratio": ("KIT_IMPORT_MAX_RATIO", "--max-ratio", 1),
    "max_seconds": ("KIT_IMPORT_MAX_SECONDS", "--max-seconds", 1),
}


def resolve_limits(**given: float | None) -> Limits:
    """The defaults, then ``KIT_IMPORT_*`` environment variables, then ``given`` (the
    command-line values, by field name; None: not given). A value that is not a number >= 0
    is refused naming the variable or option."""
    values: dict[str, float] = {}
    for field_name, (env, option, scale) in LIMIT_KNOBS.items():
        for where, raw in ((env, os.environ.get(env) or None), (option, given.get(field_name))):
            if raw is None:
                continue
            try:
                v = float(raw)
            except ValueError:
                v = float("nan")
            if not v >= 0 or v == float("inf"):
                raise KitError(f"{raw!r} is not a limit", where=where, fix="give a finite number >= 0")
            values[field_name] = v * scale
    cast = {f: (int(v) if isinstance(getattr(Limits, f), int) else v) for f, v in values.items()}
    return replace(Limits(), **cast)


# -- pack -------------------------------------------------------------------------------------
def pack(bundle_dir: Path, out: Path | None = None) -> Path:
    """Verify ``bundle_dir`` and write it as one ``<id>.tar.gz`` (into ``out``, a file or directory)."""
    if not bundle_dir.is_dir():
        raise KitError("not a directory", where=str(bundle_dir), fix="name a bundle directory written by `kit run`")
    v = bundle_mod.verify(bundle_dir)
    if not v.ok:
        raise VerificationFailed(f"{bundle_dir}: not packed, the bundle does not verify", v.problems)
    sig = signing.check(bundle_dir)
    if sig.state == "bad":
        raise VerificationFailed(f"{bundle_dir}: not packed, the signature does not verify", [sig.problem(bundle_dir)])
    m = bundle_mod.read_manifest(bundle_dir)
    if out is None:
        target = bundle_dir.parent / f"{m.id}.tar.gz"
    elif out.is_dir() or str(out).endswith(os.sep):
        target = out / f"{m.id}.tar.gz"
    else:
        target = out
    target.parent.mkdir(parents=True, exist_ok=True)
    names = [bundle_mod.MANIFEST, *([bundle_mod.SIGNATURE] if sig.state != "unsigned" else []), *sorted(m.files)]
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


_LINKS = {"symlink": "symbolic", "hardlink": "hard"}


def check_member(archive: Path, m: tarstream.Member) -> tuple[str, ...]:
    """The member's path parts, or a KitError saying why it is unsafe."""
    name = m.name
    if "\x00" in name or "\\" in name:
        raise _unsafe(archive, f"member {name!r} has a NUL or backslash in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, f"member {name!r} has an absolute path")
    parts = tuple(x for x in PurePosixPath(name).parts if x not in ("", "."))
    if ".." in parts:
        raise _unsafe(archive, f"member {name!r} climbs out of the bundle (..)")
    if not parts:
        raise _unsafe(archive, f"member {name!r} has an empty path")
    if m.kind in _LINKS:
        raise _unsafe(archive, f"member {name!r} is a {_LINKS[m.kind]} link (to {m.linkname!r}); "
                               f"bundles hold plain files only")
    if m.kind in ("chardev", "blockdev"):
        raise _unsafe(archive, f"member {name!r} is a device; bundles hold plain files only")
    if m.kind == "fifo":
        raise _unsafe(archive, f"member {name!r} is a FIFO; bundles hold plain files only")
    if m.kind not in (tarstream.REGULAR, tarstream.DIRECTORY):
        raise _unsafe(archive, f"member {name!r} is not a plain file or directory ({m.kind})")
    if m.kind == tarstream.REGULAR and name.endswith("/"):
        raise _unsafe(archive, f"member {name!r} is a file whose name ends in '/'")
    return parts


def _open_archive(archive: Path, lim: Limits) -> BinaryIO:
    """The archive opened for reading through the bundle reader's opener: a regular file
    (a link the user named is followed; a FIFO is refused without blocking) within the size
    limit. Not read whole: ``extract_checked`` streams it."""
    fix = "name a .tar.gz written by `kit bundle pack`"
    try:
        fd, size = bundle_reader.open_file(archive, follow_links=True)
    except bundle_reader.MissingFile:
        raise KitError("no such archive", where=str(archive), fix=fix) from None
    except BundleReadError as e:
        raise KitError(f"cannot open the archive: {e.why}", where=str(archive), fix=fix) from None
    if size > lim.max_archive:
        os.close(fd)
        raise _unsafe(archive, f"the archive is {size / MiB:.1f} MiB, over the {lim.max_archive / MiB:.0f} MiB "
                               f"limit (raise it with KIT_IMPORT_MAX_ARCHIVE_MIB or --max-archive-mib if you trust it)")
    return os.fdopen(fd, "rb")


def _write_member(reader: tarstream.TarReader, target: Path) -> None:
    """The current member's data into a new file (never through a link, never over a file)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        reader.copy_data(f.write)


def extract_checked(archive: Path, dest: Path, limits: Limits | None = None) -> Path:
    """Check every member and extract into the existing, empty directory ``dest``; return ``dest/<id>``.

    Members are read with :class:`tarstream.TarReader`, which enforces the header, ratio and
    time limits; the size, count, type and path of each member are checked here, from its
    header, before any of its data is read."""
    lim = limits or resolve_limits()
    top: str | None = None
    seen: set[tuple[str, ...]] = set()
    total = count = 0
    with _open_archive(archive, lim) as f:
        reader = tarstream.TarReader(f, tarstream.ReadLimits(max_header=lim.max_header, max_ratio=lim.max_ratio,
                                                             max_seconds=lim.max_seconds))
        name = ""
        try:
            for m in reader:
                name = m.name
                count += 1
                if count > lim.max_members:
                    raise _unsafe(archive, f"more than {lim.max_members} members")
                parts = check_member(archive, m)
                if top is None:
                    top = parts[0]
                    if not _SAFE_ID.match(top):
                        raise _unsafe(archive, f"top-level directory {top!r} is not a bundle id")
                elif parts[0] != top:
                    raise _unsafe(archive, f"member {m.name!r} is outside the bundle directory {top!r} "
                                           f"(one bundle per archive)")
                if len(parts) == 1 and m.kind != tarstream.DIRECTORY:
                    raise _unsafe(archive, f"member {m.name!r}: the top level must be the bundle directory")
                if parts in seen:
                    raise _unsafe(archive, f"member {m.name!r} appears twice (a later copy would replace the first)")
                seen.add(parts)
                if m.size > lim.max_member:
                    raise _unsafe(archive, f"member {m.name!r} is {m.size / MiB:.1f} MiB, over the "
                                           f"{lim.max_member / MiB:.0f} MiB per-file limit")
                total += m.size
                if total > lim.max_total:
                    raise _unsafe(archive, f"members total more than {lim.max_total / MiB:.0f} MiB "
                                           f"(the limit for one bundle)")
                target = dest.joinpath(*parts)
                if m.kind == tarstream.DIRECTORY:
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _write_member(reader, target)
        except tarstream.UnsafeArchive as e:
            raise _unsafe(archive, str(e)) from None
        except tarstream.DamagedArchive as e:
            if count == 0:
                raise KitError(f"not a readable tar archive: {e}", where=str(archive),
                               fix="name a .tar.gz written by `kit bundle pack`") from None
            raise KitError(f"damaged archive: {e}", where=str(archive),
                           fix="the file is truncated or not a tar.gz; copy it again") from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise _unsafe(archive, f"member {name!r} collides with another member's path") from None
        except OSError as e:
            raise KitError(f"could not extract member {name!r}: {e.strerror or e}", where=str(archive),
                           fix=f"check that {dest} is writable and has space") from None
    if top is None:
        raise _unsafe(archive, "the archive is empty")
    if (top, bundle_mod.MANIFEST) not in seen:
        raise VerificationFailed(f"{archive}: not a bundle",
                                 [f"{archive}:{top}/{bundle_mod.MANIFEST}: missing: the archive holds no bundle manifest"])
    return dest / top


def _relabel(problems: list[str], real: Path, shown: str) -> list[str]:
    return [p.replace(str(real), shown) for p in problems]


Checked = tuple[bundle_mod.Verdict, signing.SignatureCheck]


def verify_signed(root: Path, trust: signing.Trust | None = None, shown: str | None = None) -> Checked:
    """:func:`kit.bundle.verify` plus the signature (a bad one, or an unsigned or untrusted one
    when ``trust`` is given, is one more problem); problems name ``shown`` instead of ``root``."""
    v = bundle_mod.verify(root)
    sig = signing.check(root, trust)
    if (problem := sig.problem(root)) is not None:
        v.problems.append(problem)
    if shown is not None:
        v.problems = _relabel(v.problems, root, shown)
    return v, sig


def verify_archive(archive: Path, limits: Limits | None = None, trust: signing.Trust | None = None) -> Checked:
    """Extract (checked) into a private temporary directory and verify; problems name ``archive:<id>/file``."""
    with tempfile.TemporaryDirectory(prefix="kit-verify-") as tmp:
        root = extract_checked(archive, Path(tmp), limits)
        v, sig = verify_signed(root, trust, f"{archive}:{root.name}")
        v.path = archive
        return v, sig


@contextmanager
def results_lock(into: Path, name: str = IMPORT_LOCK) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on a file in ``into`` (shared by imports into one directory)."""
    with locks.exclusive(into / name):
        yield


def import_archive(archive: Path, into: Path, limits: Limits | None = None,
                   trust: signing.Trust | None = None) -> Path:
    """Safely extract and verify ``archive`` into ``into/<id>``; return that path. A bad
    signature is refused; with ``trust``, so is a bundle not signed by a trusted key."""
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=into, prefix=".import-"))
    try:
        root = extract_checked(archive, tmp, limits)
        if (into / root.name).exists():
            raise KitError(f"bundle {root.name} already exists in {into}", where=str(archive),
                           fix=f"it was imported before; compare with `kit bundle verify {into / root.name}`")
        v, _ = verify_signed(root, trust, f"{archive}:{root.name}")
        if not v.ok:
            raise VerificationFailed(f"{archive}: refused, the bundle does not verify", v.problems)
        with results_lock(into):
            final = into / root.name
            if final.exists():
                raise KitError(f"bundle {root.name} already exists in {into}", where=str(archive),
                               fix=f"it was imported before; compare with `kit bundle verify {final}`")
            os.rename(root, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_path(path: Path, limits: Limits | None = None, trust: signing.Trust | None = None) -> list[Checked]:
    """Verify a bundle directory, an archive, or every bundle under a results directory (with signatures)."""
    from kit.results import store

    if path.is_file():
        return [verify_archive(path, limits, trust)]
    if not path.exists():
        raise KitError("no such file or directory", where=str(path), fix="name a bundle, a .tar.gz or a results directory")
    if store.is_bundle(path):
        return [verify_signed(path, trust)]
    found = store.find([path])
    if not found:
        return [verify_signed(path, trust)]  # says what is missing
    return [verify_signed(p, trust) for p in found]
