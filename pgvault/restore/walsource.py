"""Where the WAL to scan comes from: a local directory of segments (an archive written by
``cp %p DIR/%f``, or pg_wal itself), or a site's archive in Barman's cloud layout
(``clusters/<cluster>/wals/<16hex>/<24hex>[.gz|.bz2|.zst]``), fetched and decompressed into a
private temporary directory, because pg_waldump reads only plain segment files."""
from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..catalog import layout
from ..errors import PgvaultError, UsageError
from ..sites import open_sites

log = logging.getLogger("pgvault.find")

SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_SITE_SEGMENT = re.compile(r"(?:^|/)([0-9A-F]{24})(\.gz|\.bz2|\.zst|\.zstd)?$")


def segment_no(name: str, seg_size: int) -> int:
    """Segment number of a segment file name (timeline stripped).

    >>> segment_no('000000010000000100000002', 16 * 1024 * 1024)
    258
    """
    m = SEGMENT.match(name)
    return int(m.group(2), 16) * (0x100000000 // seg_size) + int(m.group(3), 16)


def segment_of(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


@dataclass
class Segments:
    """A run of segments of one timeline in one directory, ready for pg_waldump."""

    directory: Path
    timeline: int
    first: str
    last: str
    count: int
    bytes: int
    seg_size: int


def local_segments(directory: str | os.PathLike, timeline: int | None = None,
                   start_lsn: int | None = None, end_lsn: int | None = None) -> Segments:
    """The contiguous segments of the newest (or given) timeline in ``directory`` that cover
    [start_lsn, end_lsn] (everything when not given)."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"WAL directory {d} does not exist", "pass a directory of WAL segment files")
    files = [p for p in d.iterdir() if SEGMENT.match(p.name) and p.is_file()]
    if not files:
        raise UsageError(f"no WAL segment files in {d}", "the directory must hold uncompressed 24-hex-digit segments")
    tlis = sorted({int(p.name[:8], 16) for p in files})
    tli = timeline if timeline is not None else tlis[-1]
    files = [p for p in files if int(p.name[:8], 16) == tli]
    if not files:
        raise UsageError(f"no WAL of timeline {tli} in {d}", f"timelines present: {tlis}")
    seg_size = max(p.stat().st_size for p in files)
    if seg_size & (seg_size - 1) or seg_size < 1 << 20:
        raise UsageError(f"unexpected WAL segment size {seg_size} in {d}", "segments must be whole, uncompressed files")
    nos = sorted((segment_no(p.name, seg_size), p) for p in files)
    if start_lsn is not None:
        s = segment_of(start_lsn, seg_size)
        nos = [x for x in nos if x[0] >= s] or nos[-1:]
    if end_lsn is not None:
        e = segment_of(end_lsn, seg_size)
        nos = [x for x in nos if x[0] <= e] or nos[:1]
    # pg_waldump stops at the first gap, so keep only the leading contiguous run.
    run = [nos[0]]
    for x in nos[1:]:
        if x[0] != run[-1][0] + 1:
            log.warning("WAL gap after %s in %s: scanning stops there", run[-1][1].name, d)
            break
        run.append(x)
    return Segments(d, tli, run[0][1].name, run[-1][1].name, len(run),
                    sum(p.stat().st_size for _, p in run), seg_size)


def fetch_site_segments(policy, dest: Path, *, site_name: str | None = None, seg_size: int = 16 << 20,
                        start_lsn: int | None = None, end_lsn: int | None = None) -> str:
    """Copy the archived segments in range into ``dest``, decompressed and checked, with the
    same fallback across sites as restore_command (pgvault.wal.fetch). The segment list is the
    union of what the WAL sites hold. Returns the sites the segments came from."""
    from ..wal.fetch import fetch, site_order

    order = site_order(policy, site_name)
    wanted: set[str] = set()
    errors = {}
    for name, site in open_sites(policy, order).items():
        try:
            for o in site.list(layout.wal_prefix(policy.cluster.name)):
                m = _SITE_SEGMENT.search(o.key)
                if not m:
                    continue
                no = segment_no(m.group(1), seg_size)
                if start_lsn is not None and no < segment_of(start_lsn, seg_size):
                    continue
                if end_lsn is not None and no > segment_of(end_lsn, seg_size):
                    continue
                wanted.add(m.group(1))
        except PgvaultError as exc:
            errors[name] = exc.message
    if not wanted:
        raise UsageError(f"no archived WAL to scan at the sites{': ' + str(errors) if errors else ''}",
                         "is WAL archiving (pgvault wal-push) set up? or pass --wal-dir DIR")
    used = set()
    for seg in sorted(wanted):
        used.add(fetch(policy, seg, dest / seg, from_site=site_name))
    log.info("fetched %d WAL segments from %s", len(wanted), ", ".join(sorted(used)))
    return ", ".join(sorted(used))


def private_tempdir(prefix: str = "pgvault-find-") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o700)
    return d
