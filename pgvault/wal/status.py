"""WAL archive facts per site — the one computation of newest segment, gaps and lag, used by
`pgvault wal-status`, `pgvault check` and `pgvault status` alike.

The pure part (``parse_segment``, ``current_segno``, ``scan``, ``lag``) works on key listings
and numbers, no I/O. ``archive_status`` gathers its inputs for wal-status: every WAL site is
listed in parallel within ``monitoring.site_timeout`` (pgvault.sites.readonly), the spool is
read once, and every reading is judged against one *now* taken before the reads.

A segment name is TTTTTTTTLLLLLLLLSSSSSSSS (timeline, log, segment within the log, hex). At a
site it is stored in Barman's cloud layout, ``wals/<first 16 hex>/<name>[.gz|.bz2|.zst|...]``.

What "lag" is measured against depends on who asks: status and check know the cluster's
current WAL position (``current_segno`` of ``pg_current_wal_lsn()``, the segment being
written included: 1 is the steady state); wal-status, run without SQL, compares each site with
the newest segment archived anywhere (a site, or the spool): 0 is the steady state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..lsn import parse_lsn
from . import listing, names

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

    count: int = 0                     # segments
    files: int = 0                     # WAL files of any kind (segments, history, labels, partials)
    newest: str | None = None          # segment name
    newest_mtime: float | None = None  # when it arrived at the site
    newest_segno: int | None = None
    oldest: str | None = None
    timelines: list[int] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)  # the first GAPS_LISTED missing segment names
    gap_count: int = 0
    before_horizon: int = 0            # segments before the site's horizon: sent again after expire


def scan(objects: list[tuple[str, float]], segment_size: int = 16 << 20, required_from: str | None = None,
         pending: list[str] = (), horizon: str | None = None) -> ArchiveScan:
    """Summarise (key, mtime) pairs listed under a cluster's wals/ prefix.

    Gaps are segment numbers missing between the first one needed (``required_from``: the start
    WAL of the oldest retained base, else the oldest archived) and the newest archived, on any
    timeline: after a promotion, the new timeline continues the old one's numbering. Segments
    ``pending`` in wal-push's spool for this site are on their way, not gaps. Segments before the
    site's ``horizon`` (pgvault.wal.horizon: expire removed the WAL before it) are left out: one a
    node sent again after expire is not the archive's start.

    >>> s = scan([("w/0000000100000000/000000010000000000000002.gz", 1.0),
    ...           ("w/0000000100000000/000000010000000000000003.gz", 2.0),
    ...           ("w/0000000100000000/000000010000000000000006.gz", 3.0),
    ...           ("w/00000002.history", 4.0)], required_from="000000010000000000000001")
    >>> s.newest, s.count, s.files, s.gap_count, s.gaps
    ('000000010000000000000006', 3, 4, 3, ['000000010000000000000001', '000000010000000000000004', '000000010000000000000005'])
    >>> scan([("000000010000000000000001", 1.0), ("000000010000000000000003", 2.0)],
    ...      pending=["000000010000000000000002.gz"]).gaps
    []
    >>> s = scan([("000000010000000000000001", 1.0), ("000000010000000000000007", 2.0),
    ...           ("000000010000000000000008", 3.0)], horizon="000000010000000000000007")
    >>> s.gap_count, s.oldest, s.count, s.before_horizon
    (0, '000000010000000000000007', 3, 1)
    """
    return scan_listing(listing.parse(objects, segment_size), required_from, pending, horizon)


def scan_listing(lst: listing.Listing, required_from: str | None = None, pending: list[str] = (),
                 horizon: str | None = None) -> ArchiveScan:
    """``scan`` of a listing already parsed (pgvault.wal.listing): status parses each site's
    once, for this and for the recoverability window."""
    segment_size = lst.segment_size
    out = ArchiveScan(count=len(lst.segments), files=lst.files)
    present: dict[int, int] = {}  # segno -> timeline
    newest_key: tuple[int, int] | None = None
    for tli, segno, mtime in lst.segments:
        if segno not in present or present[segno] < tli:
            present[segno] = tli
        if newest_key is None or (segno, tli) > newest_key:
            newest_key = (segno, tli)
            out.newest_mtime = mtime
    if newest_key is None:
        return out
    out.newest_segno = newest_key[0]
    out.newest = segment_name(newest_key[1], newest_key[0], segment_size)
    edge = parse_segment(horizon, segment_size) if horizon else None
    if edge:
        returned = [segno for segno in present if segno < edge[1]]
        out.before_horizon = len(returned)
        for segno in returned:
            del present[segno]
        if not present:  # only returned segments: nothing of the archive proper to scan
            return out
    first = min(present)
    out.oldest = segment_name(present[first], first, segment_size)
    out.timelines = sorted(set(present.values()))
    start = first
    if required_from:
        req = parse_segment(required_from, segment_size)
        if req:
            start = min(start, req[1])
    if edge:
        start = max(start, edge[1])
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


def lag_segments(newest: str | None, reference_segno: int | None, segment_size: int = 16 << 20) -> int | None:
    """Segments up to ``reference_segno`` not yet at a site whose newest segment is ``newest``.

    >>> lag_segments("000000010000000000000002", current_segno("0/3000000")), \\
    ...     lag_segments("000000010000000000000002", current_segno("0/5000100"))
    (0, 3)
    """
    if newest is None or reference_segno is None:
        return None
    parsed = parse_segment(newest, segment_size)
    return max(reference_segno - parsed[1], 0) if parsed else None


def lag(newest: str | None, newest_mtime: float | None, reference_segno: int | None, now: float,
        spooled_age: float | None, segment_size: int = 16 << 20) -> tuple[int | None, float | None]:
    """(lag in segments, lag in seconds — the RPO now) of one site.

    Seconds: 0 when the site holds everything up to the reference, else the age of its newest
    segment (everything written after it is not there); and at least the age of the oldest
    file wal-push holds in its spool for the site (that much is waiting for it). Unknown
    (None) without a reference and without a spooled backlog.

    >>> lag("000000010000000000000002", 100.0, 2, now=160.0, spooled_age=None)
    (0, 0.0)
    >>> lag("000000010000000000000002", 100.0, 4, now=160.0, spooled_age=None)
    (2, 60.0)
    >>> lag("000000010000000000000002", 100.0, 4, now=160.0, spooled_age=90.0)
    (2, 90.0)
    >>> lag(None, None, None, now=160.0, spooled_age=None)
    (None, None)
    """
    segs = lag_segments(newest, reference_segno, segment_size)
    secs = None
    if segs == 0:
        secs = 0.0
    elif segs is not None and newest_mtime is not None:
        secs = max(0.0, now - newest_mtime)
    if spooled_age is not None:
        secs = max(secs or 0.0, spooled_age)
    return segs, secs


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def summarize(listings: dict, spooled: dict, breakers: dict, now: float, segment_size: int = 16 << 20,
              horizons: dict | None = None) -> dict:
    """Per-site status for wal-status from site listings ({site: [(key, mtime)] or an error
    string}), spooled names ({site: ([names], oldest age)}), circuit-breaker states
    ({site: state or None}) and WAL horizons ({site: segment or None}, pgvault.wal.horizon).
    Lag is measured against the newest segment archived anywhere.

    >>> s = summarize({"a": [("000000010000000000000001", 10.0), ("000000010000000000000002", 20.0)],
    ...                "b": [("000000010000000000000001", 10.0)]},
    ...               {"b": (["000000010000000000000002"], 30.0)}, {}, now=100.0)
    >>> s["newest"], s["sites"]["a"]["lag_segments"], s["sites"]["b"]["lag_segments"], s["sites"]["b"]["lag_seconds"]
    ('000000010000000000000002', 0, 1, 90.0)
    >>> s["sites"]["b"]["gaps"], s["sites"]["b"]["spooled"]
    ([], 1)
    """
    horizons = horizons or {}
    scans = {site: scan(entries, segment_size, pending=spooled.get(site, ([], None))[0], horizon=horizons.get(site))
             for site, entries in listings.items() if not isinstance(entries, str)}
    tops = [s.newest_segno for s in scans.values() if s.newest_segno is not None]
    for backlog, _age in spooled.values():
        tops += [p[1] for p in (parse_segment(n, segment_size) for n in backlog) if p]
    top = max(tops, default=None)
    out = {"newest": None if top is None else _newest_name(scans, spooled, top, segment_size), "sites": {}}
    for site, entries in listings.items():
        backlog, age = spooled.get(site, ([], None))
        breaker = breakers.get(site) or {}
        st: dict = {"reachable": not isinstance(entries, str), "error": entries if isinstance(entries, str) else None,
                    "files": 0, "newest": None, "newest_time": None, "oldest": None, "lag_segments": None,
                    "lag_seconds": None, "spooled": len(backlog), "spooled_age": age, "gaps": [], "gap_count": 0,
                    "down_since": breaker.get("down_since"), "failing": breaker.get("error"),
                    "horizon": horizons.get(site), "before_horizon": 0}
        if site in scans:
            s = scans[site]
            st.update(files=s.files, newest=s.newest, newest_time=_iso(s.newest_mtime), oldest=s.oldest,
                      gaps=s.gaps, gap_count=s.gap_count, before_horizon=s.before_horizon)
            st["lag_segments"], st["lag_seconds"] = lag(s.newest, s.newest_mtime, top, now, age, segment_size)
        out["sites"][site] = st
    return out


def _newest_name(scans: dict, spooled: dict, top: int, segment_size: int) -> str:
    """The name of segment number ``top`` as archived (its highest timeline)."""
    tlis = [s.timelines[-1] for s in scans.values() if s.newest_segno == top]
    for backlog, _age in spooled.values():
        tlis += [p[0] for p in (parse_segment(n, segment_size) for n in backlog) if p and p[1] == top]
    return segment_name(max(tlis), top, segment_size)


def list_wal(site, cluster: str) -> list[tuple[str, float]]:
    """(WAL name, mtime) of every WAL file a site holds for a cluster, in archive order."""
    from ..catalog import layout

    out = []
    for o in site.list(layout.wal_prefix(cluster)):
        name = names.split_stored(o.key.rsplit("/", 1)[1])[0]
        if names.is_wal_name(name):
            out.append((name, o.mtime))
    return sorted(out, key=lambda e: names.sort_key(e[0]))


def read_wal_site(site, cluster: str) -> dict:
    """One WAL site as wal-status reads it: the listing, the timeline history files (small, a
    get each) and the quarantine's evidence (pgvault.wal.divergence)."""
    from ..catalog import layout
    from ..sites.base import get_bytes
    from . import codec, divergence, horizon

    listing = list_wal(site, cluster)
    histories = {}
    for o in site.list(layout.wal_prefix(cluster)):
        filename = o.key.rsplit("/", 1)[1]
        name, compression = names.split_stored(filename)
        if names.kind(name) == "history" and names.is_wal_name(name):
            histories[name] = codec.decompress(get_bytes(site, o.key), compression).decode("ascii", "replace")
    return {"wal": listing, "histories": histories, "quarantine": divergence.read_evidence(site, cluster),
            "horizon": horizon.read(site, cluster)}


