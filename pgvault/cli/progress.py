"""Progress of long operations: a live line on a TTY, a plain line every interval otherwise,
and a JSON line every interval when the root option ``--log-format json`` is set (for log
shippers). Bytes, rate, and — when the caller knows the total — percent and ETA.

Callers report ``progress(label, n)`` with ``n`` the bytes done so far for that label (one
database, one artifact); the overall figure is the sum over labels."""
from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone

from .output import human_size


def eta_seconds(done: int, total: int | None, rate: float) -> float | None:
    """Seconds left at the current rate; None when the total or the rate is unknown.

    >>> eta_seconds(25, 100, 5.0), eta_seconds(25, None, 5.0), eta_seconds(0, 100, 0.0)
    (15.0, None, None)
    """
    if not total or rate <= 0:
        return None
    return max(total - done, 0) / rate


def json_logging() -> bool:
    """Whether the CLI root was asked for JSON log lines (--log-format json)."""
    from . import JsonFormatter

    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger("pgvault").handlers)


class Progress:
    def __init__(self, what: str, total: int | None = None, interval: float = 10.0, stream=None,
                 as_json: bool | None = None):
        self.what = what
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.json = (not self.tty) and (json_logging() if as_json is None else as_json)
        self.interval = 0.2 if self.tty else interval
        self.start = time.monotonic()
        # Plain output: the first line after one interval, so short operations print nothing.
        self.last = 0.0 if self.tty else self.start
        self.label = ""
        self.by_label: dict[str, int] = {}
        self.printed = False

    @property
    def done(self) -> int:
        return sum(self.by_label.values())

    def set_total(self, total: int | None) -> None:
        """The expected bytes, once known (enables percent and ETA)."""
        self.total = total

    def __call__(self, label: str, n: int) -> None:
        self.label = label
        self.by_label[label] = n
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self._emit(now)

    def figures(self, now: float) -> dict:
        elapsed = max(now - self.start, 1e-6)
        done = self.done
        rate = done / elapsed
        eta = eta_seconds(done, self.total, rate)
        return {"what": self.what, "label": self.label, "bytes": done, "total": self.total,
                "rate": round(rate, 1), "elapsed_seconds": round(elapsed, 1),
                "percent": round(100 * done / self.total, 1) if self.total else None,
                "eta_seconds": None if eta is None else round(eta, 1)}

    def text(self, f: dict) -> str:
        from ..policy.durations import format_duration

        text = f"{self.what} {f['label']}: {human_size(f['bytes'])} at {human_size(f['rate'])}/s"
        if f["total"]:
            text += f" of {human_size(f['total'])}, {f['percent']:.0f}%"
            if f["eta_seconds"] is not None:
                text += f", ETA {format_duration(round(f['eta_seconds']))}"
        return text

    def _emit(self, now: float, final: bool = False) -> None:
        self.printed = True
        f = self.figures(now)
        if self.json:
            doc = {"time": datetime.now(timezone.utc).isoformat(), "level": "info", "logger": "pgvault.progress",
                   "event": "progress", "final": final, "message": self.text(f), **f}
            self.stream.write(json.dumps(doc) + "\n")
        elif self.tty:
            self.stream.write("\r\033[K" + self.text(f) + ("\n" if final else ""))
        else:
            self.stream.write(self.text(f) + "\n")
        self.stream.flush()

    def close(self) -> None:
        # A closing line only after progress lines: short operations stay silent.
        if self.printed:
            self._emit(time.monotonic(), final=True)
