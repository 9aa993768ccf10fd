"""Errors the user can act on, and the one table of exit codes.

A ``KitError`` is bad input or a missing prerequisite: the CLI prints its message on one
line and exits with code 2, with no traceback. The message names the file, the key and
what to do, e.g. ``recipes/x.yaml: parallel.tp: 3 does not divide heads 12; pick a TP
that divides it``.

Exit codes, for every command (the README's table is this one):

====  =========================================================================================
0     done: a run finished ok (or was submitted); everything verified; reproduced; finalized
1     FAILED: a rank failed; a bundle or archive does not verify; a sweep point failed;
      a reproduction's metrics differ beyond tolerance; ``report`` left a bundle out
2     USAGE: bad input or a missing prerequisite; nothing ran (one line on stderr)
3     STALLED: ``kit run``: no progress within the stall timeout; ``kit reproduce``: the new
      run itself failed or stalled
4     NOT_READY: the command's precondition does not hold: ``kit collect``: the job has not
      ended, or its state is unknown (``kit cancel``: not within its wait, or its state
      unknown); ``kit reproduce``: the environment could not be matched
130   INTERRUPTED: SIGINT/SIGTERM/SIGHUP; the ranks were stopped and the bundle finalized
      (``kit collect``/``kit cancel``: the job was cancelled or ran out of time)
====  =========================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STALLED = 3
EXIT_NOT_READY = 4
EXIT_INTERRUPTED = 130

#: a run's status -> ``kit run``'s exit code
RUN_STATUS_EXIT = {"ok": EXIT_OK, "submitted": EXIT_OK, "failed": EXIT_FAILED, "stalled": EXIT_STALLED,
                   "interrupted": EXIT_INTERRUPTED}


def run_exit_code(status: str) -> int:
    """``kit run``'s exit code for a run that ended with ``status`` (unknown: failed)."""
    return RUN_STATUS_EXIT.get(status, EXIT_FAILED)


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
