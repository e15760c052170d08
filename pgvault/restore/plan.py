"""Point-in-time restore planning: PURE (no I/O). Given the candidate base backups of any
method and what each site's WAL archive holds, pick the newest base that ended before the
target at a site whose WAL covers the range from that base's start to the target — or refuse,
saying what the recoverable window is. pgvault.restore.pitr gathers the inputs and executes.

How PostgreSQL reads WAL across a timeline switch decides what "covers" means: a timeline
``T`` that branched from ``P`` at LSN ``S`` holds its own copy of the segment containing ``S``,
so recovery reads ``P``'s segments up to the one before ``S``'s and ``T``'s from there on."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..errors import RestoreRefused, UsageError
from ..lsn import format_lsn, parse_lsn  # noqa: F401  (planner.parse_lsn is used by pitr)
from . import windows

SEG = 16 << 20


# -- values


def parse_time(text: str) -> tuple[datetime, str]:
    """A target time and how it was read: an explicit offset is honoured, none means UTC.

    >>> parse_time("2026-11-25 14:20:00+01")[0].isoformat()
    '2026-11-25T13:20:00+00:00'
    >>> parse_time("2026-11-25T14:20:00")[1]
    'read 2026-11-25T14:20:00 as UTC (no offset given): 2026-11-25 14:20:00.000000 UTC'
    """
    raw = text.strip()
    norm = raw.replace("Z", "+00:00").replace("z", "+00:00")
    norm = re.sub(r"([+-]\d\d)$", r"\1:00", norm)          # PostgreSQL style "+01"
    try:
        t = datetime.fromisoformat(norm)
    except ValueError:
        raise UsageError(f"cannot read {text!r} as a time",
                         "use ISO 8601, e.g. '2026-11-25 14:20:00+01:00' (UTC when no offset is given)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
        how = f"read {raw} as UTC (no offset given)"
    else:
        how = f"read {raw} with its offset {t.strftime('%z')}"
    t = t.astimezone(timezone.utc)
    return t, f"{how}: {t.strftime('%Y-%m-%d %H:%M:%S.%f')} UTC"


@dataclass(frozen=True)
class Target:
    kind: str                      # time | lsn | xid | latest
    time: datetime | None = None
    lsn: int | None = None
    xid: int | None = None
    how: str = ""                  # how the input was read (printed to the operator)
    inclusive: bool = True         # False: stop just before the target (restore --before-truncate)

    def describe(self) -> str:
        if self.kind == "time":
            return f"time {self.time.isoformat()}"
        if self.kind == "lsn":
            return f"LSN {format_lsn(self.lsn)}"
        if self.kind == "xid":
            return f"transaction {self.xid}"
        return "the end of the archived WAL (latest)"


def make_target(to_time=None, to_lsn=None, to_xid=None, latest=False) -> Target:
    given = [k for k, v in (("--to-time", to_time), ("--to-lsn", to_lsn), ("--to-xid", to_xid), ("--latest", latest)) if v]
    if len(given) != 1:
        raise UsageError(f"give exactly one recovery target (got {', '.join(given) or 'none'})",
                         "use one of --to-time, --to-lsn, --to-xid, --latest")
    if to_time:
        t, how = parse_time(to_time)
        return Target("time", time=t, how=how)
    if to_lsn:
        return Target("lsn", lsn=parse_lsn(to_lsn), how=f"LSN {to_lsn}")
    if to_xid:
        if not str(to_xid).isdigit():
            raise UsageError(f"{to_xid!r} is not a transaction id", "pass the numeric xid, e.g. --to-xid 7421")
        return Target("xid", xid=int(to_xid), how=f"transaction id {to_xid}")
    return Target("latest", how="the end of the archived WAL")


# -- inputs


@dataclass(frozen=True)
class Base:
    """One copy of a base backup at one site, from any method's manifest."""
    backup_id: str
    site: str
    method: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    start_time: datetime
    stop_time: datetime
    start_xmin: int | None = None
    ref: dict = field(default_factory=dict, compare=False, hash=False)   # how to fetch it (method-specific)


