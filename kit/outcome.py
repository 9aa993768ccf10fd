"""What a run ended with, and the lines the user sees about it.

An ``Outcome`` is a run's status, reason and bundle; its exit code comes from the one
exit-code table (:mod:`kit.errors`). ``print_result`` prints the run's row in the sweep
table's format, its status and the bundle's path, read back from the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

from kit import bundle as bundle_mod, table
from kit.bundle import Bundle
from kit.errors import run_exit_code
from kit.textsafe import terminal


@dataclass
class Outcome:
    status: str
    reason: str
    bundle: Bundle
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return run_exit_code(self.status)



def print_result(out: Outcome, console: Console, rowtext: str | None = None) -> None:
    """The run's table row (read back from the bundle unless given), status and path."""
    b = out.bundle
    if rowtext is None:
        rowtext = table.bundle_row(bundle_mod.read_manifest(b.path).model_dump(),
                                   bundle_mod.load_json(b.path, "metrics.json"),
                                   bundle_mod.load_json(b.path, "provenance.json"))
    console.print(table.HEADER, highlight=False, markup=False, soft_wrap=True)
    console.print(rowtext, highlight=False, markup=False, soft_wrap=True)
    colour = {"ok": "green", "failed": "red", "stalled": "yellow", "interrupted": "yellow"}.get(out.status, "white")
    reason = f": {escape(terminal(out.reason))}" if out.reason else ""
    console.print(f"[{colour}]{out.status}[/]{reason}", highlight=False)
    console.print(f"bundle: {terminal(str(b.path))}", highlight=False, markup=False, soft_wrap=True)
