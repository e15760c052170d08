"""WAL archive facts from key listings: pure functions, no I/O.

A segment name is TTTTTTTTLLLLLLLLSSSSSSSS (timeline, log, segment within the log, hex). At a
site it is stored in Barman's cloud layout, ``wals/<first 16 hex>/<name>[.gz|.bz2|.zst|...]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..wal import names
from ..lsn import parse_lsn

GAPS_LISTED = 10  # a broken archive can miss thousands; name the first few, count the rest
segment_name = names.segment_name


def parse_segment(filename: str, segment_size: int = 16 << 20) -> tuple[int, int] | None:
    """(timeline, segment number) of a stored segment file; None for anything else
    (.history, .backup labels, .partial files, foreign objects).

    >>> parse_segment("000000020000000100000003.gz")
    (2, 259)
    >>> parse_segment("00000002.history") is None, parse_segment("000000010000000000000003.partial") is None
    (True, True)
    """
    name, _compression = names.split_stored(filename)
    if not names.is_wal_name(name) or names.kind(name) != "segment":
        return None
    return names.parse_segment(name, segment_size)


def current_segno(lsn: str, segment_size: int = 16 << 20) -> int:
    """The segment holding the last byte written before ``lsn``, as pg_walfile_name() counts:
    an LSN exactly on a boundary belongs to the previous segment (nothing is written past it).

    >>> current_segno("0/3000000"), current_segno("0/3000028")
    (2, 3)
    """
    pos = parse_lsn(lsn)
    return max(pos - 1, 0) // segment_size


@dataclass
class ArchiveScan:
    """What one site holds of the WAL archive."""

    count: int = 0
    newest: str | None = None          # segment name
    newest_mtime: float | None = None  # when it arrived at the site
    oldest: str | None = None
    timelines: list[int] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)  # the first GAPS_LISTED missing segment names
    gap_count: int = 0


def scan(objects: list[tuple[str, float]], segment_size: int = 16 << 20, required_from: str | None = None,
         pending: list[str] = ()) -> ArchiveScan:
    """Summarise (key, mtime) pairs listed under a cluster's wals/ prefix.

    Gaps are segment numbers missing between the first one needed (``required_from``: the start
    WAL of the oldest retained base, else the oldest archived) and the newest archived, on any
    timeline: after a promotion, the new timeline continues the old one's numbering. Segments
    ``pending`` in wal-push's spool for this site are on their way, not gaps.

    >>> s = scan([("w/0000000100000000/000000010000000000000002.gz", 1.0),
    ...           ("w/0000000100000000/000000010000000000000003.gz", 2.0),
    ...           ("w/0000000100000000/000000010000000000000006.gz", 3.0),
    ...           ("w/00000002.history", 4.0)], required_from="000000010000000000000001")
    >>> s.newest, s.count, s.gap_count, s.gaps
    ('000000010000000000000006', 3, 3, ['000000010000000000000001', '000000010000000000000004', '000000010000000000000005'])
    """
    out = ArchiveScan()
    present: dict[int, int] = {}  # segno -> timeline
    newest_key: tuple[int, int] | None = None
    for key, mtime in objects:
        parsed = parse_segment(key.rsplit("/", 1)[-1], segment_size)
        if parsed is None:
            continue
        tli, segno = parsed
        out.count += 1
        present[segno] = max(tli, present.get(segno, 0))
        if newest_key is None or (segno, tli) > newest_key:
            newest_key = (segno, tli)
            out.newest_mtime = mtime
    if newest_key is None:
        return out
    out.newest = segment_name(newest_key[1], newest_key[0], segment_size)
    first = min(present)
    out.oldest = segment_name(present[first], first, segment_size)
    out.timelines = sorted(set(present.values()))
    start = first
    if required_from:
        req = parse_segment(required_from, segment_size)
        if req:
            start = min(start, req[1])
    waiting = {p[1] for p in (parse_segment(n, segment_size) for n in pending) if p}
    for segno in range(start, newest_key[0] + 1):
        if segno not in present and segno not in waiting:
            out.gap_count += 1
            if len(out.gaps) < GAPS_LISTED:
                # Name it on the timeline of the nearest archived segment before it.
                before = [s for s in present if s < segno]
                tli = present[max(before)] if before else newest_key[1]
                out.gaps.append(segment_name(tli, segno, segment_size))
    return out


def lag_segments(newest: str | None, current_lsn: str, segment_size: int = 16 << 20) -> int | None:
    """Segments holding WAL not yet at the site, the one being written included (0 = all of it).

    >>> lag_segments("000000010000000000000002", "0/3000000"), lag_segments("000000010000000000000002", "0/5000100")
    (0, 3)
    """
    if newest is None:
        return None
    parsed = parse_segment(newest, segment_size)
    return max(current_segno(current_lsn, segment_size) - parsed[1], 0) if parsed else None