def switches(histories: dict[str, str], segment_size: int = 16 << 20) -> list[dict]:
    """The timeline switches of the newest history file: where each timeline ended, in which
    segment, and which timeline took over.

    >>> switches({"00000002.history": "1\\t0/5000060\\tno recovery target specified\\n"})
    [{'timeline': 1, 'switchpoint': '0/5000060', 'segment': '000000010000000000000005', 'next': 2}]
    """
    from ..lsn import format_lsn
    from .divergence import parse_history

    if not histories:
        return []
    newest = max(histories, key=lambda n: int(n[:8], 16))
    entries = parse_history(histories[newest])
    out = []
    for i, (tli, switch, _reason) in enumerate(entries):
        nxt = entries[i + 1][0] if i + 1 < len(entries) else int(newest[:8], 16)
        seg = max(switch - 1, 0) // segment_size if switch % segment_size == 0 else switch // segment_size
        out.append({"timeline": tli, "switchpoint": format_lsn(switch), "segment": segment_name(tli, seg, segment_size),
                    "next": nxt})
    return out


class ArchiveReading:
    """wal-status's reading of every WAL site, started at construction (each site listed in
    its own thread, with the read-only timeouts) so that a caller can start other reads
    beside it; ``result(deadline)`` waits for the listings until ``deadline`` and judges.
    *Now* is taken once, before any listing; the spool is read once, beside them."""

    def __init__(self, policy):
        from ..sites.readonly import Probes, open_readonly

        self.policy = policy
        self.now = time.time()  # the one reference for every reading of this document
        self.probes = Probes(policy.wal.sites, lambda n: read_wal_site(open_readonly(policy, n), policy.cluster.name),
                             what="wal-list")

    def result(self, deadline) -> dict:
        from . import spool_dir
        from .spool import Spool

        spool = Spool(spool_dir(self.policy))
        spooled: dict = {}
        breakers: dict = {}
        for sname in self.policy.wal.sites:
            try:
                backlog = [names.split_stored(n)[0] for n in spool.backlog(sname)]
                spooled[sname] = (backlog, spool.backlog_age(sname, self.now))
                breakers[sname] = spool.site_state(sname)
            except OSError:
                spooled[sname] = ([], None)
        answers = self.probes.wait(deadline)
        listings = {n: a.value["wal"] if a.ok else a.message for n, a in answers.items()}
        doc = summarize(listings, spooled, breakers, self.now,
                        horizons={n: a.value["horizon"] for n, a in answers.items() if a.ok})
        for n, a in answers.items():
            st = doc["sites"][n]
            st["switches"] = switches(a.value["histories"]) if a.ok else []
            st["quarantined"] = a.value["quarantine"] if a.ok else []
        doc["cluster"] = self.policy.cluster.name
        doc["spool"] = str(spool.root)
        doc["collected_at"] = _iso(self.now)
        return doc


