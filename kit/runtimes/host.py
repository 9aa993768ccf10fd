"""The host runtime: the pinned command runs as it is, with this machine's Python."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from kit.hostinfo import cpu_model
from kit.runtimes.base import Runtime, register


@register("host")
class HostRuntime(Runtime):
    name = "host"
    python = sys.executable

    def wrap(self, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[Path]) -> list[str]:
        return list(argv)

    def software_key(self) -> str | None:
        """The interpreter and the modification times of every directory on its ``sys.path``:
        installing, upgrading or removing a package changes its site-packages directory, and
        so the key. (An edit inside an already installed package does not.) The command's
        Python is this one (``sys.executable``) with this environment, so its path is this
        process's, plus ``PYTHONPATH`` as it is now: no interpreter to start."""
        try:
            paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + sys.path
            exe = Path(self.python).resolve()
            # the inventory inherits this environment: its thread count follows OMP_NUM_THREADS;
            # torch's CPU capability and OpenBLAS's core follow the CPU (a shared home directory
            # sees several kinds of node)
            parts: list[object] = [str(exe), exe.stat().st_mtime_ns, os.cpu_count(), cpu_model(),
                                   os.environ.get("OMP_NUM_THREADS")]
            for p in paths:
                if p and os.path.isdir(p):
                    parts += [p, os.stat(p).st_mtime_ns]
        except (OSError, ValueError):
            return None
        return "host-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
