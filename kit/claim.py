"""One finalizer per bundle: the kit that creates the bundle's ``finalizer.json``.

A job's bundle has two possible finalizers: the kit inside the job (``kit job-run``) and
``kit collect`` after the job manager says the job ended. They may run on different hosts
that share the bundle over NFS or Lustre, where ``flock`` is not reliable but an exclusive
create is (as ``mkdir`` is). The claim records who finalizes (host, pid, the process's start
time, the kit subcommand, when) and stays in the bundle, listed in its manifest.

A claim whose kit is gone is taken over: on the claim's host when that process (same pid
*and* start time) no longer exists; elsewhere when the claim file is older than
``STALE_S`` by the file server's clock (a probe file's mtime against the claim's, so the
hosts' clocks do not matter). Taking over renames the stale claim away first: of two kits
taking over at once, one rename succeeds.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from kit import bundle_reader, proc
from kit.bundle_reader import BundleReadError
from kit.bundle import dump_json, now_iso

FINALIZER = "finalizer.json"
STALE_S = 300.0  # finalizing takes seconds; a claim this old (file-server time) is from a dead kit
_COMMANDS = {"run", "job-run", "collect", "reproduce", "sweep"}


def _me() -> dict[str, Any]:
    cmd = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in _COMMANDS else None  # nothing user-typed
    return {**proc.identity(), "command": f"kit {cmd}" if cmd else "kit"}


def _create(bundle: Path, data: dict[str, Any]) -> bool:
    try:
        fd = os.open(bundle / FINALIZER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(dump_json({**data, "claimed": now_iso()}))
        f.flush()
        os.fsync(f.fileno())
    return True


def read(bundle: Path) -> dict[str, Any]:
    """The claim, ``{}`` if there is none or it cannot be read (a kit died writing it)."""
    try:
        data = bundle_reader.read_json(Path(bundle), FINALIZER, cap=1 << 16)
    except BundleReadError:
        return {}
    return data if isinstance(data, dict) else {}


def claim(bundle: Path) -> bool:
    """Become the bundle's finalizer (True), unless another kit already is."""
    return _create(Path(bundle), _me())


def mine(bundle: Path) -> bool:
    """The bundle's claim is this process's."""
    c, me = read(bundle), _me()
    return all(c.get(k) == me[k] for k in ("host", "pid", "started"))


def age_s(bundle: Path) -> float | None:
    """Seconds since the claim was written, by the file server's clock."""
    probe = Path(bundle) / f".claim-probe-{secrets.token_hex(4)}.tmp"
    try:
        probe.touch()
        return probe.stat().st_mtime - (Path(bundle) / FINALIZER).stat().st_mtime
    except OSError:
        return None
    finally:
        probe.unlink(missing_ok=True)


def holder_gone(bundle: Path, c: dict[str, Any]) -> bool:
    """The kit that made claim ``c`` is known to be gone (see the module's docstring)."""
    gone = proc.gone_here(c) if c.get("started") else None
    if gone is not None:
        return gone
    age = age_s(bundle)
    return age is not None and age > STALE_S


def take_over(bundle: Path, stale: dict[str, Any]) -> bool:
    """Replace the claim of a kit that is gone; False if another kit took over first."""
    bundle = Path(bundle)
    away = bundle / f".{FINALIZER}.{secrets.token_hex(4)}.tmp"
    try:
        os.rename(bundle / FINALIZER, away)
    except OSError:  # gone already (another kit took over), or not ours to move
        return False
    try:
        try:
            moved = json.loads(away.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved != stale:  # another kit took over first: that is its claim, give it back
            try:
                os.link(away, bundle / FINALIZER)  # exclusive, as the create is
            except FileExistsError:
                pass
            return False
        return _create(bundle, {**_me(), "took_over_from": stale})
    finally:
        away.unlink(missing_ok=True)
