"""A base backup taken on a hot standby: what makes it complete after ``pg_backup_stop``.

On a primary, ``pg_backup_stop(wait_for_archive => true)`` switches to a new WAL segment and
returns once the backup's last segment is archived. On a standby (PostgreSQL 15 docs,
"Making a Base Backup Using the Low Level API") neither holds:

- a standby cannot switch WAL: the stop segment is completed only when the *primary* leaves
  it (``pg_switch_wal``, ``archive_timeout``, or enough writes) — "you may wish to run
  pg_switch_wal on the primary";
- it waits for archiving only with ``archive_mode = always`` (its own archiver); with ``on``
  it does not archive at all, and ``pg_backup_stop`` returns at once with a NOTICE that the
  WAL "must be copied through other means" — here the primary's archiver, on the same
  timeline.

So the engine stops without waiting on a standby, and pgvault does what PostgreSQL does on a
primary, at the level that covers both modes — the sites: ``pg_switch_wal()`` on the primary
if it is still writing into the stop segment, then wait until the stop segment is at the WAL
sites, whichever node's archiver sent it. A base whose stop segment never arrives is not
consistent from the archive: the backup fails, saying why."""
from __future__ import annotations

import logging
import time

from .. import pg
from ..errors import PgvaultError
from ..lsn import parse_lsn
from .basebackup import ARCHIVE_WAIT  # as long as a primary's pg_backup_stop may wait

log = logging.getLogger("pgvault.basebackup")

POLL = 0.5


def preflight(policy, server) -> list[str]:
    """Problems that stop a base on a standby before it starts (it needs an archive to be read
    back at all: a standby base holds none of its WAL)."""
    if server.in_recovery and not policy.wal.sites:
        return ["a base backup on a standby needs WAL archiving: no wal.sites are configured "
                "(HINT: list the sites that receive WAL under wal.sites, archive_command = 'pgvault wal-push %p')"]
    return []


def close_on_primary(policy, stop_lsn: str, seg_size: int) -> bool:
    """Ask the primary to leave the backup's stop segment (True if it switched). Best effort:
    without it the segment is completed by ``archive_timeout`` or the primary's next writes."""
    from ..patroni import job_conninfo

    segno = (parse_lsn(stop_lsn) - 1) // seg_size
    try:
        conninfo, _member = job_conninfo(policy, "primary")
        conn = pg.connect(conninfo)
        try:
            return pg.close_segment(conn, segno, seg_size)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - the wait below reports what matters
        log.warning("could not switch WAL on the primary (the stop segment waits for archive_timeout or "
                    "the primary's writes): %s", getattr(exc, "message", exc))
        return False


def holders(sites: dict, cluster: str, name: str) -> set[str]:
    """The sites that hold WAL file ``name`` now (an unreachable site holds nothing)."""
    from ..wal.item import stored_variants

    out = set()
    for n, site in sites.items():
        try:
            if stored_variants(site, cluster, name):
                out.add(n)
        except (PgvaultError, OSError) as exc:
            log.debug("site %s: %s", n, getattr(exc, "message", exc))
    return out


def wait_archived(policy, end_wal: str, *, archive_mode: str, switched: bool, timeout: float = ARCHIVE_WAIT) -> set[str]:
    """Wait until every WAL site holds ``end_wal``; the sites that do. At the deadline, some
    sites are enough (the others are owed it through the archiving node's spool, as wal-push
    reports a file archived); none is an error with the likely cause."""
    from ..sites import open_sites

    sites = open_sites(policy, policy.wal.sites)
    deadline = time.monotonic() + timeout
    while True:
        have = holders(sites, policy.cluster.name, end_wal)
        if len(have) == len(sites):
            return have
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)  # polling the sites: another node's archiver sends it, nothing to join
    if have:
        log.warning("the standby base's last WAL segment %s is at %s only after %.0fs (not yet at %s)",
                    end_wal, ", ".join(sorted(have)), timeout, ", ".join(sorted(set(sites) - have)))
        return have
    raise PgvaultError(
        f"the base backup taken on a standby is not consistent from the archive: its last WAL segment {end_wal} "
        f"reached no WAL site ({', '.join(sites)}) within {timeout:.0f}s "
        f"(standby archive_mode = {archive_mode}; {'pg_switch_wal() ran' if switched else 'no pg_switch_wal() ran'} "
        "on the primary)",
        ("with archive_mode = on a standby archives nothing: the primary's archive_command must send the segment "
         "(pgvault wal-status shows the archive's newest file), or set archive_mode = always on the standby; "
         "if the primary could not be reached or may not run pg_switch_wal(), set archive_timeout on the primary "
         "or GRANT EXECUTE ON FUNCTION pg_switch_wal() to the backup role"
         if archive_mode != "always" else
         "the standby and the primary archive (archive_mode = always): check archive_command in both server "
         "logs and pgvault wal-status; an idle primary with archive_timeout = 0 completes the segment only "
         "after pg_switch_wal(), which pgvault could not run there"))


def finish(policy, *, stop_lsn: str, end_wal: str, seg_size: int, archive_mode: str,
           timeout: float = ARCHIVE_WAIT) -> dict:
    """After ``pg_backup_stop`` on a standby: complete the stop segment and wait for it at the
    WAL sites. Returns facts for the manifest (``archived_at``, ``primary_switched``)."""
    switched = close_on_primary(policy, stop_lsn, seg_size)
    started = time.monotonic()
    have = wait_archived(policy, end_wal, archive_mode=archive_mode, switched=switched, timeout=timeout)
    return {"archive_mode": archive_mode, "primary_switched": switched, "stop_wal_at": sorted(have),
            "archive_wait_seconds": round(time.monotonic() - started, 2)}
