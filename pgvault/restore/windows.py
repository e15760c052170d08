"""Recoverability windows: PURE (no I/O). Which points of one site's history can be restored
to, from which base — the single computation behind ``pgvault windows``, the window a refused
``restore --plan`` reports (pgvault.restore.plan), ``status`` and the Prometheus metrics.

Inputs are what the site's listing gives (pgvault.restore.gather): the site's bases
(``plan.Base``: timeline, start/stop LSN, stop time) and its WAL archive (``plan.Archive``:
segment numbers per timeline, each segment's stored time, parsed history files). This module
imports nothing from plan (plan imports it), so it reads those values by attribute only.

Per timeline ``T`` the WAL a restore to ``T`` replays is its *path*: each ancestor's segments
up to the one before its switch point, then ``T``'s own (how PostgreSQL reads across a switch,
see plan.py). Along that path:

- a *run* is a stretch of contiguous segments;
- a base is *usable* when the run holding its start segment reaches its stop LSN (its
  consistency point); it then makes ``[stop LSN, end of that run]`` restorable;
- the *intervals* are the union of those stretches, restricted to ``T``'s own part of the path
  (from its switch point on; earlier points are reported on the parent) and split at every
  LSN where a child timeline forks off;
- a *hole* is what lies between two intervals, or after the last one while segments exist
  there: its extent (LSN and time) and cause (the missing segments, the bases whose WAL is
  gone).

Times: an interval starts at its base's stop time (exact) and ends at the time of the last
record of its last segment — the last commit timestamp when the caller could read it
(``commit_times``), else the time the segment was stored (an upper bound)."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime

from ..lsn import format_lsn
from ..wal.names import segment_name


@dataclass
class Interval:
    timeline: int
    start_lsn: int
    end_lsn: int                      # end of the last archived segment of the run
    start_time: datetime | None
    end_time: datetime | None
    end_time_kind: str                # commit (last commit read from the WAL) | archived (upper bound)
    base: object                      # the oldest base that restores into it (a plan.Base)
    bases: list = field(default_factory=list)   # every usable base whose stop lies in it, oldest first
    start_kind: str = "base"          # base (a base's consistency point) | switch (the timeline's start) | fork
    last_segment: tuple[int, int] | None = None
    drills: list = field(default_factory=list)  # Proof records of drills that restored a point inside it

    def base_for(self, lsn: int | None = None, time: datetime | None = None):
        """The newest base of this interval consistent before the point (what a restore picks)."""
        best = None
        for b in self.bases:
            if (lsn is not None and b.stop_lsn <= lsn) or (time is not None and b.stop_time <= time):
                best = b
        return best or self.bases[0]

    def seconds(self) -> float:
        if self.start_time is None or self.end_time is None:
            return 0.0
        return max(0.0, (self.end_time - self.start_time).total_seconds())

    def as_dict(self, size: int) -> dict:
        b = self.base
        return {"timeline": self.timeline, "start_lsn": format_lsn(self.start_lsn), "end_lsn": format_lsn(self.end_lsn),
                "start_time": _iso(self.start_time), "end_time": _iso(self.end_time),
                "end_time_kind": self.end_time_kind, "start_kind": self.start_kind,
                "base": {"backup_id": b.backup_id, "method": b.method, "site": b.site},
                "bases": [x.backup_id for x in self.bases],
                "base_stop_times": [_iso(x.stop_time) for x in self.bases],
                "last_segment": segment_name(*self.last_segment, size) if self.last_segment else None,
                "drills": [d.as_dict() for d in self.drills]}


@dataclass
class Hole:
    timeline: int
    start_lsn: int
    end_lsn: int
    start_time: datetime | None
    end_time: datetime | None
    cause: str                        # missing-wal | base-wal-gone | no-base-after
    detail: str
    missing: list[tuple[str, str]] = field(default_factory=list)   # (first, last) missing segment runs

    def as_dict(self) -> dict:
        return {"timeline": self.timeline, "start_lsn": format_lsn(self.start_lsn), "end_lsn": format_lsn(self.end_lsn),
                "start_time": _iso(self.start_time), "end_time": _iso(self.end_time), "cause": self.cause,
                "detail": self.detail, "missing": [list(m) for m in self.missing]}


@dataclass
class Unusable:
    base: object
    timeline: int
    reason: str


@dataclass
class TimelineWindow:
    timeline: int
    parent: int | None
    switch_lsn: int | None            # where it branched from its parent (None: timeline with no history)
    intervals: list[Interval] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    forks: list[tuple[int, int]] = field(default_factory=list)   # (child timeline, switch LSN)


@dataclass
class Proof:
    """One drill's evidence at a site, as far as windows care: which point it restored (the
    instant recovery replayed to, else its target time, else the base's consistency point)."""
    drill: str
    drill_id: str
    passed: bool
    at: datetime | None
    backup_id: str | None = None
    at_kind: str = "replayed"         # replayed | target | base (the base's stop time: a restore without WAL)

    def as_dict(self) -> dict:
        return {"drill": self.drill, "id": self.drill_id, "outcome": "passed" if self.passed else "failed",
                "at": _iso(self.at), "at_kind": self.at_kind, "backup_id": self.backup_id}


