"""When is a job due? Pure functions over a cron expression, a time zone, the last run and now.

The rule (docs/scheduling.md): a job is due when at least one of its slots falls in
``(anchor, now]``, where the anchor is the start of its last finished run (or the moment the
job was first seen). However many slots were missed — a host down for three days — the job
runs **once**, and its new anchor is that run's start, so the missed slots are not replayed.

Slots are computed on the wall clock of ``schedule_tz`` (cron's own semantics) and mapped to
UTC instants:

- a wall-clock time that does not exist (spring forward, 02:30 in Europe/Berlin) runs at the
  same distance after the gap, i.e. 03:30 — the job is late, never skipped;
- a wall-clock time that happens twice (fall back) runs once, at its first occurrence, unless
  the hour field is ``*`` (the job runs every hour), in which case the repeated hour has its
  slots too, as a UTC clock would.

>>> from datetime import datetime, timezone as tz
>>> t = lambda *a: datetime(*a, tzinfo=tz.utc)
>>> next_slot("0 2 * * *", "UTC", t(2026, 11, 20, 2, 0))
datetime.datetime(2026, 11, 21, 2, 0, tzinfo=datetime.timezone.utc)
>>> due("0 2 * * *", "UTC", t(2026, 11, 20, 2, 0), t(2026, 11, 23, 9, 0)).missed
3
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

UTC = timezone.utc
# Wall-clock slots and UTC instants differ by at most the zone's DST shift (two hours covers
# every zone in tzdata); beyond that window naive order equals instant order.
_SLACK = timedelta(hours=3)
# Counting missed slots is for messages only: stop counting after this many.
_COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class Due:
    """Whether a job is due at ``now`` and why."""

    due: bool
    since: datetime | None      # the first slot after the anchor (when the job became due)
    anchor: datetime            # last run start (or first seen)
    missed: int                 # slots in (anchor, now]; >1 means a catch-up that runs once
    next: datetime | None       # the next slot after now (when the job is due next)

    def reason(self, never_ran: bool = False) -> str:
        """>>> from datetime import datetime, timezone as tz
        >>> d = due("0 * * * *", "UTC", datetime(2026, 1, 1, 1, tzinfo=tz.utc), datetime(2026, 1, 1, 4, 5, tzinfo=tz.utc))
        >>> d.reason()
        'due since 2026-01-01 02:00Z (3 slots missed, runs once), last run 2026-01-01 01:00Z'
        """
        last = f"first seen {_fmt(self.anchor)}, never run" if never_ran else f"last run {_fmt(self.anchor)}"
        if not self.due and self.next is None:
            return f"manual only (no schedule), {last}"
        if not self.due:
            return f"not due: next {_fmt(self.next)}, {last}"
        extra = f" ({self.missed} slots missed, runs once)" if self.missed > 1 else ""
        return f"due since {_fmt(self.since)}{extra}, {last}"


def _fmt(t: datetime | None) -> str:
    return "never" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _hour_wildcard(expr: str) -> bool:
    fields = expr.split()
    # 6-field expressions in croniter carry seconds last; the hour is the second field either way.
    return len(fields) >= 2 and fields[1] == "*"


def _instants(naive: datetime, zone, every_hour: bool) -> list[datetime]:
    """The UTC instants a wall-clock slot stands for (see the module docstring)."""
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    if a == b:
        return [a]
    if a > b:
        # fold=0 of a non-existent time yields the later instant: the time shifted past the gap.
        return [a]
    return [a, b] if every_hour else [a]


def _iter_slots(expr: str, tz: str, after: datetime):
    """UTC slots strictly after ``after``, in order."""
    from croniter import croniter

    zone = _zone(tz)
    every_hour = _hour_wildcard(expr)
    after = after.astimezone(UTC)
    start_naive = after.astimezone(zone).replace(tzinfo=None) - _SLACK
    it = croniter(expr, start_naive)
    pending: list[datetime] = []
    last: datetime | None = None
    while True:
        naive = it.get_next(datetime)
        insts = _instants(naive, zone, every_hour)
        # A skipped wall-clock hour maps two slots (02:30 and 03:30) to one instant: once.
        pending.extend(i for i in insts if i > after and i not in pending and i != last)
        pending.sort()
        # Later wall-clock slots map to instants at most one DST shift earlier than this one:
        # whatever pending lies before that horizon is final, in order.
        horizon = insts[0] - _SLACK
        while pending and pending[0] < horizon:
            last = pending.pop(0)
            yield last


def next_slot(expr: str, tz: str, after: datetime) -> datetime:
    """The first slot strictly after ``after`` (UTC)."""
    return next(_iter_slots(expr, tz, after))


def slots_between(expr: str, tz: str, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
    """Slots in ``(after, until]``, at most ``limit`` of them.

    >>> from datetime import datetime, timezone as tz
    >>> [s.isoformat() for s in slots_between("0 0 31 * *", "UTC", datetime(2026, 1, 1, tzinfo=tz.utc),
    ...                                         datetime(2026, 6, 1, tzinfo=tz.utc))]
    ['2026-01-31T00:00:00+00:00', '2026-03-31T00:00:00+00:00', '2026-05-31T00:00:00+00:00']
    """
    out = []
    for s in _iter_slots(expr, tz, after):
        if s > until or len(out) >= limit:
            break
        out.append(s)
    return out


def due(expr: str | None, tz: str, anchor: datetime, now: datetime) -> Due:
    """Is a job with schedule ``expr`` due at ``now``, given its anchor (last run start)?

    A job without a schedule is never due (manual only).

    >>> from datetime import datetime, timezone as tz
    >>> due("*/15 * * * *", "UTC", datetime(2026, 1, 1, 0, 0, tzinfo=tz.utc), datetime(2026, 1, 1, 0, 14, tzinfo=tz.utc)).due
    False
    """
    anchor = anchor.astimezone(UTC)
    now = now.astimezone(UTC)
    if expr is None:
        return Due(False, None, anchor, 0, None)
    missed = 0
    since = None
    nxt = None
    for s in _iter_slots(expr, tz, anchor):
        if s > now:
            nxt = s
            break
        if since is None:
            since = s
        missed += 1
        if missed >= _COUNT_LIMIT:
            nxt = next_slot(expr, tz, now)
            break
    if since is not None and nxt is None:
        nxt = next_slot(expr, tz, now)
    return Due(since is not None, since, anchor, missed, nxt)
