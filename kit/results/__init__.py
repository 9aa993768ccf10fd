"""Reading result bundles after a run: pack, verify, import, show, report, compare.

Everything here only reads bundles (through :mod:`kit.results.store`); what runs things
(``kit sweep``, ``kit reproduce``) sits above the runner, in :mod:`kit.sweep` and
:mod:`kit.reproduce`. Exit codes are :mod:`kit.errors`' one table.
"""

from __future__ import annotations

from kit.errors import EXIT_FAILED


class VerificationFailed(Exception):
    """A bundle (or archive) did not verify; ``problems`` name each file and what is wrong."""

    exit_code = EXIT_FAILED

    def __init__(self, what: str, problems: list[str]):
        self.what = what
        self.problems = list(problems)
        super().__init__(f"{what}: {len(self.problems)} problem(s)\n" + "\n".join(self.problems))