@dataclass
class Archive:
    """What one site's WAL archive holds: segment numbers per timeline, parsed history files,
    and the time each segment was stored (its upper bound on the time of its records)."""
    site: str
    segments: dict[int, set[int]] = field(default_factory=dict)
    # a dict, or read-only from a listing (pgvault.wal.listing.StoredTimes: made on access)
    stored_at: Mapping[tuple[int, int], datetime] = field(default_factory=dict)
    histories: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    segment_size: int = SEG
    # (timeline, segno) -> (stored key, compression, mtime): where to read a segment's body
    # (pgvault windows reads the newest one's last commit time).
    keys: dict[tuple[int, int], tuple[str, str, float]] = field(default_factory=dict, repr=False)

    def has(self, tli: int, segno: int) -> bool:
        return segno in self.segments.get(tli, ())


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: (parent timeline, switch LSN) per ancestor, oldest first.

    >>> parse_history("1\\t0/5000100\\tno recovery target specified\\n\\n# c\\n2\\t0/7000000\\tbefore 2026\\n")
    [(1, 83886336), (2, 117440512)]
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


def merge(archives: list[Archive], name: str = "any site") -> Archive:
    """The union of several sites' archives (wal-fetch falls back from site to site)."""
    out = Archive(name, segment_size=archives[0].segment_size if archives else SEG)
    for a in archives:
        for tli, segs in a.segments.items():
            out.segments.setdefault(tli, set()).update(segs)
        for k, t in a.stored_at.items():
            out.stored_at[k] = min(t, out.stored_at.get(k, t))
        out.histories.update(a.histories)
    return out


# -- timelines and coverage


def newest_timeline(archive: Archive, start_tli: int) -> int:
    """What recovery_target_timeline = 'latest' finds: probe start+1, start+2... while a
    history file exists (PostgreSQL's findNewestTimeLine).

    >>> a = Archive("s", histories={2: [(1, 100)], 3: [(1, 100), (2, 200)]})
    >>> newest_timeline(a, 1), newest_timeline(Archive("s"), 1)
    (3, 1)
    """
    tli = start_tli
    while tli + 1 in archive.histories:
        tli += 1
    return tli


def path_to(archive: Archive, base_tli: int, base_stop: int, tli: int) -> list[tuple[int, int | None]] | None:
    """The (timeline, end LSN or None for open) steps from the base's timeline to ``tli``, or
    None when ``tli`` did not branch from the base's history after the base ended.

    >>> a = Archive("s", histories={2: [(1, 0x5000100)]})
    >>> path_to(a, 1, 0x3000000, 2)
    [(1, 83886336), (2, None)]
    >>> path_to(a, 1, 0x6000000, 2) is None
    True
    """
    if tli == base_tli:
        return [(tli, None)]
    hist = archive.histories.get(tli)
    if hist is None:
        return None
    steps = [(t, end) for t, end in hist]
    tlis = [t for t, _ in steps]
    if base_tli not in tlis:
        return None
    i = tlis.index(base_tli)
    if steps[i][1] < base_stop:
        return None
    return steps[i:] + [(tli, None)]


