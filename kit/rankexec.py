"""The rank wrapper: ``python -m kit.rankexec -- CMD ARG…`` runs CMD with torchrun's contract.

mpirun, srun and PJM's mpiexec start each rank with their own variables (OMPI_COMM_WORLD_*,
SLURM_PROCID/NTASKS/LOCALID, PMIX_RANK + PJM_MPI_PROC, ...), while a torch.distributed
program (Megatron's ``pretrain_gpt.py``, anything with ``init_process_group("gloo")`` on
``env://``) reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT. This wrapper maps the former to the latter (:func:`kit.rankenv.resolve`, the
one home of that mapping; the launcher's own variables win over inherited ones) and then
*becomes* CMD with ``os.execvpe``: the rank process is the program itself (same pid, its
own command line), so the kit's monitor, reaper and stack dumps see the program, and its
exit code and signals reach the launcher unchanged. ``KIT_RANK_SOURCE`` tells the program
(and the monitor) which launcher's variables were used.

The mpirun and srun launchers put it in front of every rank's command (:func:`wrap`);
torchrun needs no wrapper. It also works by hand:

    mpirun -np 2 python -m kit.rankexec -- python pretrain_gpt.py …
"""

from __future__ import annotations

import os
import re
import sys

from kit import rankenv

MODULE = "kit.rankexec"
USAGE = "usage: python -m kit.rankexec -- CMD [ARG...]"


def wrap(argv: list[str], *, python: str) -> list[str]:
    """``argv`` run through the wrapper with interpreter ``python``."""
    return [python, "-m", MODULE, "--", *argv]


def unwrap(argv: list[str]) -> list[str]:
    """``argv`` without a leading rank wrapper (the program's own argv)."""
    if len(argv) >= 3 and argv[1:3] == ["-m", MODULE]:
        rest = argv[3:]
        return rest[1:] if rest[:1] == ["--"] else rest
    return list(argv)


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_ENV_OPTS_WITH_VALUE = ("-u", "--unset", "-C", "--chdir", "-S", "--split-string")


def program_argv(argv: list[str]) -> list[str]:
    """The program's own argv: ``argv`` without what execs it and so never shows in the
    rank's command line: ``env [OPTIONS] [VAR=VALUE]…``, bare ``VAR=VALUE`` words, and the
    rank wrapper (any number of each, in any order)."""
    words = list(argv)
    while words:
        if os.path.basename(words[0]) == "env":
            words = words[1:]
            while words and (words[0].startswith("-") or _ASSIGNMENT.match(words[0])):
                if words[0] == "--":
                    words = words[1:]
                    break
                words = words[2:] if words[0] in _ENV_OPTS_WITH_VALUE else words[1:]
        elif _ASSIGNMENT.match(words[0]):
            words = words[1:]
        elif unwrap(words) != words:
            words = unwrap(words)
        else:
            break
    return words


def environment(environ: dict[str, str]) -> dict[str, str]:
    """A copy of ``environ`` with torchrun's contract filled from the launcher's variables."""
    env = dict(environ)
    env["KIT_RANK_SOURCE"] = rankenv.resolve(env, launcher_first=True)
    return env


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(f"kit.rankexec: no command given; {USAGE}", file=sys.stderr)
        return 2
    env = environment(dict(os.environ))
    try:
        os.execvpe(args[0], args, env)
    except OSError as e:
        print(f"kit.rankexec: cannot run {args[0]!r}: {e.strerror or e}; check the recipe's command",
              file=sys.stderr)
        return 127
    return 0  # not reached: execvpe replaced this process


if __name__ == "__main__":
    raise SystemExit(main())
