"""Due-ness: catch-up runs once, DST, month ends — pure, no I/O."""
from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.policy import schedule
from pgvault.policy.schedule import due, next_slot, slots_between

UTC = timezone.utc


def t(*a):
    return datetime(*a, tzinfo=UTC)


def test_doctests():
    assert doctest.testmod(schedule).failed == 0


def test_host_down_three_days_runs_once_then_resumes():
    last = t(2026, 11, 20, 2, 0, 5)            # last nightly run
    back = t(2026, 11, 23, 14, 37)             # host back after three days
    d = due("0 2 * * *", "UTC", last, back)
    assert d.due and d.missed == 3 and d.since == t(2026, 11, 21, 2)
    assert "3 slots missed, runs once" in d.reason()
    # The catch-up run's start becomes the anchor: the missed slots are not replayed.
    after = due("0 2 * * *", "UTC", back, back + timedelta(minutes=1))
    assert not after.due and after.next == t(2026, 11, 24, 2)


def test_not_due_before_the_slot_and_due_exactly_at_it():
    last = t(2026, 11, 20, 2, 0)
    assert not due("0 2 * * *", "UTC", last, t(2026, 11, 21, 1, 59, 59)).due
    assert due("0 2 * * *", "UTC", last, t(2026, 11, 21, 2, 0)).due


def test_manual_job_is_never_due():
    assert not due(None, "UTC", t(2020, 1, 1), t(2026, 1, 1)).due


def test_month_ends():
    # Day 31 only exists in some months; Feb 29 only in leap years.
    s = slots_between("0 0 31 * *", "UTC", t(2026, 1, 31), t(2026, 12, 31, 1))
    assert [x.month for x in s] == [3, 5, 7, 8, 10, 12]
    assert next_slot("0 0 29 2 *", "UTC", t(2026, 3, 1)) == t(2028, 2, 29)
    # "last day of the month" as cron users write it: days 28-31 filtered to the last by the caller
    # is not cron; the L syntax is supported by croniter.
    assert next_slot("0 3 L * *", "UTC", t(2026, 2, 1)) == t(2026, 2, 28, 3)


def test_dst_spring_forward_runs_late_not_never():
    # Europe/Berlin skips 02:00-03:00 on 2026-03-29: the 02:30 job runs at 03:30 local (01:30Z).
    s = slots_between("30 2 * * *", "Europe/Berlin", t(2026, 3, 27), t(2026, 3, 31))
    assert s == [t(2026, 3, 27, 1, 30), t(2026, 3, 28, 1, 30), t(2026, 3, 29, 1, 30), t(2026, 3, 30, 0, 30)]
    # An hourly job during the gap: no duplicate instant.
    h = slots_between("30 * * * *", "Europe/Berlin", t(2026, 3, 28, 23), t(2026, 3, 29, 3))
    assert h == sorted(set(h)) and len(h) == 4


def test_dst_fall_back_daily_runs_once_hourly_every_hour():
    # 02:30 happens twice on 2026-10-25 in Berlin: a daily job runs once (the first one).
    s = slots_between("30 2 * * *", "Europe/Berlin", t(2026, 10, 24), t(2026, 10, 27))
    assert s == [t(2026, 10, 24, 0, 30), t(2026, 10, 25, 0, 30), t(2026, 10, 26, 1, 30)]
    # An hourly job keeps an hourly rhythm in real time through the repeated hour.
    h = slots_between("0 * * * *", "Europe/Berlin", t(2026, 10, 24, 22, 30), t(2026, 10, 25, 4))
    assert h == [t(2026, 10, 24, 23) + timedelta(hours=i) for i in range(6)]


def test_schedule_tz_moves_the_slot():
    assert next_slot("0 2 * * *", "America/New_York", t(2026, 7, 1)) == t(2026, 7, 1, 6)
    assert next_slot("0 2 * * *", "America/New_York", t(2026, 12, 1)) == t(2026, 12, 1, 7)


EXPRS = ["*/15 * * * *", "0 2 * * *", "30 2 * * *", "0 * * * *", "0 3 * * 0", "0 0 1 * *", "5 4 31 * *"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
times = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(lambda d: d.replace(tzinfo=UTC))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(EXPRS), st.sampled_from(ZONES), times, st.integers(0, 60 * 24 * 9))
def test_due_properties(expr, tz, anchor, minutes):
    now = anchor + timedelta(minutes=minutes)
    d = due(expr, tz, anchor, now)
    first = next_slot(expr, tz, anchor)
    # Due exactly when a slot falls in (anchor, now]; the reason's "since" is that first slot.
    assert d.due == (first <= now)
    if d.due:
        assert d.since == first and d.missed >= 1
    # Running at now (the new anchor) leaves nothing due at now: catch-up runs once.
    assert not due(expr, tz, now, now).due
    assert d.next is None or d.next > now


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(EXPRS), st.sampled_from(ZONES), times)
def test_slots_strictly_increase(expr, tz, start):
    s = slots_between(expr, tz, start, start + timedelta(days=40), limit=200)
    assert all(a < b for a, b in zip(s, s[1:]))
    assert all(x > start for x in s)
