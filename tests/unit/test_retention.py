"""Retention over generated histories: the invariants of docs/retention.md, proven by hypothesis."""
from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.policy import retention
from pgvault.policy.retention import Backup, Rule, decide, wal_cutoff, wal_position, wal_to_expire

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_doctests():
    assert doctest.testmod(retention).failed == 0


def seg(n: int, tl: int = 1) -> str:
    return f"{tl:08X}{n >> 8:08X}{n & 0xFF:08X}"


@st.composite
def histories(draw):
    """A site's history: backups of two jobs at random times, some failed, some pinned, some
    incremental (parent = an earlier backup of the same job), PITR bases with rising start WAL."""
    n = draw(st.integers(0, 30))
    offsets = sorted(draw(st.lists(st.integers(0, 60 * 24 * 400), min_size=n, max_size=n, unique=True)))
    out = []
    for i, off in enumerate(offsets):
        job = draw(st.sampled_from(["nightly", "base"]))
        good = draw(st.booleans()) or draw(st.booleans())
        earlier = [b for b in out if b.job == job]
        parent = draw(st.sampled_from([None] + [b.backup_id for b in earlier[-3:]])) if earlier else None
        out.append(Backup(f"b{i:03d}", job, T0 + timedelta(minutes=off), good=good, parent=parent,
                          start_wal=seg(10 + i * 3) if job == "base" else None,
                          pinned=draw(st.integers(0, 9)) == 0, status="complete" if good else "failed"))
    return out


rules = st.builds(Rule, count=st.none() | st.integers(0, 5), hourly=st.none() | st.integers(0, 5),
                  daily=st.none() | st.integers(0, 7), weekly=st.none() | st.integers(0, 4),
                  monthly=st.none() | st.integers(0, 3), yearly=st.none() | st.integers(0, 2),
                  max_age=st.none() | st.integers(1, 200).map(lambda d: timedelta(days=d)),
                  min_keep=st.integers(1, 3))


@settings(max_examples=200, deadline=None)
@given(histories(), rules, rules, st.integers(0, 500))
def test_invariants(backups, r1, r2, days_after):
    now = (max((b.time for b in backups), default=T0)) + timedelta(days=days_after)
    ds = decide(backups, {"nightly": r1, "base": r2}, now)
    by = {d.backup_id: d for d in ds}
    kept = {d.backup_id for d in ds if d.keep}
    assert set(by) == {b.backup_id for b in backups}
    assert all(d.reasons for d in ds), "every decision says why"
    good = [b for b in backups if b.good]
    # 1. The newest verified backup at the site is never deleted; nor each job's newest good one.
    if good:
        assert max(good, key=lambda b: b.time).backup_id in kept
    for job in ("nightly", "base"):
        jg = [b for b in good if b.job == job]
        if jg:
            assert max(jg, key=lambda b: b.time).backup_id in kept
    # 2. A backup a kept backup depends on is kept (whole chains).
    ids = {b.backup_id: b for b in backups}
    for b in backups:
        if b.backup_id in kept and b.parent in ids:
            assert b.parent in kept and f"needed by {b.backup_id}" in by[b.parent].reasons
    # 3. Pins are kept.
    assert all(b.backup_id in kept for b in backups if b.pinned)
    # 4. A run of failed backups never pushes out good ones: adding failures changes nothing
    #    about the good backups' fate.
    last = max((b.time for b in backups), default=T0)
    failures = [Backup(f"f{i}", "nightly", last + timedelta(hours=i + 1), good=False, status="failed")
                for i in range(5)]
    ds2 = decide(backups + failures, {"nightly": r1, "base": r2}, now)
    kept2 = {d.backup_id for d in ds2 if d.keep}
    assert kept2 & set(ids) == kept
    # The newest first order is the deletion order (children before parents).
    order = [d.backup_id for d in ds]
    assert order == [b.backup_id for b in sorted(backups, key=lambda b: (b.time, b.backup_id), reverse=True)]


