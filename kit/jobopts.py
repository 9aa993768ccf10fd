"""Strict formats for the job options that reach a job script: ``--time``, ``--queue``,
``--account`` and ``--llio``.

Each value is written verbatim into a ``#SBATCH`` / ``#PJM`` line, so a newline, a control
character or a shell metacharacter in it would inject lines or commands into the script.
These checks run when :class:`kit.plan.JobOptions` is built (from the command line, a sweep
file or a bundle's ``plan.json``), before any script is written. A value that does not match
is refused with a :class:`~kit.errors.KitError` (exit 2) naming the option and the accepted
format; nothing is escaped or repaired.
"""

from __future__ import annotations

import re

from kit.errors import KitError

#: ``[D-]H:MM:SS``, ``MM:SS``, ``D-H`` and ``D-H:MM`` (Slurm's forms; PJM's elapse takes the
#: colon forms). A bare number is refused: Slurm reads it as minutes, PJM as seconds.
_TIME = re.compile(r"^(?:(?P<days>\d{1,3})-(?P<dh>\d{1,2})(?::(?P<dm>\d{2})(?::(?P<ds>\d{2}))?)?"
                   r"|(?P<h>\d{1,4}):(?P<m>\d{2}):(?P<s>\d{2})"
                   r"|(?P<mm>\d{1,4}):(?P<ss>\d{2}))$", re.ASCII)
TIME_FORMAT = "HH:MM:SS, MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (digits only; minutes and seconds below 60)"

#: Slurm partition/account names and PJM rscgrp/group names as sites write them
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", re.ASCII)
IDENT_FORMAT = "letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)"

#: PJM's ``--llio`` syntax: ``key[=value][,key[=value]]...`` (e.g. ``localtmp-size=50Gi``, ``perf``)
_LLIO_ITEM = r"[a-z][a-z0-9-]{0,39}(?:=[A-Za-z0-9._/+-]{1,200})?"
_LLIO = re.compile(rf"^{_LLIO_ITEM}(?:,{_LLIO_ITEM}){{0,15}}$", re.ASCII)
LLIO_FORMAT = "key=value[,key=value] with keys in a-z, 0-9, '-' and values in letters, digits, '._/+-'"


def _refuse(option: str, value: str, accepted: str) -> KitError:
    return KitError(f"{value!r} is not an accepted value", where=option, fix=f"write {accepted}")


def _match(pattern: re.Pattern[str], value: str) -> re.Match[str] | None:
    # fullmatch, not match: '$' would accept a trailing newline
    return pattern.fullmatch(value) if isinstance(value, str) else None


def check_time(value: str, option: str = "--time") -> str:
    """``value`` if it is a job time limit in one of :data:`TIME_FORMAT`'s forms."""
    m = _match(_TIME, value)
    if m is None or any(int(m[g]) >= 60 for g in ("dm", "ds", "m", "s", "ss") if m[g] is not None) \
            or (m["dh"] is not None and int(m["dh"]) >= 24):
        raise _refuse(option, value, f"the time limit as {TIME_FORMAT}")
    return value


def check_identifier(value: str | None, option: str) -> str | None:
    """``value`` (or None) if it is a conservative scheduler name (:data:`IDENT_FORMAT`)."""
    if value is not None and _match(_IDENT, value) is None:
        raise _refuse(option, value, IDENT_FORMAT)
    return value


def check_llio(values: list[str], option: str = "--llio") -> list[str]:
    """``values`` if each is one PJM ``--llio`` argument (:data:`LLIO_FORMAT`)."""
    for v in values:
        if _match(_LLIO, v) is None:
            raise _refuse(option, v, LLIO_FORMAT)
    return values
