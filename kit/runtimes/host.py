"""The host runtime: the pinned command runs as it is, with this machine's Python."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from kit.runtimes import Runtime, register


@register("host")
class HostRuntime(Runtime):
    name = "host"
    python = sys.executable

    def wrap(self, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[Path]) -> list[str]:
        return list(argv)

    def software_key(self) -> str | None:
        """The interpreter and the modification times of every directory on its ``sys.path``:
        installing, upgrading or removing a package changes its site-packages directory, and
        so the key. (An edit inside an already installed package does not.)"""
        try:
            out = subprocess.run([self.python, "-c", "import sys, json; print(json.dumps(sys.path))"],
                                 capture_output=True, text=True, timeout=30)
            paths = json.loads(out.stdout)
            exe = Path(self.python).resolve()
            # the inventory inherits this environment: its thread count follows OMP_NUM_THREADS
            parts: list[object] = [str(exe), exe.stat().st_mtime_ns, os.cpu_count(),
                                   os.environ.get("OMP_NUM_THREADS")]
            for p in paths:
                if p and os.path.isdir(p):
                    parts += [p, os.stat(p).st_mtime_ns]
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
        return "host-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
