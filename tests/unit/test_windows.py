"""Recoverability windows (pure) on generated listings: intervals, holes and their causes, forks,
the --at answers, and the summary a refused restore plan prints."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pgvault.restore import plan as P
from pgvault.restore import windows as W

SEG = P.SEG
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def base(bid, start_seg, tli=1, site="a", method="barman"):
    """A base taken in segment ``start_seg``, consistent in the same segment; one minute per segment."""
    return P.Base(bid, site, method, tli, start_seg * SEG + 0x28, start_seg * SEG + 0x100,
                  T0 + timedelta(minutes=start_seg), T0 + timedelta(minutes=start_seg, seconds=5))


def archive(segs, tli=1, histories=None, site="a", arch=None):
    a = arch or P.Archive(site, histories=histories or {})
    for s in segs:
        a.segments.setdefault(tli, set()).add(s)
        a.stored_at[(tli, s)] = T0 + timedelta(minutes=s + 1)     # stored when the segment is full
    return a


def test_continuous_archive_is_one_interval_from_the_oldest_base():
    w = W.compute("a", [base("b1", 2), base("b2", 6)], archive(range(2, 12)))
    (iv,) = w.intervals()
    assert iv.base.backup_id == "b1" and [b.backup_id for b in iv.bases] == ["b1", "b2"]
    assert iv.start_lsn == 2 * SEG + 0x100 and iv.end_lsn == 12 * SEG
    assert iv.start_time == T0 + timedelta(minutes=2, seconds=5) and iv.end_time == T0 + timedelta(minutes=12)
    assert iv.end_time_kind == "archived" and w.holes == [] and w.unusable == []


def test_a_missing_segment_is_a_hole_exactly_there_and_the_next_base_restarts():
    w = W.compute("a", [base("b1", 2), base("b2", 8)], archive([2, 3, 4, 6, 7, 8, 9, 10]))
    a, b = w.intervals()
    assert (a.base.backup_id, a.end_lsn) == ("b1", 5 * SEG)
    assert (b.base.backup_id, b.start_lsn) == ("b2", 8 * SEG + 0x100)
    (h,) = w.holes
    assert h.cause == "missing-wal" and h.missing == [("000000010000000000000005", "000000010000000000000005")]
    assert (h.start_lsn, h.end_lsn) == (5 * SEG, 8 * SEG + 0x100)
    assert h.start_time == a.end_time and h.end_time == b.start_time


def test_wal_after_a_hole_with_no_base_after_it_is_a_trailing_hole():
    w = W.compute("a", [base("b1", 2)], archive([2, 3, 5, 6]))
    (iv,) = w.intervals()
    (h,) = w.holes
    assert iv.end_lsn == 4 * SEG and (h.start_lsn, h.end_lsn) == (4 * SEG, 7 * SEG)
    assert "no usable base after it" in h.detail and "000000010000000000000004" in h.detail


def test_a_base_whose_wal_was_expired_is_unusable_and_the_window_starts_at_the_next():
    w = W.compute("a", [base("old", 1), base("new", 5)], archive(range(4, 10)))
    (iv,) = w.intervals()
    assert iv.base.backup_id == "new"
    (u,) = w.unusable
    assert u.base.backup_id == "old" and "000000010000000000000001 is not archived" in u.reason


def test_a_base_whose_wal_is_gone_inside_the_window_is_named_in_the_hole():
    # b2's start segment 6 is gone too: the hole runs from the end of b1's WAL to b3's consistency.
    w = W.compute("a", [base("b1", 2), base("b2", 6), base("b3", 9)], archive([2, 3, 4, 7, 8, 9, 10]))
    (h,) = w.holes
    assert "b2" in h.detail and h.end_lsn == 9 * SEG + 0x100
    assert [i.base.backup_id for i in w.intervals()] == ["b1", "b3"]


def test_no_base_means_no_interval():
    w = W.compute("a", [], archive(range(1, 5)))
    assert w.intervals() == [] and w.unbroken() is None


def test_commit_time_replaces_the_stored_time_at_the_end():
    end = T0 + timedelta(minutes=9, seconds=30)
    w = W.compute("a", [base("b1", 2)], archive(range(2, 10)), {(1, 9): end})
    (iv,) = w.intervals()
    assert iv.end_time == end and iv.end_time_kind == "commit"


def test_two_timelines_after_a_promotion():
    # Timeline 2 branches at 0/6000100: segments 2..5 on 1, then 6.. on 2 (old primary kept 6, 7 on 1).
    hist = {2: [(1, 6 * SEG + 0x100)]}
    a = archive(range(2, 8), tli=1, histories=hist)
    archive(range(6, 12), tli=2, arch=a)
    w = W.compute("a", [base("b1", 2), base("b2", 9, tli=2)], a)
    t1, t2 = w.timelines
    assert t1.forks == [(2, 6 * SEG + 0x100)]
    assert [(i.start_lsn, i.end_lsn, i.start_kind) for i in t1.intervals] == \
        [(2 * SEG + 0x100, 6 * SEG + 0x100, "base"), (6 * SEG + 0x100, 8 * SEG, "fork")]
    (iv2,) = t2.intervals
    assert iv2.start_kind == "switch" and iv2.start_lsn == 6 * SEG + 0x100 and iv2.end_lsn == 12 * SEG
    assert [b.backup_id for b in iv2.bases] == ["b1", "b2"] and w.holes == []
    u = w.unbroken()
    assert u.timeline == 2 and u.start_lsn == 2 * SEG + 0x100 and u.base.backup_id == "b1"


def test_at_inside_edges_and_outside():
    bases = [base("b1", 2), base("b2", 6)]
    a = archive(range(2, 12))
    w = W.compute("a", bases, a)
    iv = w.intervals()[0]
    inside = W.at_time(w, a, T0 + timedelta(minutes=7, seconds=30))
    assert inside.restorable and inside.base.backup_id == "b2" and inside.segments == 2 and inside.bytes == 2 * SEG
    assert W.at_time(w, a, iv.start_time).restorable and W.at_time(w, a, iv.start_time).base.backup_id == "b1"
    assert W.at_time(w, a, iv.end_time).restorable
    before = W.at_time(w, a, iv.start_time - timedelta(microseconds=1))
    after = W.at_time(w, a, iv.end_time + timedelta(microseconds=1))
    assert not before.restorable and "before the window" in before.reason
    assert not after.restorable and "after the window" in after.reason


def test_at_in_a_hole_says_why():
    a = archive([2, 3, 4, 6, 7, 8, 9, 10])
    w = W.compute("a", [base("b1", 2), base("b2", 8)], a)
    ans = W.at_time(w, a, T0 + timedelta(minutes=6, seconds=30))
    assert not ans.restorable and "000000010000000000000005" in ans.reason


def test_summary_is_what_a_refused_plan_prints():
    a = archive([2, 3, 5, 6])
    text = W.summary(W.compute_all([base("b1", 2)], [a]))
    assert text.startswith("recoverable window: from ") and "1 hole(s)" in text


def test_generated_big_listing_10000_segments_100_backups():
    a = archive(list(range(0, 5000)) + list(range(5001, 10001)))
    bases = [base(f"b{i:03d}", i * 100 + 1) for i in range(100)]
    w = W.compute("a", bases, a)
    assert len(w.intervals()) == 2 and len(w.holes) == 1
    assert w.holes[0].missing == [(P.seg_name(1, 5000), P.seg_name(1, 5000))]
    assert w.intervals()[1].base.backup_id == "b050"


def test_report_draws_one_bar_per_interval_and_one_red_mark_per_hole_in_time_order():
    import re

    from pgvault.status.report import render

    w = W.compute("a", [base("b1", 2), base("b2", 8)], archive([2, 3, 4, 6, 7, 8, 9, 10]))
    doc = {"cluster": "main", "state": "OK", "summary": "PGVAULT OK", "collected_at": (T0 + timedelta(minutes=20)).isoformat(),
           "objectives": {"window_seconds": 3600}, "jobs": [], "infrastructure": [], "objective_checks": [],
           "drills": [{"name": "d", "site": "a", "state": "CRITICAL", "outcome": "failed",
                       "finished_at": (T0 + timedelta(minutes=9)).isoformat()}],
           "facts": {"windows": {"a": w.as_dict()}}}
    page = render(doc)
    xs = lambda cls: [float(x) for x in re.findall(rf'class="mark {cls}"[^>]*? x="([0-9.]+)"', page)]  # noqa: E731
    bars, holes = xs("interval"), xs("hole")
    assert len(bars) == 2 and len(holes) == 1 and bars[0] < holes[0] < bars[1]
    assert page.count('class="mark base"') == 2 and page.count('class="mark drill fail"') == 1
    assert 'class="promise"' in page and 'class="now"' in page and "http" not in page


def test_status_window_item_is_critical_when_the_unbroken_window_is_shorter_than_the_promise():
    from types import SimpleNamespace

    from pgvault.status.evaluate import window_items

    w = W.compute("a", [base("b1", 2), base("b2", 8)], archive([2, 3, 4, 6, 7, 8, 9, 10])).as_dict()
    facts = {"windows": {"a": w, "b": {"site": "b", "error": "unreachable"}}}
    pol = lambda d: SimpleNamespace(objectives=SimpleNamespace(window=d))  # noqa: E731
    items = {i["site"]: i for i in window_items(pol(timedelta(minutes=5)), facts, T0)}
    # The newest interval runs from b2 (12:08:05) to 12:11: under 5 minutes.
    assert items["a"]["state"] == "CRITICAL" and items["a"]["holes"] == 1 and items["a"]["current_seconds"] == 175
    assert items["b"]["state"] == "UNKNOWN"
    assert window_items(pol(timedelta(minutes=2)), facts, T0)[0]["state"] == "OK"
    assert window_items(pol(None), facts, T0)[0]["state"] == "OK"      # no promise: shown, not judged


def test_drills_are_placed_on_the_interval_holding_the_point_they_restored():
    w = W.compute("a", [base("b1", 2), base("b2", 8)], archive([2, 3, 4, 6, 7, 8, 9, 10]))
    first, second = w.intervals()
    iso = lambda t: t.isoformat()                                       # noqa: E731
    docs = [{"drill": "pitr", "drill_id": "pitr-1", "outcome": "passed",
             "replayed_until": iso(first.start_time + timedelta(seconds=30))},
            {"drill": "pitr", "drill_id": "pitr-2", "outcome": "failed", "target_time": iso(second.end_time)},
            {"drill": "base", "drill_id": "base-1", "outcome": "passed", "backup_id": "b2"},
            {"drill": "hole", "drill_id": "hole-1", "outcome": "passed",   # its point is in the hole today
             "replayed_until": iso(first.end_time + timedelta(seconds=30))},
            {"drill": "nothing", "drill_id": "n-1", "outcome": "passed"}]
    proofs = [p for p in (W.proof(d, datetime.fromisoformat) for d in docs) if p]
    assert [p.drill_id for p in proofs] == ["pitr-1", "pitr-2", "base-1", "hole-1"]      # n-1 names no point
    W.relate_drills(w, proofs)
    assert [(d.drill_id, d.passed, d.at_kind) for d in first.drills] == [("pitr-1", True, "replayed")]
    assert [(d.drill_id, d.at_kind) for d in second.drills] == [("base-1", "base"), ("pitr-2", "target")]
    assert second.drills[0].at == second.bases[0].stop_time
    assert [d.drill_id for d in w.unplaced_drills] == ["hole-1"]
    doc = w.as_dict()
    assert doc["timelines"][0]["intervals"][1]["drills"][1] == {
        "drill": "pitr", "id": "pitr-2", "outcome": "failed", "at": iso(second.end_time), "at_kind": "target",
        "backup_id": None}
    assert doc["unplaced_drills"][0]["id"] == "hole-1"
    # --at answers carry the drills that proved the interval holding the point.
    ans = W.at_time(w, archive([2, 3, 4, 6, 7, 8, 9, 10]), second.end_time)
    assert ans.restorable and [d["id"] for d in ans.as_dict()["drills"]] == ["base-1", "pitr-2"]


def test_newest_follows_the_highest_timeline_with_a_history_not_the_latest_end_or_an_orphan():
    # After a switchover the old primary's last segment of timeline 1 ends later than timeline 2
    # has got to; and a demoted node's timeline 3 of a retired branch has segments, no history.
    hist = {2: [(1, 6 * SEG + 0x100)]}
    a = archive(range(2, 8), tli=1, histories=hist)
    archive([6], tli=2, arch=a)
    archive([7, 8], tli=3, arch=a)
    for s in range(2, 8):
        a.stored_at[(1, s)] = T0 + timedelta(minutes=s + 30)   # timeline 1's copies stored late
    w = W.compute("a", [base("b1", 2)], a)
    n = w.newest()
    assert n.timeline == 2 and n.end_lsn == 7 * SEG
    assert w.unbroken().timeline == 2
