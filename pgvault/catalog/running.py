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


def begin(catalogs: dict, backup_id: str, job: str, *, timeout: timedelta | None, node: str | None = None,
          now: datetime | None = None) -> None:
    """Write the marker at every site (a site that refuses it fails the backup there later
    anyway; it is logged, not fatal)."""
    from ..sites.base import put_bytes

    now = now or datetime.now(timezone.utc)
    doc = {"version": layout.FORMAT_VERSION, "backup_id": backup_id, "job": job, "host": os.uname().nodename,
           "node": node, "pid": os.getpid(), "started_at": now.isoformat(),
           "stale_after": (now + (timeout or DEFAULT_LIFETIME) + MARGIN).isoformat()}
    for name, cat in catalogs.items():
        try:
            put_bytes(cat.site, layout.running_key(cat.cluster, backup_id), (json.dumps(doc, indent=2) + "\n").encode())
        except PgvaultError as exc:
            log.warning("site %s: in-progress marker of %s not written: %s", name, backup_id, exc.message)


def claim(catalogs: dict, backup_id: str, job: str, **kw) -> bool:
    """Take ``backup_id`` for this process: False when another job (on any node) holds a marker
    for it, or overwrote ours meanwhile — two jobs starting in the same second on two nodes
    would otherwise write one backup directory. The caller then tries the next id."""
    from ..sites.base import get_or_none

    for cat in catalogs.values():
        try:
            if cat.site.head(layout.running_key(cat.cluster, backup_id)) is not None:
                return False
        except (PgvaultError, OSError):
            pass
    begin(catalogs, backup_id, job, **kw)
    for cat in catalogs.values():
        try:
            raw = get_or_none(cat.site, layout.running_key(cat.cluster, backup_id))
        except (PgvaultError, OSError):
            continue
        if raw is None:
            continue
        d = json.loads(raw)
        return (d.get("host"), d.get("pid"), d.get("job")) == (os.uname().nodename, os.getpid(), job)
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
