"""The background shipper for ``wal.sync_sites`` < all: wal-push writes a file to its first
sites, spools it for the others and starts ``pgvault wal-ship --follow`` detached (launch.py),
which delivers the spool while yielding to a running wal-push. See docs/wal-archiving.md."""
from __future__ import annotations

import logging
import os
import time

from .launch import NICE, archiver_busy, shipper_lock
from .push import SHIP_WORKERS, Archiver
from .spool import Spool

log = logging.getLogger("pgvault.wal")

IDLE = 30.0            # seconds the shipper waits for more work before it exits
DEFER = 10.0           # at most this long a spooled file waits for a running wal-push to finish


# -- running it (wal-ship --follow)
def follow(arch: Archiver, *, idle: float = IDLE, workers: int = SHIP_WORKERS, poll: float = 0.1) -> dict[str, int]:
    """Ship the backlog as it is spooled, until nothing could be shipped for ``idle`` seconds;
    one shipper per spool (flock). Returns the files delivered per site."""
    from datetime import datetime, timezone

    spool = arch.spool
    total: dict[str, int] = {}
    arch.before_deliver = lambda site, stored: _yield_to_archiver(spool, site, stored)
    try:
        # Background work on the database host: PostgreSQL and the archiver come first.
        # (wal-push already set this when it started us.)
        if os.getpriority(os.PRIO_PROCESS, 0) < NICE:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError:
        pass
    while True:
        lock = shipper_lock(spool)
        if not lock.acquire(datetime.now(timezone.utc)):
            return total  # another shipper has it
        try:
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < idle:
                now = time.time()
                arch._failed = {s: "resting after a failure" for s in arch.sites if spool.is_resting(s, now)}
                got = arch.drain(workers=workers)
                arch._update_breakers(now)
                for s, n in got.items():
                    total[s] = total.get(s, 0) + n
                    log.info("shipped %d file(s) to %s; %d still owed there", n, s, len(spool.backlog(s)))
                if got:
                    quiet_since = time.monotonic()
                else:
                    time.sleep(poll)  # nothing shipped: wait for wal-push (or a site's retry time)
        finally:
            lock.release()
        # A push may have spooled a file after our last look but before the release, and seen
        # the lock still held: look once more, now that the lock is free.
        if not _shippable(arch):
            return total


def _shippable(arch: Archiver) -> bool:
    """Is anything owed to a site that is up, other than files this process failed to ship?"""
    now = time.time()
    return any(set(arch.spool.backlog(s)) - arch._refused.get(s, set())
               for s in arch.spool.sites_with_backlog() if s in arch.sites and not arch.spool.is_resting(s, now))


def _yield_to_archiver(spool: Spool, site: str, stored: str) -> None:
    """Let a running wal-push have the machine (its CPU and disk are what PostgreSQL waits on),
    but never hold a file back more than DEFER seconds after it was spooled: under continuous
    archiving the other sites still follow."""
    try:
        spooled_at = (spool.pending_dir / site / stored).stat().st_mtime
    except FileNotFoundError:
        return
    while time.time() < spooled_at + DEFER and archiver_busy(spool):
        time.sleep(0.05)
