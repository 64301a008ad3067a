"""A dependency-free progress bar for the command line (library code only calls the callback)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``bar(stage, done, total)`` draws ``stage [#####.....] done/total`` on a stream.

    On a terminal the line is redrawn in place; otherwise one line is written per finished stage,
    so logs stay readable.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 30, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage: str | None = None
        self._start = time.perf_counter()
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._start = stage, now
        finished = done >= total
        if self.tty:
            if not finished and now - self._last < 0.1:
                return
            self._last = now
            frac = done / total if total else 1.0
            fill = int(self.width * frac)
            bar = "#" * fill + "." * (self.width - fill)
            self.stream.write(f"\r{stage:<18} [{bar}] {done}/{total} {now - self._start:6.1f}s")
            if finished:
                self.stream.write("\n")
        elif finished:
            self.stream.write(f"{stage:<18} done {done}/{total} in {now - self._start:.1f}s\n")
        self.stream.flush()
