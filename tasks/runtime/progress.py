"""One progress display per pass of a run: source rows done of planned, records kept and dropped,
tokens per second, engine requests, elapsed time and ETA.

On a terminal it is a live rich bar on stderr. Anywhere else (a scheduled run, CI, a log file) it is a
plain line every `every_s` seconds and one at the end, through `log` (the Prefect run logger, so the
lines are in the flow run's logs in the UI).

Example:
    with PassProgress("math-programs fixed", planned=256) as progress:
        for rows in batches:
            progress.advance(len(rows), kept=3, dropped=13, tokens=2400, requests=40)
"""
from __future__ import annotations

import sys
import time
from typing import Callable


class PassProgress:
    def __init__(self, name: str, planned: int, log: Callable[[str], None] = print, every_s: float = 30.0,
                 interactive: bool | None = None):
        self.name, self.planned, self.log, self.every_s = name, planned, log, every_s
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.done = self.kept = self.dropped = self.tokens = self.requests = 0
        self._t0 = self._last_line = time.monotonic()
        self._bar = None

    def __enter__(self) -> "PassProgress":
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.name, total=self.planned, detail="")
        return self

    def advance(self, rows: int, kept: int = 0, dropped: int = 0, tokens: int = 0, requests: int | None = None) -> None:
        """`rows` more source rows finished, with their records kept / dropped and tokens; `requests`:
        the engines' request count so far (a running total)."""
        self.done += rows
        self.kept += kept
        self.dropped += dropped
        self.tokens += tokens
        if requests is not None:
            self.requests = requests
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, detail=self.detail())
        elif time.monotonic() - self._last_line >= self.every_s:
            self.log(self.line())
            self._last_line = time.monotonic()

    def detail(self) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        return (f"kept {self.kept}, dropped {self.dropped} · {self.tokens / elapsed:,.0f} tok/s · "
                f"{self.requests:,} requests")

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        eta = elapsed / self.done * (self.planned - self.done) if self.done else None
        return (f"{self.name}: {self.done}/{self.planned} rows · {self.detail()} · {elapsed:.0f} s"
                + (f", ETA {eta:.0f} s" if eta is not None else ""))

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.done:
            self.log(self.line())