def walk(archive: Archive, path, start_lsn: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None, tuple[int, int] | None]:
    """Follow ``path`` from ``start_lsn``: (segments found, first missing before the final
    timeline's end or None, last contiguous segment)."""
    size = archive.segment_size
    seg = start_lsn // size
    found: list[tuple[int, int]] = []
    for i, (tli, end) in enumerate(path):
        last_on_tli = (end // size) - 1 if end is not None else None
        while last_on_tli is None or seg <= last_on_tli:
            if not archive.has(tli, seg):
                if end is None:
                    return found, None, found[-1] if found else None
                return found, (tli, seg), found[-1] if found else None
            found.append((tli, seg))
            seg += 1
        seg = end // size if end is not None else seg
    return found, None, found[-1] if found else None


@dataclass
class Plan:
    target: Target
    base: Base
    wal_site: str                      # archive whose coverage was proven (a site, or "any site")
    timeline: int                      # the timeline recovery ends on
    wal_first: str                     # first WAL segment needed (the base's start)
    wal_last: str                      # last segment archived on the path (recovery reads up to the target)
    segments: int
    reach_lsn: int                     # end of the archived WAL on the path
    reach_time: datetime | None        # upper bound of the time of the last archived record
    notes: list[str] = field(default_factory=list)
    wal_names: list[str] = field(default_factory=list)   # every segment on the path, in replay order

    def as_dict(self) -> dict:
        return {"target": self.target.describe(), "target_read_as": self.target.how,
                "base": {"backup_id": self.base.backup_id, "site": self.base.site, "method": self.base.method,
                         "timeline": self.base.timeline, "start_lsn": format_lsn(self.base.start_lsn),
                         "stop_lsn": format_lsn(self.base.stop_lsn), "stop_time": self.base.stop_time.isoformat(),
                         **{k: v for k, v in self.base.ref.items() if k in ("backup_id_at_site", "route")}},
                "wal": {"site": self.wal_site, "timeline": self.timeline, "first": self.wal_first,
                        "last_archived": self.wal_last, "segments": self.segments,
                        "end_lsn": format_lsn(self.reach_lsn),
                        "end_time_at_most": self.reach_time.isoformat() if self.reach_time else None},
                "notes": self.notes}


def seg_name(tli: int, segno: int, size: int = SEG) -> str:
    """A WAL segment name.

    >>> seg_name(2, 259)
    '000000020000000100000003'
    """
    per = 0x100000000 // size
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_no(name: str, size: int = SEG) -> int:
    """The segment number of a segment name (timeline ignored).

    >>> parse_segment_no("000000020000000100000003")
    259
    """
    return int(name[8:16], 16) * (0x100000000 // size) + int(name[16:24], 16)


def _window(bases: list[Base], archives: list[Archive]) -> str:
    """The recoverable window a refusal reports: pgvault.restore.windows is its one computation."""
    if not bases:
        return "no base backup exists"
    return windows.summary(windows.compute_all(bases, archives))


def _after_base(target: Target, b: Base) -> bool:
    if target.kind == "time":
        return b.stop_time <= target.time
    if target.kind == "lsn":
        return b.stop_lsn <= target.lsn
    if target.kind == "xid":
        return b.start_xmin is not None and b.start_xmin <= target.xid
    return True


def _reaches(target: Target, base: Base, reach_lsn: int, reach_time: datetime | None) -> bool:
    if reach_lsn < base.stop_lsn:
        return False                   # not even consistent
    if target.kind == "time":
        return reach_time is not None and target.time <= reach_time
    if target.kind == "lsn":
        return target.lsn <= reach_lsn
    return True


def plan(target: Target, bases: list[Base], archives: list[Archive], *, from_site: str | None = None) -> Plan:
    """Choose the base and prove WAL coverage, or raise RestoreRefused with the window.

    Bases are tried newest first; for each, its own site's archive first, then the union of
    every site's (wal-fetch falls back from site to site)."""
    if not bases:
        raise RestoreRefused("no base backup to restore from at any reachable site",
                             "take one with pgvault backup JOB (a barman or snapshot job)")
    by_site = {a.site: a for a in archives}
    union = merge(archives)
    # --from-site is a preference that wins over age: its newest eligible base first.
    ordered = sorted(bases, key=lambda b: (b.site == from_site, b.stop_time), reverse=True)
    eligible = [b for b in ordered if _after_base(target, b)]
    if not eligible:
        raise RestoreRefused(f"the target ({target.describe()}) is before the oldest base backup ends",
                             _window(bases, archives) + "\na restore cannot stop before its base backup is consistent")
    for b in eligible:
        for arch in ([by_site[b.site]] if b.site in by_site else []) + [union]:
            tli = newest_timeline(arch, b.timeline)
            path = path_to(arch, b.timeline, b.stop_lsn, tli)
            notes = []
            if path is None:
                notes.append(f"timeline {tli} does not descend from base {b.backup_id}; following timeline {b.timeline}")
                tli, path = b.timeline, [(b.timeline, None)]
            found, gap, last = walk(arch, path, b.start_lsn)
            if last is None:
                continue
            r_lsn = (last[1] + 1) * arch.segment_size
            r_time = arch.stored_at.get(last)
            if gap is not None:
                notes.append(f"WAL gap at {seg_name(*gap, arch.segment_size)} before the switch to a newer timeline")
            if _reaches(target, b, r_lsn, r_time) and gap is None:
                if arch.site != b.site:
                    notes.append(f"WAL comes from several sites (wal-fetch falls back from {b.site!r})")
                return Plan(target, b, arch.site, tli, seg_name(b.timeline, b.start_lsn // arch.segment_size, arch.segment_size),
                            seg_name(*last, arch.segment_size), len(found), r_lsn, r_time, notes,
                            [seg_name(t, s, arch.segment_size) for t, s in found])
    if target.kind == "xid":
        raise RestoreRefused(f"no base backup has contiguous WAL archived up to its end for {target.describe()}",
                             _window(bases, archives))
    raise RestoreRefused(f"the target ({target.describe()}) is beyond the end of the archived WAL",
                         _window(bases, archives) + "\nwait until the WAL is archived (pgvault wal-status), or pick an earlier target")
