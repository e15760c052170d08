"""Schedule arithmetic for status: which scheduled runs were missed. Pure functions over the
engine's slots (pgvault.policy.schedule).

A run fired at T starts at or after T, so a backup that *started* at S covers every fire time
up to S; fires after S and more than ``grace`` before now are missed runs."""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter


def _iter(expr: str, tz: str, start: datetime) -> croniter:
    return croniter(expr, start.astimezone(ZoneInfo(tz)))


def fires(expr: str, tz: str, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
    """Scheduled times in (after, until], at most ``limit`` of them — the engine's own slots
    (pgvault.policy.schedule), so status and tick agree on daylight-saving days too.

    >>> from datetime import timezone
    >>> t = lambda h, d=25: datetime(2026, 11, d, h, tzinfo=timezone.utc)
    >>> [f.hour for f in fires("0 */6 * * *", "UTC", t(1), t(13))]
    [6, 12]
    """
    from ..policy.schedule import slots_between

    return slots_between(expr, tz, after, until, limit)


def interval(expr: str, tz: str, at: datetime) -> timedelta:
    """The gap between the two scheduled times before ``at`` (the schedule's current period).

    >>> from datetime import timezone
    >>> interval("0 2 * * *", "UTC", datetime(2026, 11, 25, 12, tzinfo=timezone.utc))
    datetime.timedelta(days=1)
    >>> interval("0 2 * * 1-5", "UTC", datetime(2026, 11, 30, 12, tzinfo=timezone.utc))  # a Monday
    datetime.timedelta(days=3)
    """
    it = _iter(expr, tz, at)
    last = it.get_prev(datetime)
    before = it.get_prev(datetime)
    return last - before


def default_grace(period: timedelta) -> timedelta:
    """Time a run may take before it counts as missed: half the period, at most one hour.

    >>> default_grace(timedelta(days=1)), default_grace(timedelta(minutes=15))
    (datetime.timedelta(seconds=3600), datetime.timedelta(seconds=450))
    """
    return min(period / 2, timedelta(hours=1))


def missed_runs(expr: str, tz: str, since: datetime, now: datetime, grace: timedelta, limit: int = 1000) -> int:
    """Scheduled runs after ``since`` that should have finished by ``now``.

    >>> from datetime import timezone
    >>> t = lambda d, h: datetime(2026, 11, d, h, tzinfo=timezone.utc)
    >>> g = timedelta(hours=1)
    >>> [missed_runs("0 2 * * *", "UTC", t(25, 2), t(d, h), g) for d, h in ((25, 12), (26, 2), (26, 4), (28, 4))]
    [0, 0, 1, 3]
    """
    return len(fires(expr, tz, since, now - grace, limit))
