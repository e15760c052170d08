"""One site's WAL listing with each stored name parsed once: PURE, no I/O.

`pgvault status` lists a WAL site once and reads two things from it: the archive's gaps and
newest segment (pgvault.wal.status.scan_listing) and the site's archive for the recoverability
window (pgvault.restore.gather.archive_of). Both used to parse every listed name themselves — the
23,000 names of the status bench twice (issue 16). A ``Listing`` is built once and read by
both; it is not changed after ``parse``.

The common case, a segment file, is matched by one regular expression (name and compression
suffix at once); anything else goes through pgvault.wal.names as before. Both paths give what
``names.split_stored``/``is_wal_name``/``kind``/``parse_segment`` give."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import names

# A stored segment: TTTTTTTTLLLLLLLLSSSSSSSS plus at most one of the compression suffixes
# names.split_stored strips (any other ending takes the general path).
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})("
                      + "|".join(re.escape(s) for s in names.BY_SUFFIX) + r")?$")


@dataclass
class Listing:
    """The WAL files listed under one cluster's wals/ prefix at one site."""

    segment_size: int
    objects: list = field(default_factory=list, repr=False)  # the (key, mtime) pairs parsed
    files: int = 0                     # WAL files of any kind (segments, history, labels, partials)
    # (timeline, segno, mtime) of every segment file, in listing order (a segment stored under
    # two compressions is two files here)
    segments: list[tuple[int, int, float]] = field(default_factory=list, repr=False)
    # (timeline, segno) -> (stored key, compression, mtime); the last listed wins
    keys: dict[tuple[int, int], tuple[str, str, float]] = field(default_factory=dict, repr=False)
    timelines: dict[int, set[int]] = field(default_factory=dict, repr=False)   # timeline -> segnos
    histories: list[tuple[str, str, str]] = field(default_factory=list)        # (WAL name, key, compression)

    def sized(self, segment_size: int) -> "Listing":
        """This listing as counted in segments of ``segment_size`` (itself when it already is:
        status parses with the size the site is bound with and scans with the cluster's)."""
        return self if segment_size == self.segment_size else parse(self.objects, segment_size)


def parse(objects: list[tuple[str, float]], segment_size: int = 16 << 20) -> Listing:
    """Parse (key, mtime) pairs listed under a cluster's wals/ prefix; foreign objects are skipped.

    >>> lst = parse([("w/0000000100000000/000000010000000000000002.gz", 1.0),
    ...              ("w/0000000100000001/000000020000000100000003", 2.0),
    ...              ("w/00000002.history", 3.0), ("w/x.gz", 4.0),
    ...              ("w/0000000100000000/000000010000000000000002.00000028.backup.zst", 5.0)])
    >>> lst.files, lst.segments, lst.timelines
    (4, [(1, 2, 1.0), (2, 259, 2.0)], {1: {2}, 2: {259}})
    >>> lst.keys[(2, 259)], lst.histories
    (('w/0000000100000001/000000020000000100000003', 'none', 2.0), [('00000002.history', 'w/00000002.history', 'none')])
    """
    out = Listing(segment_size, objects)
    per_log = names.segments_per_log(segment_size)
    match, by_suffix = _SEGMENT.match, names.BY_SUFFIX
    segments, keys, timelines = out.segments, out.keys, out.timelines
    last_tli, last_set = None, None
    for key, mtime in objects:
        filename = key.rsplit("/", 1)[-1]
        m = match(filename)
        if m is None:
            _other(out, key, filename)
            continue
        t, log, seg, suffix = m.groups()
        tli, segno = int(t, 16), int(log, 16) * per_log + int(seg, 16)
        comp = by_suffix[suffix] if suffix else "none"
        out.files += 1
        segments.append((tli, segno, mtime))
        keys[(tli, segno)] = (key, comp, mtime)
        if tli != last_tli:  # listings come in name order: one timeline's segments follow each other
            last_tli, last_set = tli, timelines.setdefault(tli, set())
        last_set.add(segno)
    return out


def _other(out: Listing, key: str, filename: str) -> None:
    """Count a listed object that is not a stored segment (history, label, partial, foreign)."""
    name, comp = names.split_stored(filename)
    if not names.is_wal_name(name):
        return
    out.files += 1
    if names.kind(name) == "history":
        out.histories.append((name, key, comp))


class StoredTimes(Mapping):
    """(timeline, segno) -> when that segment was stored, as an aware datetime: made on access
    from a listing's mtimes (a window or a plan asks for a few of the thousands listed).

    >>> st = StoredTimes({(1, 2): ("k", "none", 100.0), (1, 3): ("k", "none", 100.5)})
    >>> st[(1, 2)].timestamp(), st.get((1, 3)).timestamp(), st.get((1, 4)), len(st)
    (101.0, 100.5, None, 2)
    """

    def __init__(self, keys: dict[tuple[int, int], tuple[str, str, float]]):
        self._keys = keys

    def __getitem__(self, seg: tuple[int, int]) -> datetime:
        mtime = self._keys[seg][2]
        # S3 reports LastModified in whole seconds: round up, or a target in the archive's
        # last second would be refused as "beyond the end" at an S3 site only.
        stored = mtime + 1 if float(mtime).is_integer() else mtime
        return datetime.fromtimestamp(stored, timezone.utc)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
