"""``pgvault find``: which transaction truncated, dropped or emptied a table — and the recovery
target that stops just before it (used by ``pgvault restore --before-truncate``).

Steps: refresh the relation history when the cluster is reachable; look the table up in it
(OIDs and every file it lived in); narrow the WAL range with the history's (time, LSN) marks
when ``--around`` is given; run pg_waldump once over the segments (a local directory, or
fetched from a site) and classify its output (pgvault.restore.walscan); rank.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .. import pg, proc
from ..errors import PgvaultError, ToolFailed, UsageError
from ..catalog import relations
from . import walsource
from ..lsn import format_lsn, parse_lsn
from .walscan import DROP_DATABASE, Candidate, Scanner, TableSpec

log = logging.getLogger("pgvault.find")

RMGRS = ("Transaction", "Heap", "Storage", "Database")
DEFAULT_WINDOW = timedelta(hours=1)
CHUNK = 1 << 20
_END_OF_WAL = ("error in WAL record", "could not find file", "could not read file", "invalid record length",
               "unexpected pageaddr", "invalid magic number", "no valid record")
_CONF = {"high": 0, "medium": 1, "low": 2}


@dataclass
class ScanStats:
    segments: int = 0
    bytes: int = 0
    output_bytes: int = 0     # pg_waldump text classified
    seconds: float = 0.0
    first_segment: str | None = None
    last_segment: str | None = None
    end_note: str | None = None   # why pg_waldump stopped early (end of the available WAL)


@dataclass
class FindResult:
    table: str
    database: str
    candidates: list[Candidate]
    stats: ScanStats
    source: str
    history_records: int
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        dmg = [c for c in self.candidates if c.damaging]
        return dmg[0] if dmg else None

    def to_dict(self) -> dict:
        s = self.stats
        return {"table": self.table, "database": self.database, "source": self.source,
                "history_records": self.history_records, "notes": self.notes,
                "scan": {"segments": s.segments, "bytes": s.bytes, "waldump_output_bytes": s.output_bytes,
                         "seconds": round(s.seconds, 3), "first_segment": s.first_segment,
                         "last_segment": s.last_segment, "end": s.end_note},
                "candidates": [c.to_dict() for c in self.candidates]}


def waldump_argv(segments: walsource.Segments, *, bindir: str | None = None, end_lsn: int | None = None,
                 rmgrs=RMGRS) -> list[str]:
    argv = [pg.tool("pg_waldump", configured=bindir), "--path", str(segments.directory)]
    argv += [f"--rmgr={r}" for r in rmgrs]
    if end_lsn is not None:
        argv += ["--end", format_lsn(end_lsn)]
    argv += [segments.first, segments.last]
    return argv


def scan_segments(segments: walsource.Segments, spec: TableSpec, *, bindir: str | None = None,
                  end_lsn: int | None = None) -> tuple[list[Candidate], ScanStats]:
    """Run pg_waldump once over the segments and stream its output through the Scanner."""
    stats = ScanStats(segments=segments.count, bytes=segments.bytes, first_segment=segments.first,
                      last_segment=segments.last)
    scanner = Scanner(spec)
    t0 = time.monotonic()
    with proc.Stream(waldump_argv(segments, bindir=bindir, end_lsn=end_lsn), extra_env={"TZ": "UTC", "PGTZ": "UTC"}) as st:
        rest = b""
        while True:
            block = st.stdout.read(CHUNK)
            if not block:
                break
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                rest += block
                continue
            scanner.feed_chunk(rest + block[:cut])
            rest = block[cut:]
        if rest:
            scanner.feed_chunk(rest + b"\n")
        try:
            st.finish()
        except ToolFailed as exc:
            # Reaching the end of the written WAL (a partial last segment, a recycled file in
            # pg_wal, the end of an archive) is how every scan of live WAL ends.
            if not any(m in exc.stderr_tail for m in _END_OF_WAL):
                raise
            stats.end_note = exc.stderr_tail.strip().splitlines()[-1][:300]
    stats.seconds = time.monotonic() - t0
    stats.output_bytes = scanner.bytes
    return scanner.candidates, stats


def parse_time(text: str) -> datetime:
    """ISO 8601; UTC unless an offset is given.

    >>> parse_time('2026-11-25 14:20').isoformat()
    '2026-11-25T14:20:00+00:00'
    >>> parse_time('2026-11-25T14:20:00+01:00').isoformat()
    '2026-11-25T14:20:00+01:00'
    """
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not a time: {text!r}", "use ISO 8601, e.g. '2026-11-25 14:20' (UTC) or '2026-11-25T14:20+01:00'") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def lsn_bounds(marks: list[tuple[str, str]], lo: datetime, hi: datetime) -> tuple[int | None, int | None]:
    """The WAL range that surely holds every commit between ``lo`` and ``hi``: from the newest
    history mark taken at or before ``lo`` to the first one taken after ``hi``.

    >>> m = [('2026-11-25T10:00:00+00:00', '0/1000000'), ('2026-11-25T11:00:00+00:00', '0/2000000'),
    ...      ('2026-11-25T12:00:00+00:00', '0/3000000')]
    >>> t = lambda h: datetime(2026, 11, 25, h, 30, tzinfo=timezone.utc)
    >>> [format_lsn(x) if x is not None else None for x in lsn_bounds(m, t(10), t(10))]
    ['0/1000000', '0/2000000']
    >>> lsn_bounds(m, t(12), t(13))[1] is None
    True
    """
    start = end = None
    for ts, lsn in sorted(marks, key=lambda m: datetime.fromisoformat(m[0])):
        t = datetime.fromisoformat(ts)
        if t <= lo:
            start = parse_lsn(lsn)
        if t > hi and end is None:
            end = parse_lsn(lsn)
    return start, end


def rank(cands: list[Candidate], around: datetime | None) -> list[Candidate]:
    """Damage before rewrites, surer before less sure, then nearest to ``around`` (else newest)."""
    def key(c: Candidate):
        t = c.time.timestamp() if c.time else 0.0
        dist = abs(t - around.timestamp()) if around else -t
        return (not c.damaging, _CONF.get(c.confidence, 9), dist)
    return sorted(cands, key=key)


def find(policy, table: str, *, database: str | None = None, around: str | datetime | None = None,
         window: timedelta | None = None, wal_dir: str | None = None, from_site: str | None = None,
         record: bool = True, timeline: int | None = None, warn=None) -> FindResult:
    notes: list[str] = []
    if record:
        try:
            relations.record_relations(policy)
        except PgvaultError as exc:
            notes.append(f"relation history not refreshed (cluster or site unreachable): {exc.message}")
    history = relations.load_history(policy, from_site)
    th = relations.table_history(history, table, database)
    spec = TableSpec(frozenset(th.db_oids), frozenset(th.table_oids), frozenset(th.heap_files), th.rows,
                     other_files=frozenset(th.other_files))
    at = parse_time(around) if isinstance(around, str) else around
    lo = hi = None
    start_lsn = end_lsn = None
    if at is not None:
        w = window or DEFAULT_WINDOW
        lo, hi = at - w, at + w
        start_lsn, end_lsn = lsn_bounds(th.marks, lo, hi)
    tmp = None
    try:
        if wal_dir:
            source = f"directory {wal_dir}"
            segs = walsource.local_segments(wal_dir, timeline, start_lsn, end_lsn)
        else:
            tmp = walsource.private_tempdir()
            seg_size = _seg_size(policy)
            name = walsource.fetch_site_segments(policy, tmp, site_name=from_site, seg_size=seg_size,
                                                 start_lsn=start_lsn, end_lsn=end_lsn)
            source = f"site {name}"
            segs = walsource.local_segments(tmp, timeline)
        # The segment range already stops at end_lsn's segment; no --end (pg_waldump refuses
        # an --end outside its last file, e.g. when the archive ends earlier).
        cands, stats = scan_segments(segs, spec, bindir=policy.cluster.bin_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if lo is not None:
        cands = [c for c in cands if c.time is None or lo <= c.time <= hi]
    if not th.heap_files:
        notes.append("no file of the table is recorded; matched by OID only (lower confidence)")
    return FindResult(th.table, th.database, rank(cands, at), stats, source, len(history), notes)


def _seg_size(policy) -> int:
    """The cluster's WAL segment size from the binding at a site (16 MiB by default)."""
    from ..catalog.catalog import Catalog
    from ..sites import open_sites

    for site in open_sites(policy).values():
        try:
            b = Catalog(site, policy.cluster.name).binding()
            if b is not None:
                return b.wal_segment_size
        except PgvaultError:
            continue
    return 16 << 20