@dataclass
class SiteWindow:
    site: str
    segment_size: int
    timelines: list[TimelineWindow] = field(default_factory=list)
    unusable: list[Unusable] = field(default_factory=list)
    unplaced_drills: list[Proof] = field(default_factory=list)   # drills whose point lies in no interval today

    @property
    def holes(self) -> list[Hole]:
        return [h for t in self.timelines for h in t.holes]

    def intervals(self) -> list[Interval]:
        return [i for t in self.timelines for i in t.intervals]

    def newest(self) -> Interval | None:
        """The interval holding the newest restorable point: the one a `--latest` restore reaches,
        which follows the highest timeline (recovery_target_timeline = latest), not the latest
        end time (after a switchover, the abandoned parent's last segment may end later)."""
        ivs = self.intervals()
        # Recovery finds the newest timeline by its history file: a timeline above 1 without one
        # (a demoted node's segments of a retired branch) is never followed.
        known = {t.timeline for t in self.timelines if t.parent is not None or t.timeline == 1}
        return max(ivs, key=lambda i: (i.timeline in known or not known, i.timeline, i.end_lsn)) if ivs else None

    def unbroken(self) -> Interval | None:
        """The newest interval, widened back over fork splits (a fork does not break recoverability):
        what "restorable to any minute of the last N days" is measured on."""
        n = self.newest()
        if n is None:
            return None
        start = n
        by_tli = {t.timeline: t for t in self.timelines}
        while start.start_kind in ("fork", "switch"):
            prev = _before(by_tli, start)
            if prev is None:
                break
            start = prev
        return Interval(n.timeline, start.start_lsn, n.end_lsn, start.start_time, n.end_time, n.end_time_kind,
                        start.base, start.bases + [b for b in n.bases if b not in start.bases], start.start_kind,
                        n.last_segment)

    def as_dict(self) -> dict:
        u = self.unbroken()
        return {"site": self.site,
                "timelines": [{"timeline": t.timeline, "parent": t.parent,
                               "switch_lsn": format_lsn(t.switch_lsn) if t.switch_lsn is not None else None,
                               "intervals": [i.as_dict(self.segment_size) for i in t.intervals],
                               "holes": [h.as_dict() for h in t.holes],
                               "forks": [{"timeline": c, "lsn": format_lsn(s)} for c, s in t.forks]}
                              for t in self.timelines],
                "unusable_bases": [{"backup_id": x.base.backup_id, "method": x.base.method, "timeline": x.timeline,
                                    "reason": x.reason} for x in self.unusable],
                "holes": len(self.holes),
                "unplaced_drills": [d.as_dict() for d in self.unplaced_drills],
                "unbroken": None if u is None else {"start_time": _iso(u.start_time), "end_time": _iso(u.end_time),
                                                    "seconds": round(u.seconds(), 3), "timeline": u.timeline}}


