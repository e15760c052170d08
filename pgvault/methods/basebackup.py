"""The physical base backup engine: PostgreSQL 15's non-exclusive backup, PGDATA read once,
one tar per tablespace streamed to every site of the job at the same time, in Barman's cloud
layout (``clusters/<cluster>/base/<barman id>/{data.tar.lz4, <oid>.tar.lz4, backup.info}``).

``take_base(conninfo, session, ...)`` is the whole engine and takes a conninfo, not a job: a
caller may point it at a hot standby (PostgreSQL 15 allows ``pg_backup_start`` there; its
``pg_backup_stop`` cannot switch WAL and waits for archiving only with archive_mode = always:
the caller's ``standby_done`` makes the stop segment archived instead, see base_standby.py).
Sequence:

1. one held session: ``pg_backup_start(label, fast)`` — nothing else on the server; if pgvault
   dies, the session ends and PostgreSQL forgets the backup (non-exclusive: no backup_label is
   left in PGDATA, the next backup starts clean);
2. each tablespace's tree, then PGDATA (``global/pg_control`` last), read once by
   ``tarstream.TreeTar`` (per-file sha256, page checksums) and streamed through
   ``BackupSession.add_stream`` (compression on several cores, every site at once, a failed
   site dropped);
3. ``pg_backup_stop`` in that session, then the stop segment archived (on a primary pgvault
   watches its archive status every 50 ms, ``wait_archived``: PostgreSQL's own wait looks once
   a second), then ``backup_label`` appended to ``data.tar`` (only known now) — as
   barman-cloud-backup does; on a standby, ``standby_done`` (the stop segment at the WAL sites)
   before anything says the backup exists;
4. ``backup.info`` (Barman's format) and pgvault's per-file list, then the caller commits the
   manifest. See docs/base-backups.md for why this route and not Barman's uploader."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from typing import Callable

from .. import pg
from ..catalog import layout
from ..errors import DatabaseError, PgvaultError
from ..lsn import parse_lsn
from . import barman_info
from .tarstream import TreeTar

log = logging.getLogger("pgvault.basebackup")

FILES_ARTIFACT = "files.json"
BARMAN_SUFFIX = {"lz4": "lz4", "none": None}
ARCHIVE_WAIT = 300
ARCHIVE_POLL = 0.05


def _present(path: str) -> bool:
    """Whether ``path`` exists; any answer but "no such file" (EACCES...) is an error, never a no."""
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False


def archive_busy(root: str, wal: str) -> bool:
    """PostgreSQL's own test (xlogarchive.c XLogArchiveIsBusy) of whether the server at
    ``root`` has yet to archive WAL file ``wal``: not when its ``.done`` status file exists; yes
    while ``.ready`` does; with neither, not once the file itself is gone (archived, then
    recycled), yes while it is there (its ``.ready`` is about to appear)."""
    status = os.path.join(root, "pg_wal", "archive_status", wal)
    if _present(status + ".done"):
        return False
    if _present(status + ".ready"):
        return True
    if _present(status + ".done"):          # the archiver finished between the two looks
        return False
    return _present(os.path.join(root, "pg_wal", wal))


def wait_archived(root: str, wal: str, timeout: float = ARCHIVE_WAIT) -> None:
    """Return once the server at ``root`` has archived ``wal`` (as ``pg_backup_stop(true)``
    waits, but looking every 50 ms where PostgreSQL looks once a second: a base backup would
    pay most of a second for nothing)."""
    deadline = time.monotonic() + timeout
    while archive_busy(root, wal):
        if time.monotonic() >= deadline:
            raise DatabaseError(f"the backup's last WAL segment {wal} was not archived within {timeout:.0f}s",
                                "check archive_command and the server log (pgvault check shows the WAL archive's state)")
        time.sleep(ARCHIVE_POLL)       # polling a status file, as PostgreSQL's own wait does


def archive_waits_here(root: str, archive_mode: str, in_recovery: bool) -> bool:
    """Whether pgvault waits for the stop segment itself (a primary that archives, whose
    archive status it can read) instead of inside ``pg_backup_stop``."""
    status = os.path.join(root, "pg_wal", "archive_status")
    return (not in_recovery and archive_mode in ("on", "always") and os.path.isdir(status)
            and os.access(status, os.R_OK | os.X_OK))


class CorruptPages(PgvaultError):
    """Page checksum failures found while reading (policy ``on_bad_page: fail``)."""


def segment_name(timeline: int, lsn: int, seg_size: int, *, end: bool = False) -> str:
    """The WAL segment holding ``lsn`` (``end``: the one holding the byte before it, as
    ``pg_walfile_name`` names a backup's stop segment).

    >>> segment_name(1, parse_lsn("0/2000028"), 16 << 20), segment_name(1, parse_lsn("0/3000000"), 16 << 20, end=True)
    ('000000010000000000000002', '000000010000000000000002')
    """
    segno = (lsn - (1 if end and lsn else 0)) // seg_size
    per = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def label_field(label: str, key: str) -> str | None:
    """A value of backup_label.

    >>> label_field("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\\nSTART TIMELINE: 1\\n", "START TIMELINE")
    '1'
    """
    for line in label.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None


@dataclass
class BaseResult:
    barman_id: str
    facts: dict                                  # LSNs, WAL, times, timeline, label, tablespaces
    bytes_read: int = 0
    pages_checked: int = 0
    bad_pages: list = field(default_factory=list)


def preflight(conn) -> list[str]:
    """Problems that stop a base backup before it starts, each with its hint."""
    problems = []
    rows = dict(pg.query(conn, "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level')"))
    if rows.get("wal_level") == "minimal":
        problems.append("wal_level is minimal: a base backup needs replica or logical "
                        "(HINT: set wal_level = replica and restart PostgreSQL)")
    allowed = pg.scalar(conn, """SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR
        (has_function_privilege('pg_backup_start(text, boolean)', 'EXECUTE') AND
         has_function_privilege('pg_backup_stop(boolean)', 'EXECUTE'))""")
    if not allowed:
        user = pg.scalar(conn, "SELECT current_user")
        problems.append(f"role {user!r} may not run pg_backup_start/pg_backup_stop "
                        f"(HINT: connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), "
                        f"pg_backup_stop(boolean) TO {user})")
    return problems


def take_base(conninfo: str, session, *, cluster: str, label: str, fast: bool = True, compression: str = "lz4",
              threads: int = 2, verify_pages: bool = True, pgdata: str | None = None,
              standby_done: Callable[..., dict] | None = None) -> BaseResult:
    """Take one base backup from the server at ``conninfo`` (a primary or a hot standby) into
    every site of ``session``. Raises if no site took it; pages that fail their checksum are
    returned in ``bad_pages`` (the caller applies the policy).

    On a standby ``standby_done(stop_lsn=, end_wal=, seg_size=, archive_mode=)`` is called
    after the stop and before ``backup.info``: it returns once the stop segment is archived (or
    raises) and its facts go to ``facts["standby"]``. Without it a standby base is refused: no
    one would know that its WAL was ever archived."""
    conn = pg.connect(conninfo)
    try:
        problems = preflight(conn)
        if problems:
            raise PgvaultError("cannot take a base backup:\n  " + "\n  ".join(problems))
        info = pg.server_info(conn)
        if info.in_recovery and standby_done is None:
            raise PgvaultError("cannot take a base backup on a standby without waiting for its WAL",
                               "this is a bug: the caller must pass standby_done")
        archive_mode = pg.scalar(conn, "SELECT current_setting('archive_mode')")
        root = pgdata or info.data_directory
        checksums_on = pg.scalar(conn, "SELECT current_setting('data_checksums')") == "on"
        spaces = [(n, int(o), loc) for n, o, loc in pg.query(conn, """SELECT spcname, oid, pg_tablespace_location(oid)
            FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid""")]
        version_dir = pg.scalar(conn, """SELECT 'PG_' || current_setting('server_version_num')::int / 10000 || '_' ||
            (SELECT catalog_version_no FROM pg_control_system())""")
        # Barman's id; the backup's own tars and backup.info go to Barman's directory.
        bid = barman_info.barman_id(session.backup_id)
        at = layout.barman_base_dir(bid)
        begin_time = datetime.now(timezone.utc)
        start_lsn = pg.backup_start(conn, label, fast)
        check_from = parse_lsn(start_lsn) if (checksums_on and verify_pages) else None
        # A failure from here on needs nothing undone on the server: the session's end (finally,
        # below) ends a non-exclusive backup, and the caller's session.abort() removes what
        # reached the sites.
        trees = []
        suffix = ".tar"
        for name, oid, loc in spaces:
            if loc.startswith("pg_tblspc/") or not loc:
                continue                       # an in-place tablespace is inside PGDATA's tar
            tree = TreeTar(loc, str(oid), check_from=check_from, prefix=version_dir)
            session.add_stream(f"{oid}{suffix}", tree, compression=compression, threads=threads,
                               kind=f"tablespace {name}", at=at)
            trees.append(tree)
        stopped: dict = {}

        def stop_then_label() -> list[tuple[str, bytes]]:
            # Every file has been read: end the backup in the same session. A standby's own
            # wait (archive_mode = always only) could not complete the segment and ignores the
            # primary's archiver: standby_done waits at the sites instead, after the tar.
            own_wait = archive_waits_here(root, archive_mode, info.in_recovery)
            lsn, labelfile, _spcmap = pg.backup_stop(conn, wait_for_archive=not info.in_recovery and not own_wait)
            if own_wait:
                tli = int(label_field(labelfile, "START TIMELINE") or info.timeline)  # a primary's stays
                wait_archived(root, segment_name(tli, parse_lsn(lsn), info.wal_segment_size, end=True))
            stopped.update(lsn=lsn, label=labelfile, time=datetime.now(timezone.utc),
                           timeline=pg.recovery_stop_timeline(conn) if info.in_recovery else None)
            # tablespace_map stays out of the tar: barman-cloud-restore relocates tablespaces
            # with pg_tblspc symlinks, and PostgreSQL would re-point them to the original
            # locations from the map on start (docs/base-backups.md).
            return [("backup_label", labelfile.encode())]

        # tablespace links, and tablespaces that live inside PGDATA (a restored cluster's
        # tablespaces/<oid>): each is in its own tar, never twice
        links = frozenset([f"pg_tblspc/{oid}" for _n, oid, loc in spaces if loc and not loc.startswith("pg_tblspc/")]
                          + [loc[len(root) + 1:] for _n, _o, loc in spaces if loc.startswith(root.rstrip("/") + "/")])
        data = TreeTar(root, "data", check_from=check_from, skip=links, last=("global/pg_control",),
                       tail=stop_then_label)
        session.add_stream(f"data{suffix}", data, compression=compression, threads=threads,
                           kind="PGDATA", at=at)
        trees.append(data)
        label_text = stopped["label"]
        timeline = int(label_field(label_text, "START TIMELINE") or info.timeline)
        stop_lsn = stopped["lsn"]
        # A standby's stop point is its minimum recovery point: on a newer timeline than the
        # start when its upstream was promoted during the backup.
        stop_timeline = stopped["timeline"] or timeline
        seg = info.wal_segment_size
        facts = {
            "barman_id": bid, "begin_lsn": start_lsn, "end_lsn": stop_lsn,
            "begin_wal": segment_name(timeline, parse_lsn(start_lsn), seg),
            "end_wal": segment_name(stop_timeline, parse_lsn(stop_lsn), seg, end=True),
            "stop_timeline": stop_timeline,
            "begin_time": begin_time.isoformat(), "end_time": stopped["time"].isoformat(),
            "timeline": timeline, "systemid": info.system_identifier, "backup_label": label_text,
            "tablespaces": [{"name": n, "oid": o, "location": loc} for n, o, loc in spaces],
            "from_standby": info.in_recovery, "data_checksums": checksums_on,
        }
        if info.in_recovery:
            facts["standby"] = standby_done(stop_lsn=stop_lsn, end_wal=facts["end_wal"], seg_size=seg,
                                            archive_mode=archive_mode)
        raw = sum(t.bytes_read for t in trees)
        stored = sum(a.size for a in session.artifacts if a.key and a.key.startswith(at))
        text = barman_info.render(
            server=cluster, pgdata=root, version_num=info.version_num, timeline=timeline,
            systemid=info.system_identifier, begin_time=begin_time, end_time=stopped["time"],
            begin_lsn=start_lsn, end_lsn=stop_lsn, begin_wal=facts["begin_wal"], end_wal=facts["end_wal"],
            begin_offset=parse_lsn(start_lsn) % seg, end_offset=parse_lsn(stop_lsn) % seg, size=stored,
            cluster_size=raw, backup_label=label_text, tablespaces=[s for s in spaces if not s[2].startswith("pg_tblspc/")],
            compression=BARMAN_SUFFIX.get(compression), wal_segment_size=seg, backup_name=session.backup_id,
            data_checksums=checksums_on)
        # The per-file list (what a file-level incremental and a delta restore will build on).
        files = {"version": 1, "tars": {t.name: t.files for t in trees}}
        session.add_stream(FILES_ARTIFACT, BytesIO(json.dumps(files).encode()),
                           compression="none", kind="per-file manifest (size, sha256)")
        # backup.info last of the tars' neighbours: Barman lists a backup once this exists.
        session.add_stream("backup.info", BytesIO(text.encode()), compression="none",
                           kind="Barman backup.info", at=at)
        return BaseResult(bid, facts, raw, sum(t.pages_checked for t in trees),
                          [str(b) if t.name == "data" else f"pg_tblspc/{t.name}/{b}" for t in trees for b in t.bad_pages])
    finally:
        conn.close()
