"""The kit's own numeric environment variables (``KIT_POLL_S``, ``KIT_CANCEL_WAIT_S``, ...).

Each is declared once, where it is used, as a ``Seconds(name, default)``, and read when it is
used, not when a module is imported: a bad value (``KIT_CANCEL_WAIT_S=2m``) is then a
``KitError`` of the command that needs it (one line naming the variable and the fix, exit 2),
never a traceback of every command that imports the module.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from kit.errors import KitError


@dataclass(frozen=True)
class Seconds:
    """A duration in seconds from the environment variable ``name`` (``default`` when unset or empty)."""

    name: str
    default: float

    def get(self) -> float:
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise KitError(f"{raw!r} is not a number of seconds", where=f"environment variable {self.name}",
                           fix=f"set it to seconds as a plain number (e.g. {self.name}={self.default:g}) or unset it")
        return value
