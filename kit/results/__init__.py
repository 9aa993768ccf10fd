"""What happens to result bundles after a run: pack, verify, import, show, report, compare,
sweep and reproduce.

Exit codes of the commands in this package (see each module):

- 0: done; every bundle verified; a reproduction matched within its tolerance
- 1: a verification failed (each problem printed on its own line, naming the file), a
  sweep point failed/stalled, or a reproduction's metrics differ beyond the tolerance
- 2: bad input (``KitError``: one line on stderr; nothing was written)
- 3: ``kit reproduce``: the new run itself failed or stalled
- 4: ``kit reproduce``: the environment could not be matched (recipe, preset or image differ)
- 130: interrupted
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
EXIT_ENV_MISMATCH = 4
EXIT_INTERRUPTED = 130


class VerificationFailed(Exception):
    """A bundle (or archive) did not verify; ``problems`` name each file and what is wrong."""

    exit_code = EXIT_PROBLEMS

    def __init__(self, what: str, problems: list[str]):
        self.what = what
        self.problems = list(problems)
        super().__init__(f"{what}: {len(self.problems)} problem(s)\n" + "\n".join(self.problems))