def _iso(t):
    return t.isoformat() if t is not None else None


def _before(by_tli: dict, iv: Interval) -> Interval | None:
    """The interval that continues into ``iv`` at its start (same timeline before a fork split, or
    the parent's at the switch point)."""
    tw = by_tli.get(iv.timeline)
    if iv.start_kind == "fork" and tw:
        for p in tw.intervals:
            if p.end_lsn == iv.start_lsn and p is not iv:
                return p
    if iv.start_kind == "switch" and tw and tw.parent in by_tli:
        for p in by_tli[tw.parent].intervals:
            if p.start_lsn < tw.switch_lsn <= p.end_lsn or (p.start_lsn <= tw.switch_lsn and p.end_lsn == iv.start_lsn):
                return p
    return None


# -- the computation


def _steps(archive, tli: int) -> list[tuple[int, int | None]]:
    """(timeline, switch LSN or None) along the path to ``tli``, oldest first."""
    return list(archive.histories.get(tli, [])) + [(tli, None)]


def _path_segments(archive, steps, size: int) -> tuple[list[int], dict[int, int]]:
    """Sorted segment numbers present along a path and the timeline each one is read from."""
    segs: list[int] = []
    owner: dict[int, int] = {}
    lo = 0
    for tli, end in steps:
        hi = end // size if end is not None else None
        have = archive.segments.get(tli, ())
        # A list, not a generator, to sort: once per listed segment (23,000 in status's bench).
        mine = sorted([s for s in have if s >= lo and (hi is None or s < hi)])
        segs.extend(mine)
        owner.update(dict.fromkeys(mine, tli))
        if hi is not None:
            lo = hi
    return segs, owner


