"""The time pgvault believes it is: the wall clock, or a fixed time injected with $PGVAULT_NOW
(tests run tick across a simulated week with it). Tiny on purpose: tick's idle path uses it."""
from __future__ import annotations

import os
from datetime import datetime, timezone

NOW_ENV = "PGVAULT_NOW"


class Clock:
    def __init__(self, fixed: datetime | None = None):
        self.fixed = fixed

    @classmethod
    def from_env(cls) -> "Clock":
        text = os.environ.get(NOW_ENV)
        return cls(parse_now(text) if text else None)

    def now(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(timezone.utc)


def parse_now(text: str) -> datetime:
    """An ISO time; without an offset it means UTC.

    >>> parse_now("2026-11-20T02:00")
    datetime.datetime(2026, 11, 20, 2, 0, tzinfo=datetime.timezone.utc)
    """
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        from .errors import UsageError

        raise UsageError(f"{NOW_ENV}={text!r} is not an ISO time", "e.g. 2026-11-20T02:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
