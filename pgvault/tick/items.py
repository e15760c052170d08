"""What the tick schedules: an item (a backup job or a drill) and the outcome of one run of it.

Contract: ``Scheduled.run(now) -> Outcome`` never raises for an expected failure (it returns
``Outcome("failed", ...)``); anything it raises is recorded as a failure by the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable


@dataclass
class Outcome:
    outcome: str = "success"           # success | partial | failed
    backup_id: str | None = None
    message: str = ""
    sites: list[str] = field(default_factory=list)


@dataclass
class Scheduled:
    """Something tick runs on a schedule."""

    name: str
    schedule: str | None
    tz: str
    run: Callable[[datetime], Outcome]
    sites: list[str] = field(default_factory=list)
    kind: str = "backup"
    timeout: float | None = None     # seconds; the run is aborted (and recorded failed) after this