@settings(max_examples=150, deadline=None)
@given(histories(), rules, st.integers(0, 80), st.integers(1, 2))
def test_wal_kept_for_every_kept_base(backups, r, nsegs, tl):
    ds = decide(backups, {"nightly": Rule(count=1), "base": r}, max((b.time for b in backups), default=T0))
    kept = {d.backup_id for d in ds if d.keep}
    names = [seg(i, tl) + ".gz" for i in range(nsegs)] + ["00000002.history"]
    cut = wal_cutoff(backups, ds)
    gone = set(wal_to_expire(names, cut))
    bases = [b for b in backups if b.start_wal and b.backup_id in kept]
    if not bases:
        assert not gone, "WAL is expired only when a PITR base is kept"
    for b in bases:
        # The WAL every kept base needs (its start segment onwards) is kept.
        assert not any(wal_position(n) >= wal_position(b.start_wal) for n in gone)
    # And WAL older than the oldest kept base is expired.
    if bases:
        oldest = min(wal_position(b.start_wal) for b in bases)
        assert gone == {n for n in names if wal_position(n) is not None and wal_position(n) < oldest}
    assert "00000002.history" not in gone


def test_reasons_read_like_the_docs():
    day = lambda d, h=2: datetime(2026, 11, d, h, tzinfo=UTC)  # noqa: E731
    bs = [Backup(f"202611{d:02d}T020000Z", "nightly", day(d)) for d in range(10, 21)]
    bs.append(Backup("20261120T030000Z", "nightly", day(20, 3), good=False, status="failed"))
    bs.append(Backup("20261112T030000Z", "nightly", day(12, 3), pinned=True))
    ds = {d.backup_id: d for d in decide(bs, {"nightly": Rule(daily=3)}, day(21))}
    assert ds["20261120T020000Z"].reasons == ["daily 2026-11-20"]
    assert ds["20261118T020000Z"].reasons == ["daily 2026-11-18"]
    assert ds["20261117T020000Z"].action == "EXPIRE" and ds["20261117T020000Z"].reasons == ["beyond daily 3"]
    assert ds["20261112T030000Z"].reasons[-1] == "pinned"
    assert ds["20261120T030000Z"].action == "EXPIRE" and "incomplete (status failed)" in ds["20261120T030000Z"].reasons


def test_all_failed_after_good_keeps_the_good_ones():
    good = [Backup(f"g{i}", "j", T0 + timedelta(days=i)) for i in range(3)]
    bad = [Backup(f"x{i}", "j", T0 + timedelta(days=10 + i), good=False, status="failed") for i in range(20)]
    ds = {d.backup_id: d for d in decide(good + bad, {"j": Rule(count=2)}, T0 + timedelta(days=40))}
    assert [ds[f"g{i}"].action for i in range(3)] == ["EXPIRE", "KEEP", "KEEP"]
    # max_age cannot take the last good one either.
    ds = {d.backup_id: d for d in decide(good + bad, {"j": Rule(max_age=timedelta(days=1))}, T0 + timedelta(days=40))}
    assert ds["g2"].keep and ds["g2"].reasons == ["newest verified"]


def test_unknown_job_and_no_rule_keep_everything():
    bs = [Backup("a", "gone", T0), Backup("b", "j", T0 + timedelta(days=1))]
    ds = {d.backup_id: d for d in decide(bs, {"j": Rule()}, T0 + timedelta(days=400))}
    assert ds["a"].reasons == ["job not in the policy"] and ds["b"].reasons == ["no retention rule"]


def test_chain_kept_through_expired_middle():
    bs = [Backup("full", "snap", T0), Backup("inc1", "snap", T0 + timedelta(hours=1), parent="full"),
          Backup("inc2", "snap", T0 + timedelta(hours=2), parent="inc1")]
    ds = {d.backup_id: d for d in decide(bs, {"snap": Rule(count=1)}, T0 + timedelta(days=1))}
    assert all(d.keep for d in ds.values())
    assert ds["inc1"].reasons == ["needed by inc2"] and ds["full"].reasons == ["needed by inc1"]
