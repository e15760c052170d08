"""In-progress markers at the sites: ``running/<backup-id>.json`` says a backup is being
written, by which host and node, since when. Written before the backup's first artifact and
removed after its manifest (or abort); ``expire`` on any node leaves a site's debris alone while
a live marker is there, so a replica's expire never deletes the backup the leader is writing
(pgbackrest#2622). A marker whose writer died goes stale after ``stale_after`` (the job's
timeout, else a day, plus an hour) and stops protecting anything."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..errors import PgvaultError
from . import layout

log = logging.getLogger("pgvault.running")

DEFAULT_LIFETIME = timedelta(days=1)
MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class Marker:
    backup_id: str
    job: str
    host: str
    node: str | None
    pid: int
    started_at: datetime
    stale_after: datetime

    def live(self, now: datetime) -> bool:
        return now < self.stale_after

    def describe(self) -> str:
        who = f"node {self.node} ({self.host})" if self.node else f"host {self.host}"
        return f"{self.backup_id} (job {self.job}) on {who}, pid {self.pid}, since {self.started_at:%Y-%m-%d %H:%M:%SZ}"


def _document(backup_id: str, job: str, timeout: timedelta | None, node: str | None, now: datetime) -> bytes:
    """The marker's bytes. Host, pid and start time to the microsecond make them this process's
    own: a claim recognises its marker by reading these bytes back."""
    doc = {"version": layout.FORMAT_VERSION, "backup_id": backup_id, "job": job, "host": os.uname().nodename,
           "node": node, "pid": os.getpid(), "started_at": now.isoformat(),
           "stale_after": (now + (timeout or DEFAULT_LIFETIME) + MARGIN).isoformat()}
    return (json.dumps(doc, indent=2) + "\n").encode()


def claim(catalogs: dict, backup_id: str, job: str, *, timeout: timedelta | None, node: str | None = None,
          now: datetime | None = None) -> bool:
    """Take ``backup_id`` for this process by creating its marker at every site, in the sites'
    order, with the site's test-and-set (``create_exclusive``). False when another job (on any
    node) holds the id at one of them: the markers this call created are removed again and the
    caller tries the next id. Two jobs starting in the same second on two nodes would otherwise
    write one backup directory.

    Each marker is read back (one get): the read decides whether it is ours, not the create's
    answer — a create repeated after a lost answer finds its own marker, and an S3-compatible
    store that ignores ``If-None-Match`` overwrites a rival's (the rival then sees foreign
    bytes and yields; only a read landing between the two writes can still let both run, the
    race all claims had before sites had a test-and-set). A site that cannot be written is
    logged and skipped: the backup fails there later anyway; no reachable site at all is True."""
    from ..sites.base import get_or_none

    data = _document(backup_id, job, timeout, node, now or datetime.now(timezone.utc))
    created = []
    for name, cat in catalogs.items():
        key = layout.running_key(cat.cluster, backup_id)
        try:
            cat.site.create_exclusive(key, data)
            mine = get_or_none(cat.site, key) == data
        except (PgvaultError, OSError) as exc:
            log.warning("site %s: in-progress marker of %s not written: %s", name, backup_id,
                        getattr(exc, "message", exc))
            continue
        if not mine:
            log.info("site %s: backup id %s is taken by another job; trying the next", name, backup_id)
            end({n: catalogs[n] for n in created}, backup_id)
            return False
        created.append(name)
    return True


def end(catalogs: dict, backup_id: str) -> None:
    for name, cat in catalogs.items():
        try:
            cat.site.delete(layout.running_key(cat.cluster, backup_id))
        except PgvaultError as exc:  # it goes stale by itself
            log.warning("site %s: in-progress marker of %s not removed: %s", name, backup_id, exc.message)


def markers(site, cluster: str) -> list[Marker]:
    """Every marker at ``site`` (unreadable ones are skipped: they protect nothing they name)."""
    from ..sites.base import get_bytes

    out = []
    pre = layout.running_prefix(cluster)
    for obj in site.list(pre):
        if not obj.key.endswith(".json"):
            continue
        try:
            d = json.loads(get_bytes(site, obj.key))
            out.append(Marker(d["backup_id"], d.get("job", "?"), d.get("host", "?"), d.get("node"), int(d.get("pid", 0)),
                              datetime.fromisoformat(d["started_at"]), datetime.fromisoformat(d["stale_after"])))
        except (PgvaultError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable in-progress marker %s: %s", obj.key, exc)
    return out