@dataclass(frozen=True)
class RecoveryTarget:
    """Where ``restore --before-truncate`` stops: before ``xid``'s commit, or before ``lsn``
    (DROP DATABASE: the directory is removed before the commit record)."""

    xid: int | None
    lsn: str | None
    inclusive: bool
    action: str
    candidate: Candidate

    def settings(self) -> dict:
        s = {"recovery_target_inclusive": "on" if self.inclusive else "off",
             "recovery_target_action": self.action}
        if self.lsn:
            s["recovery_target_lsn"] = self.lsn
        else:
            s["recovery_target_xid"] = str(self.xid)
        return s


def resolve_before_truncate(policy, table: str, database: str | None = None, around=None, window=None, *,
                            action: str = "pause", wal_dir: str | None = None, from_site: str | None = None,
                            ) -> tuple[RecoveryTarget, FindResult]:
    """Find the damaging transaction and return the target just before it (inclusive off)."""
    if isinstance(window, str):
        from ..policy.durations import parse_duration

        window = parse_duration(window)
    res = find(policy, table, database=database, around=around, window=window, wal_dir=wal_dir,
               from_site=from_site)
    best = res.best
    if best is None:
        raise PgvaultError(f"no transaction that truncated, dropped or emptied {res.table} (database "
                           f"{res.database}) in the scanned WAL ({res.stats.segments} segments)",
                           "widen --window or check --around; `pgvault find --table ...` lists what was seen")
    if best.kind == DROP_DATABASE:
        return RecoveryTarget(None, best.target_lsn, False, action, best), res
    return RecoveryTarget(best.xid, None, False, action, best), res
