"""Is that kit process still there? One answer, for every place that asks.

A process is named by its host, pid and start time (``identity()``), so that a reused pid
is never taken for the process that is gone. ``gone_here`` answers on the host that named
it: True when no process with that pid *and* start time exists, False when it does, None
when it cannot be known from here (another host, or no pid recorded); the caller then uses
its own rule for other hosts (a claim file's age, a day).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psutil


def identity(pid: int | None = None) -> dict[str, Any]:
    """This host, ``pid`` (default: this process) and that process's start time."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": psutil.Process(pid).create_time()}


def gone_here(ident: dict[str, Any]) -> bool | None:
    """Whether the process ``ident`` names is gone (see the module docstring)."""
    if ident.get("host") != socket.gethostname() or not ident.get("pid"):
        return None
    try:
        p = psutil.Process(int(ident["pid"]))
        started = ident.get("started")
        return started is not None and abs(p.create_time() - float(started)) > 0.01
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, TypeError, ValueError):
        return False  # e.g. another user's process: alive for all we know
