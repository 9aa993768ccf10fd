"""The allocator setting: find the library, preload it, and check it really loaded.

``tcmalloc`` resolves to gperftools' ``libtcmalloc.so*``: first ``$KIT_TCMALLOC``, then the
usual library directories, then ``ldconfig -p``. The library is preloaded with
``LD_PRELOAD``; after the ranks start, the kit reads each rank's ``/proc/<pid>/maps`` and
records whether the library is mapped (``seen``), so a preload that silently did not apply
shows up as such.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from kit.errors import KitError

TCMALLOC_NAMES = ("libtcmalloc.so.4", "libtcmalloc.so", "libtcmalloc_minimal.so.4", "libtcmalloc_minimal.so")
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
            "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
PACKAGE_HINT = ("install gperftools' tcmalloc (Debian/Ubuntu: apt-get install libgoogle-perftools4; "
                "RHEL: dnf install gperftools-libs) or set KIT_TCMALLOC=/path/to/libtcmalloc.so")


def find_tcmalloc(roots: list[str] | None = None) -> str | None:
    """Path of a tcmalloc library on this machine, or None."""
    env = os.environ.get("KIT_TCMALLOC")
    if env:
        return env if Path(env).is_file() else None
    for d in roots or LIB_DIRS:
        for name in TCMALLOC_NAMES:
            p = Path(d) / name
            if p.exists():
                return str(p)
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    if Path(ldconfig).exists():
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            m = re.search(r"(libtcmalloc(?:_minimal)?\.so[.\d]*) .*=> (\S+)", line)
            if m:
                return m.group(2)
    return None


def resolve(allocator: str | None, *, find=find_tcmalloc) -> str | None:
    """The library to preload for ``allocator`` (None for glibc / unset).

    Raises KitError naming the package when tcmalloc is asked for and not found.
    """
    if allocator in (None, "glibc"):
        return None
    if allocator == "tcmalloc":
        lib = find()
        if lib is None:
            raise KitError("allocator: tcmalloc requested but libtcmalloc was not found", where="preset", fix=PACKAGE_HINT)
        return lib
    if not Path(allocator).is_file():
        raise KitError(f"allocator: library {allocator} does not exist", where="preset",
                       fix="point allocator at an existing .so, or use glibc/tcmalloc")
    return allocator


def mapped_allocator(pid: int) -> dict[str, object]:
    """What allocator a live process has mapped, read from ``/proc/<pid>/maps``."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError as e:
        return {"pid": pid, "allocator": "unknown", "error": str(e)}
    libs = sorted({line.split()[-1] for line in text.splitlines()
                   if len(line.split()) >= 6 and re.search(r"lib(tcmalloc|jemalloc|mimalloc)[^/]*\.so", line.split()[-1])})
    if any("tcmalloc" in lib for lib in libs):
        kind = "tcmalloc"
    elif any("jemalloc" in lib for lib in libs):
        kind = "jemalloc"
    elif any("mimalloc" in lib for lib in libs):
        kind = "mimalloc"
    else:
        kind = "glibc"
    return {"pid": pid, "allocator": kind, "libraries": libs}

