"""Progress of long operations: a live line on a TTY, a plain line every interval otherwise."""
from __future__ import annotations

import sys
import time

from .output import human_size


class Progress:
    def __init__(self, what: str, total: int | None = None, interval: float = 10.0, stream=None):
        self.what = what
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.start = time.monotonic()
        # Plain output: the first line after one interval, so short operations print nothing.
        self.last = 0.0 if self.tty else self.start
        self.label = ""
        self.done = 0

    def __call__(self, label: str, n: int) -> None:
        self.label, self.done = label, n
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self._emit(now)

    def _emit(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        text = f"{self.what} {self.label}: {human_size(self.done)} at {human_size(rate)}/s"
        if self.total and rate > 0:
            eta = max(self.total - self.done, 0) / rate
            text += f", {100 * self.done / self.total:.0f}%, ETA {eta:.0f}s"
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self._emit(time.monotonic(), final=True)
