"""``method: barman`` — physical base backups in Barman's cloud layout at every site.

Since format 1.1 (docs/base-backups.md) pgvault takes the base itself (methods/basebackup.py):
one non-exclusive backup, PGDATA read once, one tar per tablespace streamed to every site of
the job at once, ``backup.info`` in Barman's format beside the tars at
``clusters/<cluster>/base/<barman id>/`` — at S3 sites (stock barman-cloud-backup-list and
barman-cloud-restore read them) and at local sites (stock ``tar`` restores them; no Barman
server, replication slot or receive-wal any more).

The name stays ``barman``: users' policies keep working, and the bytes are Barman's layout.
Backups taken by the earlier engine (a Barman server at a local site, barman-cloud-backup at
S3 sites) remain listable, restorable (restore/pitr.py keeps their routes) and expirable
(``expire`` below keeps their route).

The manifest records one base for all sites under ``facts.barman[<site>]`` (route
``pgvault``, the same LSN range at every site) plus each site's bytes stored."""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from .. import proc
from ..catalog import layout
from ..errors import PgvaultError
from . import barman_tools as bt
from . import base_standby
from .base import BackupFacts, Method
from .basebackup import CorruptPages, preflight, take_base
from .context import BackupContext

log = logging.getLogger("pgvault.barman")

# Compressions the engine writes that barman-cloud-restore 3.19 reads (.tar.lz4, .tar): it
# detects .tar.gz/.bz2/.snappy too but not .tar.zst (barman/cloud.py get_backup_files).
ENGINE_COMPRESSION = ("lz4", "none")
PARALLEL_WARNING = ("jobs.{job}.compression: {c} is written as lz4 by pgvault's base engine "
                    "(compressed on several cores; barman-cloud-restore reads it)")


def engine_compression(job) -> str:
    """The compression the engine uses for a job (lz4 unless the job says none).

    >>> from types import SimpleNamespace as J
    >>> engine_compression(J(compression="none")), engine_compression(J(compression="gzip"))
    ('none', 'lz4')
    """
    return job.compression if job.compression in ENGINE_COMPRESSION else "lz4"


def check(ctx: BackupContext) -> list[str]:
    if ctx.job.compression not in ENGINE_COMPRESSION:
        log.warning(PARALLEL_WARNING.format(job=ctx.job_name, c=ctx.job.compression))
    return preflight(ctx.conn) + base_standby.preflight(ctx.policy, ctx.server)


def server_paths(site_root: str, cluster: str) -> tuple[Path, Path]:
    """(Barman home, configuration file) of a local site that holds earlier Barman-server backups."""
    root = Path(site_root)
    return root / layout.barman_home(cluster), root / layout.barman_config(cluster)


def _iso(text: str) -> str:
    """Barman's time text as ISO 8601.

    >>> _iso("2026-11-25 22:19:39.305838+00:00")
    '2026-11-25T22:19:39.305838+00:00'
    """
    return datetime.fromisoformat(text).isoformat()


def backup(ctx: BackupContext, session) -> BackupFacts:
    from .. import pg

    # Any transaction id below this had finished before the backup began: a --to-xid target
    # older than it cannot be reached from this base (used by the planner).
    start_xmin = int(pg.scalar(ctx.conn, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
    job = ctx.job
    res = take_base(ctx.conninfo(), session, cluster=ctx.policy.cluster.name,
                    label=f"pgvault {ctx.job_name} {session.backup_id}", fast=job.immediate_checkpoint,
                    compression=engine_compression(job), threads=job.compression_threads,
                    verify_pages=job.verify_pages,
                    standby_done=lambda **stop: base_standby.finish(ctx.policy, **stop))
    if res.bad_pages:
        shown = ", ".join(res.bad_pages[:20]) + (f" and {len(res.bad_pages) - 20} more" if len(res.bad_pages) > 20 else "")
        if job.on_bad_page == "fail":
            raise CorruptPages(f"job {ctx.job_name!r}: {len(res.bad_pages)} page(s) fail their checksum: {shown}",
                               "the data files are damaged on disk: check the storage, restore the relation from a good "
                               f"backup, or set jobs.{ctx.job_name}.on_bad_page: warn to back up anyway")
        log.warning("job %s: %d page(s) fail their checksum (recorded in the manifest): %s",
                    ctx.job_name, len(res.bad_pages), shown)
    per_site = {}
    for name in session.catalogs:
        held = [a for i, a in enumerate(session.artifacts) if name in session.holders.get(i, ())]
        per_site[name] = {"route": "pgvault", "server": ctx.policy.cluster.name, "backup_id": res.barman_id,
                          **{k: res.facts[k] for k in ("begin_lsn", "end_lsn", "begin_wal", "end_wal", "begin_time",
                                                       "end_time", "timeline", "systemid")},
                          "stored_bytes": sum(a.size for a in held)}
    f = res.facts
    return BackupFacts(
        timeline=f["timeline"], start_lsn=f["begin_lsn"], stop_lsn=f["end_lsn"], start_wal=f["begin_wal"],
        stop_wal=f["end_wal"], start_time=f["begin_time"], stop_time=f["end_time"],
        facts={"barman": per_site, "start_xmin": start_xmin,
               "base": {**f, "bytes_read": res.bytes_read, "pages_checked": res.pages_checked,
                        "bad_pages": res.bad_pages, "compression": engine_compression(job)}},
        tool_versions={"postgresql": ctx.server.version},
        restore=("S3 site: barman-cloud-restore [--endpoint-url URL] s3://<bucket>/<prefix>/clusters <cluster> "
                 f"{res.barman_id} DEST [--tablespace NAME:DIR]; local site: mkdir DEST && lz4 -dc "
                 f"<site>/clusters/<cluster>/base/{res.barman_id}/data.tar.lz4 | tar -x -C DEST (and each <oid>.tar.lz4 "
                 "into its tablespace directory, linked from DEST/pg_tblspc/<oid>); then restore_command = "
                 "'pgvault wal-fetch %f %p' (or barman-cloud-wal-restore URL <cluster> %f %p) and recovery.signal"))


def expire(manifest, site) -> None:
    """Delete Barman's own copy of an expired base backup at ``site`` (called by expiry after
    pgvault's manifest and artifacts are gone).

    Local sites: `barman delete` on the generated server (its WAL is its own). S3 sites: the
    backup's prefix in Barman's cloud layout is removed directly, not with
    barman-cloud-backup-delete, because that tool also deletes the archive's WAL older than the
    next Barman backup — WAL that a snapshot base or a pinned backup (which Barman does not
    know about) may still need. pgvault's own WAL expiry decides that (docs/retention.md)."""
    facts = (manifest.facts.get("barman") or {}).get(site.name)
    if not facts:
        return
    if facts.get("route") == "barman-server":
        conf = site.capabilities.local_root / facts["config"]
        proc.run(bt.server_argv(str(conf), "delete", facts["server"], facts["backup_id"]))
        return
    prefix = f"{layout.barman_base_prefix(manifest.cluster)}{facts['backup_id']}/"
    for obj in list(site.list(prefix)):
        site.delete(obj.key)


METHOD = Method(
    name="barman", job_model="BarmanJob",
    tools=("tar",),
    check=check, backup=backup, expire=expire, restore_route="pitr", drill_route="pitr",
    pitr_base=True, per_site_bases=True,
    description="a physical base backup, PGDATA read once, in Barman's cloud layout at every site")
