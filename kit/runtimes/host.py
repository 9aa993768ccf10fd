"""The host runtime: the pinned command runs as it is, with this machine's Python."""

from __future__ import annotations

import sys
from pathlib import Path

from kit.runtimes import Runtime, register


@register("host")
class HostRuntime(Runtime):
    name = "host"
    python = sys.executable

    def wrap(self, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[Path]) -> list[str]:
        return list(argv)