def _runs(segs: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs (first, last) of sorted segment numbers.

    >>> _runs([1, 2, 3, 5, 7, 8])
    [(1, 3), (5, 5), (7, 8)]
    """
    out: list[tuple[int, int]] = []
    for s in segs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _missing(runs: list[tuple[int, int]], lo_seg: int, hi_seg: int) -> list[tuple[int, int]]:
    """Missing segment runs strictly inside [lo_seg, hi_seg) given the present runs."""
    out = []
    cur = lo_seg
    for a, b in runs:
        if b < cur:
            continue
        if a >= hi_seg:
            break
        if a > cur:
            out.append((cur, min(a, hi_seg) - 1))
        cur = max(cur, b + 1)
    if cur < hi_seg:
        out.append((cur, hi_seg - 1))
    return out


def compute(site: str, bases: list, archive, commit_times: dict | None = None) -> SiteWindow:
    """The window of one site: ``bases`` are that site's bases (plan.Base), ``archive`` its WAL
    (plan.Archive); ``commit_times`` maps (timeline, segment number) to the last commit time read
    from that segment (the end time; the stored time otherwise)."""
    size = archive.segment_size
    commit_times = commit_times or {}
    out = SiteWindow(site, size)
    tlis = sorted(set(archive.segments) | set(archive.histories) | {b.timeline for b in bases})
    children: dict[int, list[tuple[int, int]]] = {}
    for t in tlis:
        h = archive.histories.get(t)
        if h:
            children.setdefault(h[-1][0], []).append((t, h[-1][1]))
    unusable: dict[str, Unusable] = {}
    usable: set[str] = set()
    for tli in tlis:
        steps = _steps(archive, tli)
        hist = archive.histories.get(tli) or []
        switch = hist[-1][1] if hist else None
        tw = TimelineWindow(tli, hist[-1][0] if hist else None, switch, forks=sorted(children.get(tli, []), key=lambda c: c[1]))
        segs, owner = _path_segments(archive, steps, size)
        runs = _runs(segs)
        starts = [a for a, _ in runs]
        own_lo = switch if switch is not None else 0

        def run_of(seg):
            i = bisect_right(starts, seg) - 1
            return runs[i] if i >= 0 and runs[i][1] >= seg else None

        def time_at(seg):
            key = (owner.get(seg, tli), seg)
            return commit_times.get(key) or archive.stored_at.get(key)

        stretches = []                     # (start lsn, end lsn, base, end seg)
        for b in sorted(bases, key=lambda b: (b.stop_lsn, b.stop_time)):
            ok_tl = any(t == b.timeline and (end is None or end >= b.stop_lsn) for t, end in steps)
            if not ok_tl:
                continue
            r = run_of(b.start_lsn // size)
            if r is None or (r[1] + 1) * size < b.stop_lsn:
                if b.timeline == tli or b.backup_id not in unusable:
                    first = segment_name(owner.get(b.start_lsn // size, b.timeline), b.start_lsn // size, size)
                    why = (f"its WAL from {first} is not archived here" if r is None else
                           f"its WAL ends at {format_lsn((r[1] + 1) * size)} before the base is consistent "
                           f"at {format_lsn(b.stop_lsn)}")
                    unusable[b.backup_id] = Unusable(b, b.timeline, why)
                continue
            usable.add(b.backup_id)
            stretches.append((b.stop_lsn, (r[1] + 1) * size, b, r[1]))
        # Merge into intervals (all on the path), then keep this timeline's own part.
        merged: list[list] = []
        for s, e, b, eseg in stretches:
            if merged and s <= merged[-1][1]:
                m = merged[-1]
                m[3].append(b)
                if e > m[1]:
                    m[1], m[4] = e, eseg
            else:
                merged.append([s, e, b, [b], eseg])
        ivs: list[Interval] = []
        for s, e, b, bs, eseg in merged:
            if e <= own_lo:
                continue
            kind = "base"
            st_time = b.stop_time
            if s < own_lo:
                s, kind = own_lo, "switch"
                st_time = time_at(own_lo // size - 1) or time_at(own_lo // size)
            et = commit_times.get((owner.get(eseg, tli), eseg))
            ivs.append(Interval(tli, s, e, st_time, et or archive.stored_at.get((owner.get(eseg, tli), eseg)),
                                "commit" if et else "archived", b, list(bs), kind, (owner.get(eseg, tli), eseg)))
        # Split at forks: a child timeline leaves here (recoverable on both sides, on different timelines).
        for child, at in tw.forks:
            for k, iv in enumerate(ivs):
                if iv.start_lsn < at < iv.end_lsn:
                    before = [x for x in iv.bases if x.stop_lsn <= at]
                    after_bases = [x for x in iv.bases if x.stop_lsn > at]
                    t_at = time_at(at // size - 1)
                    left = Interval(tli, iv.start_lsn, at, iv.start_time, t_at, "archived", iv.base, before,
                                    iv.start_kind, (owner.get(at // size - 1, tli), at // size - 1))
                    right = Interval(tli, at, iv.end_lsn, t_at, iv.end_time, iv.end_time_kind,
                                     before[-1] if before else iv.base, (before[-1:] if before else []) + after_bases,
                                     "fork", iv.last_segment)
                    ivs[k:k + 1] = [left, right]
                    break
        tw.intervals = ivs
        # Holes: between intervals, and after the last one while WAL exists there.
        own_segs_end = segs[-1] + 1 if segs else None
        bounds = [(iv.end_lsn, nxt.start_lsn, iv, nxt) for iv, nxt in zip(ivs, ivs[1:]) if nxt.start_lsn > iv.end_lsn]
        if ivs and own_segs_end is not None and own_segs_end * size > ivs[-1].end_lsn:
            bounds.append((ivs[-1].end_lsn, own_segs_end * size, ivs[-1], None))
        for lo, hi, prev, nxt in bounds:
            miss = _missing(runs, lo // size, hi // size)
            names = [(segment_name(owner.get(a - 1, tli) if a - 1 in owner else tli, a, size),
                      segment_name(owner.get(a - 1, tli) if a - 1 in owner else tli, z, size)) for a, z in miss]
            gone = [u for u in unusable.values() if lo <= u.base.stop_lsn <= hi]
            parts = []
            if names:
                n = sum(z - a + 1 for a, z in miss)
                parts.append(f"{n} WAL segment(s) missing: " + ", ".join(a if a == z else f"{a}..{z}" for a, z in names))
            if gone:
                parts.append("base(s) whose WAL is gone: " + ", ".join(u.base.backup_id for u in gone))
            if nxt is None:
                parts.append("no usable base after it")
                cause = "no-base-after" if not names else "missing-wal"
            else:
                cause = "missing-wal" if names else "base-wal-gone"
            tw.holes.append(Hole(tli, lo, hi, prev.end_time, nxt.start_time if nxt else time_at(hi // size - 1),
                                 cause, "; ".join(parts) or "no base consistent in between", names))
        out.timelines.append(tw)
    out.unusable = sorted((u for k, u in unusable.items() if k not in usable), key=lambda u: u.base.stop_lsn)
    return out


def compute_all(bases: list, archives: list, commit_times: dict | None = None) -> list[SiteWindow]:
    """One window per archive (site), each from the bases kept at that site."""
    commit_times = commit_times or {}
    return [compute(a.site, [b for b in bases if b.site == a.site], a, commit_times.get(a.site))
            for a in archives]


# -- drills: which parts of a window were proven by a real restore


def proof(doc: dict, parse_time) -> Proof | None:
    """A drill evidence record (pgvault.drills.reports.result_doc) as a Proof; None when it
    names no point at all. ``parse_time`` reads its ISO instants (the caller's, to stay pure).

    >>> from datetime import datetime
    >>> p = proof({"drill": "d", "drill_id": "d-1", "outcome": "passed", "replayed_until": "2026-11-25T12:00:00+00:00"},
    ...           datetime.fromisoformat)
    >>> (p.drill, p.passed, p.at_kind, p.at.isoformat())
    ('d', True, 'replayed', '2026-11-25T12:00:00+00:00')
    """
    def when(key):
        v = doc.get(key)
        try:
            return parse_time(v) if isinstance(v, str) and v else None
        except (TypeError, ValueError):
            return None

    at, kind = when("replayed_until"), "replayed"
    if at is None:
        at, kind = when("target_time"), "target"
    bid = doc.get("backup_id") if isinstance(doc.get("backup_id"), str) else None
    if at is None and bid is None:
        return None
    return Proof(str(doc.get("drill") or doc.get("drill_id") or "?"), str(doc.get("drill_id") or doc.get("id") or "?"),
                 str(doc.get("outcome", "")).lower() in ("passed", "ok", "success", "succeeded"), at, bid,
                 kind if at is not None else "base")


def relate_drills(w: SiteWindow, proofs: list[Proof]) -> SiteWindow:
    """Attach each drill to the interval holding the point it restored (newest timeline first,
    as recovery follows the latest timeline); a drill that restored a base without a time is
    placed at that base's consistency point. Drills whose point lies in no interval today (its
    WAL expired since, or it failed in a hole) are kept in ``unplaced_drills``."""
    ivs = sorted(w.intervals(), key=lambda i: (-i.timeline, i.start_lsn))
    for p in proofs:
        home = None
        if p.at is None:
            for iv in ivs:
                b = next((b for b in iv.bases if b.backup_id == p.backup_id), None)
                if b is not None:
                    p.at, home = b.stop_time, iv
                    break
        else:
            home = next((iv for iv in ivs if iv.start_time and iv.end_time and iv.start_time <= p.at <= iv.end_time),
                        None)
        (home.drills if home is not None else w.unplaced_drills).append(p)
    for lst in [iv.drills for iv in ivs] + [w.unplaced_drills]:
        lst.sort(key=lambda p: (p.at is None, p.at.timestamp() if p.at else 0.0, p.drill_id))
    return w


# -- questions asked of a window


@dataclass
class Answer:
    site: str
    restorable: bool
    reason: str
    interval: Interval | None = None
    base: object = None
    segments: int = 0                 # WAL segments to replay from the base's start to the target
    bytes: int = 0

    def as_dict(self) -> dict:
        b = self.base
        return {"site": self.site, "restorable": self.restorable, "reason": self.reason,
                "base": None if b is None else {"backup_id": b.backup_id, "method": b.method,
                                                "stop_time": _iso(b.stop_time), "timeline": b.timeline},
                "timeline": self.interval.timeline if self.interval else None,
                "wal_segments": self.segments, "wal_bytes": self.bytes,
                "drills": [d.as_dict() for d in self.interval.drills] if self.interval else []}


def at_time(w: SiteWindow, archive, t: datetime) -> Answer:
    """Is the instant ``t`` restorable at this site, from which base, with how much WAL?

    Newest timeline first (what recovery_target_timeline = 'latest' follows). The WAL to replay
    is counted from the base's start segment to the first segment stored at or after ``t``."""
    size = w.segment_size
    for iv in sorted(w.intervals(), key=lambda i: (-i.timeline, i.start_lsn)):
        if iv.start_time is None or iv.end_time is None:
            continue
        if iv.start_time <= t <= iv.end_time:
            b = iv.base_for(time=t)
            if b.stop_time > t:
                continue
            first = b.start_lsn // size
            steps = _steps(archive, iv.timeline)
            segs, owner = _path_segments(archive, steps, size)
            lo = bisect_right(segs, first - 1)
            n = 0
            for s in segs[lo:]:
                n += 1
                stored = archive.stored_at.get((owner[s], s))
                if s >= iv.end_lsn // size - 1 or (stored is not None and stored >= t and s * size >= b.stop_lsn):
                    break
            return Answer(w.site, True, f"inside the window {_iso(iv.start_time)} .. {_iso(iv.end_time)} "
                          f"(timeline {iv.timeline})", iv, b, n, n * size)
    for h in w.holes:
        if h.start_time and h.end_time and h.start_time < t < h.end_time:
            return Answer(w.site, False, f"in a hole (timeline {h.timeline}): {h.detail}")
    ivs = [i for i in w.intervals() if i.start_time]
    if not ivs:
        return Answer(w.site, False, "no usable base backup with its WAL at this site")
    first = min(ivs, key=lambda i: i.start_time)
    last = max(ivs, key=lambda i: i.end_time or i.start_time)
    if t < first.start_time:
        return Answer(w.site, False, f"before the window: the oldest usable base ({first.base.backup_id}) "
                      f"is consistent from {_iso(first.start_time)}")
    if last.end_time and t > last.end_time:
        return Answer(w.site, False, f"after the window: the archived WAL ends at {_iso(last.end_time)}")
    return Answer(w.site, False, "not inside any recoverable interval")


def summary(windows: list[SiteWindow]) -> str:
    """One line per site, as a refused restore plan prints it."""
    lines = []
    for w in windows:
        u = w.unbroken()
        if u is None:
            lines.append(f"recoverable window at site {w.site}: none (no usable base backup with its WAL)")
            continue
        n = len(w.holes)
        lines.append(f"recoverable window: from {_iso(u.start_time)} (LSN {format_lsn(u.start_lsn)}, end of base "
                     f"{u.base.backup_id}) to {_iso(u.end_time)} (LSN {format_lsn(u.end_lsn)}, end of the WAL archived "
                     f"at {w.site}, timeline {u.timeline})" + (f"; {n} hole(s) before it, see pgvault windows" if n else ""))
    return "\n".join(lines) if lines else "recoverable window: no site's WAL archive could be read"
