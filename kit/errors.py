"""Errors the user can act on.

A ``KitError`` is bad input or a missing prerequisite: the CLI prints its message on one
line and exits with code 2, with no traceback. The message names the file, the key and
what to do, e.g. ``recipes/x.yaml: parallel.tp: 3 does not divide heads 12; pick a TP
that divides it``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run itself failed, stalled or was interrupted; a bundle says so
EXIT_USAGE = 2  # bad input: nothing ran


class KitError(Exception):
    """Bad input or a missing prerequisite; exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.where = where
        self.fix = fix
        parts = []
        if where:
            parts.append(f"{where}: ")
        parts.append(message)
        if fix:
            parts.append(f"; {fix}")
        super().__init__("".join(parts))
