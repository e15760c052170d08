"""The one place pgvault reads the wall clock, so tests (and a curious operator) can ask
"what would status say at time T?" with ``PGVAULT_NOW=2026-11-27T03:00:00Z``."""
from __future__ import annotations

import os
from datetime import datetime, timezone

ENV = "PGVAULT_NOW"


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant; no offset means UTC.

    >>> parse_instant("2026-11-27T03:00:00Z").isoformat()
    '2026-11-27T03:00:00+00:00'
    >>> parse_instant("2026-11-27 04:00:00+01:00").isoformat()
    '2026-11-27T03:00:00+00:00'
    """
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def now() -> datetime:
    """The current UTC time, or $PGVAULT_NOW when set."""
    fixed = os.environ.get(ENV)
    if fixed:
        try:
            return parse_instant(fixed)
        except ValueError:
            from .errors import UsageError

            raise UsageError(f"{ENV}={fixed!r} is not an ISO 8601 time", "e.g. 2026-11-27T03:00:00Z, or unset it") from None
    return datetime.now(timezone.utc)