def archive_status(policy, *, deadline=None) -> dict:
    """Status of every WAL site, for wal-status and check (it lists each site's archive, so it
    is not for every push). Sites are listed in parallel, each within monitoring.site_timeout;
    a site that did not answer in time is reported unreachable, with the reason."""
    from ..sites.readonly import Deadline, site_timeout

    reading = ArchiveReading(policy)
    return reading.result(deadline or Deadline(site_timeout(policy)))


def unreachable(status: dict) -> list[str]:
    """The sites of an archive_status document that could not be read."""
    return [s for s, st in status["sites"].items() if not st["reachable"]]


def render(status: dict) -> str:
    """Plain text for `pgvault wal-status`."""
    lines = [f"cluster {status['cluster']}: newest archived segment {status['newest'] or '-'} "
             f"(spool {status['spool']}, read at {status['collected_at'][:19]}Z)"]
    for site, st in status["sites"].items():
        if not st["reachable"]:
            lines.append(f"{site}: UNREACHABLE ({st['error']}); {st['spooled']} file(s) spooled")
            continue
        if st["failing"]:
            lines.append(f"{site}: FAILING since {_iso(st['down_since'])[:19]}Z ({st['failing']})")
        lag_text = "-" if st["lag_segments"] is None else f"{st['lag_segments']} segment(s)"
        age = "" if not st["lag_seconds"] else f", {st['lag_seconds']:.0f}s behind"
        gaps = f", GAPS {st['gap_count']} from {st['gaps'][0]}" if st["gap_count"] else ""
        lines.append(f"{site}: {st['files']} file(s), newest {st['newest'] or '-'}, lag {lag_text}{age}, "
                     f"{st['spooled']} spooled{gaps}")
        if st.get("before_horizon"):
            lines.append(f"  {st['before_horizon']} segment(s) before the WAL horizon {st['horizon']} (expired, then "
                         f"sent again by a node, e.g. after pg_rewind): not needed; the next expire removes them")
        if st.get("switches"):
            lines.append(f"  timelines: " + ", ".join(f"{x['timeline']} -> {x['next']} at {x['switchpoint']} "
                                                      f"(in {x['segment']})" for x in st["switches"]))
        for q in st.get("quarantined", []):
            who = q.get("sender") or {}
            lines.append(f"  QUARANTINED {q['name']} ({q['reason']}, timeline {q.get('timeline')}, "
                         f"{'-'.join(q.get('lsn_range') or [])}) from {who.get('node') or who.get('host')} "
                         f"({who.get('pgdata')}, port {who.get('port')}) at {str(q.get('received_at'))[:19]}Z")
    return "\n".join(lines)
