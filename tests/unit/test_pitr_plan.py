"""The PITR planner (pure): base choice, WAL coverage across timelines, refusals with the window."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from pgvault.errors import RestoreRefused, UsageError
from pgvault.restore import plan as P

SEG = P.SEG
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def base(bid, site, start_seg, minutes, tli=1, xmin=None):
    return P.Base(bid, site, "barman", tli, start_seg * SEG + 0x28, start_seg * SEG + 0x100,
                  T0 + timedelta(minutes=minutes), T0 + timedelta(minutes=minutes, seconds=5), xmin)


def archive(site, segs, tli=1, minute_per_seg=1.0, histories=None):
    a = P.Archive(site, histories=histories or {})
    for s in segs:
        a.segments.setdefault(tli, set()).add(s)
        a.stored_at[(tli, s)] = T0 + timedelta(minutes=s * minute_per_seg)
    return a


def test_picks_newest_base_that_ended_before_the_target():
    bases = [base("b1", "a", 2, 2), base("b2", "a", 6, 6)]
    arch = archive("a", range(2, 12))
    p = P.plan(P.Target("time", time=T0 + timedelta(minutes=7)), bases, [arch])
    assert p.base.backup_id == "b2" and p.wal_first == "000000010000000000000006"
    p = P.plan(P.Target("time", time=T0 + timedelta(minutes=5)), bases, [arch])
    assert p.base.backup_id == "b1"


def test_gap_after_newest_base_falls_back_to_none_and_says_why():
    bases = [base("b1", "a", 2, 2)]
    arch = archive("a", [2, 3, 5, 6])          # 4 is missing
    with pytest.raises(RestoreRefused) as exc:
        P.plan(P.Target("time", time=T0 + timedelta(minutes=5, seconds=30)), bases, [arch])
    assert "beyond the end of the archived WAL" in exc.value.message
    assert "recoverable window: from" in exc.value.hint and "000000010000000000000003" not in exc.value.hint
    # Up to the gap it is fine.
    p = P.plan(P.Target("time", time=T0 + timedelta(minutes=3)), bases, [arch])
    assert p.wal_last == "000000010000000000000003"


def test_other_sites_fill_a_gap_at_the_base_site():
    bases = [base("b1", "a", 2, 2)]
    p = P.plan(P.Target("lsn", lsn=6 * SEG), bases, [archive("a", [2, 3, 5, 6]), archive("eu", [4])])
    assert p.wal_site == "any site" and any("several sites" in n for n in p.notes)


def test_target_before_oldest_base_is_refused():
    with pytest.raises(RestoreRefused) as exc:
        P.plan(P.Target("time", time=T0), [base("b1", "a", 2, 2)], [archive("a", range(2, 5))])
    assert "before the oldest base backup" in exc.value.message


def test_from_site_wins_over_age():
    bases = [base("b1", "a", 2, 2), base("b1", "eu", 3, 3)]
    archs = [archive("a", range(2, 9)), archive("eu", range(2, 9))]
    assert P.plan(P.Target("latest"), bases, archs).base.site == "eu"
    assert P.plan(P.Target("latest"), bases, archs, from_site="a").base.site == "a"


def test_timeline_switch_reads_parent_up_to_the_switch_segment():
    hist = {2: [(1, 5 * SEG + 0x100)]}
    a = archive("a", [2, 3, 4, 5], histories=hist)
    for s in (5, 6, 7):
        a.segments.setdefault(2, set()).add(s)
        a.stored_at[(2, s)] = T0 + timedelta(minutes=10 + s)
    p = P.plan(P.Target("time", time=T0 + timedelta(minutes=16)), [base("b1", "a", 2, 2)], [a])
    assert p.timeline == 2 and p.wal_last == "000000020000000000000007" and p.segments == 6
    # Missing the parent's segment just before the switch breaks the chain.
    a.segments[1].discard(4)
    with pytest.raises(RestoreRefused):
        P.plan(P.Target("time", time=T0 + timedelta(minutes=16)), [base("b1", "a", 2, 2)], [a])


def test_xid_target_uses_start_xmin():
    bases = [base("b1", "a", 2, 2, xmin=700), base("b2", "a", 6, 6, xmin=900)]
    arch = archive("a", range(2, 10))
    assert P.plan(P.Target("xid", xid=800), bases, [arch]).base.backup_id == "b1"
    with pytest.raises(RestoreRefused):
        P.plan(P.Target("xid", xid=5), bases, [arch])


def test_exactly_one_target():
    with pytest.raises(UsageError):
        P.make_target(to_time="2026-01-01", latest=True)
    with pytest.raises(UsageError):
        P.make_target()
    with pytest.raises(UsageError):
        P.make_target(to_lsn="nonsense")
    assert P.make_target(to_time="2026-11-25 14:20:00+01").time == datetime(2026, 11, 25, 13, 20, tzinfo=timezone.utc)


@given(st.integers(0, 2**40), )
def test_lsn_round_trip(lsn):
    assert P.parse_lsn(P.format_lsn(lsn)) == lsn


@settings(max_examples=200, deadline=None)
@given(present=st.sets(st.integers(2, 30), max_size=29), target_seg=st.integers(2, 30))
def test_plan_never_promises_wal_it_does_not_have(present, target_seg):
    """Whatever the archive holds, a plan's segments are contiguous and all archived."""
    arch = archive("a", present)
    target = P.Target("lsn", lsn=target_seg * SEG)
    feasible = target_seg >= 3 and all(s in present for s in range(2, target_seg))
    try:
        p = P.plan(target, [base("b1", "a", 2, 2)], [arch])
    except RestoreRefused:
        assert not feasible
        return
    assert feasible
    for s in range(2, P.parse_segment_no(p.wal_last) + 1):
        assert s in present
    assert target.lsn <= p.reach_lsn
