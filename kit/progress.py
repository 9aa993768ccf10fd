"""Live progress of a run: iteration, sec/it, loss and ETA.

On a terminal it is a rich progress bar; elsewhere (CI logs, pipes) one plain line per
logged iteration, so a log file shows the same facts.
"""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kit.logparse import IterationRecord


class ProgressView:
    def __init__(self, total: int, warmup: int, console: Console, label: str):
        self.total, self.warmup, self.console, self.label = total, warmup, console, label
        self.times: list[float] = []
        self.live = console.is_terminal
        self._progress = None
        self._task = None

    def __enter__(self) -> "ProgressView":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console, transient=False,
                refresh_per_second=2)  # elapsed time ticks in seconds; fewer redraws, less CPU
            self._progress.__enter__()
            self._task = self._progress.add_task(escape(self.label), total=self.total, stats="starting ranks…")
        else:
            self.console.print(f"{self.label}: starting ranks…", markup=False, highlight=False)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, stats=escape(text))
        else:
            self.console.print(f"{self.label}: {text}", markup=False, highlight=False)

    def update(self, rec: IterationRecord) -> None:
        if rec.elapsed_s is not None and rec.iteration > self.warmup:
            self.times.append(rec.elapsed_s)
        spi = statistics.median(self.times) if self.times else rec.elapsed_s
        left = max(0, rec.total - rec.iteration)
        eta = f"{left * spi:.0f}s" if spi is not None else "?"
        loss = rec.fields.get("loss")
        spi_s = f"{spi:.3f} s/it" if spi is not None else "? s/it"
        stats = f"{spi_s} | loss {loss:.4f} | ETA {eta}" if loss is not None else f"{spi_s} | ETA {eta}"
        if self._progress is not None:
            self._progress.update(self._task, completed=rec.iteration, total=rec.total, stats=stats)
        else:
            self.console.print(f"iteration {rec.iteration}/{rec.total} | {stats}", highlight=False)
