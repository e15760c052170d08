"""Replicating snapshots to sites and pruning local ones.

Each site gets every snapshot as one stream per volume: incremental from the newest snapshot
that site already holds and that still exists here (same identity: guid/uuid), full when there
is none. Sites that hold different bases get different streams, so sends are grouped by base;
the manifest's ``parent`` names the base at that site. A local snapshot that is the newest
copy some site holds is never pruned: the next incremental for that site needs it."""
from __future__ import annotations

import io
import logging
from dataclasses import asdict
from urllib.parse import quote

from .. import proc
from ..errors import PgvaultError, SiteError
from .base import BackupFacts
from .snapshot import Driver, Snap, Taken, Volume, plan_layout, take

log = logging.getLogger("pgvault.snapshot")


def stream_name(kind: str, volume: str, base_id: str | None) -> str:
    """Artifact name of one volume's send stream (the base is part of the name).

    >>> stream_name("zfs", "tank/pg", None)
    'streams/tank%2Fpg.full.zfs'
    >>> stream_name("btrfs", "/srv/pg", "20261125T221530Z")
    'streams/%2Fsrv%2Fpg.from-20261125T221530Z.btrfs'
    """
    what = "full" if base_id is None else f"from-{base_id}"
    return f"streams/{quote(volume, safe='')}.{what}.{kind}"


def same_set(recorded: list[dict], local: dict[str, Snap], volumes: list[str]) -> bool:
    """Does a manifest's snapshot set still exist here, for exactly these volumes?

    >>> s = Snap("a", "a@1", "g1")
    >>> same_set([{"volume": "a", "name": "a@1", "ident": "g1"}], {"a": s}, ["a"])
    True
    >>> same_set([{"volume": "a", "name": "a@1", "ident": "other"}], {"a": s}, ["a"])
    False
    """
    if sorted(r["volume"] for r in recorded) != sorted(volumes):
        return False
    for r in recorded:
        snap = local.get(r["volume"])
        if snap is None or snap.name != r["name"] or (r.get("ident") and snap.ident != r["ident"]):
            return False
    return True


def site_bases(catalogs: dict, job: str, method: str, local: dict[str, dict[str, Snap]],
               volumes: list[str]) -> dict[str, str | None]:
    """For each site: the backup id to send incrementally from, or None (full)."""
    out = {}
    for name, cat in catalogs.items():
        base = None
        for m in sorted(cat.manifests(), key=lambda m: m.backup_id, reverse=True):
            if m.job != job or m.method != method:
                continue
            if m.backup_id in local and same_set(m.facts.get("snapshots", []), local[m.backup_id], volumes):
                base = m.backup_id
                break
        out[name] = base
    return out


def groups(bases: dict[str, str | None]) -> dict[str | None, list[str]]:
    """Sites grouped by base, full sends first.

    >>> groups({"a": "1", "b": None, "c": "1"})
    {None: ['b'], '1': ['a', 'c']}
    """
    out: dict[str | None, list[str]] = {}
    for site, base in sorted(bases.items(), key=lambda kv: (kv[1] is not None, kv[1] or "", kv[0])):
        out.setdefault(base, []).append(site)
    return out


def prune_plan(local_ids: list[str], keep: int | None, protected: set[str]) -> list[str]:
    """Local snapshot sets to destroy: beyond the newest ``keep``, never a protected one.

    >>> prune_plan(["1", "2", "3", "4"], 2, {"1"})
    ['2']
    >>> prune_plan(["1", "2"], None, set())
    []
    """
    if keep is None:
        return []
    ordered = sorted(local_ids)
    old = ordered[:-keep] if keep else ordered
    return [i for i in old if i not in protected]


def _send(session, driver: Driver, taken: Taken, base_id: str | None, base: dict[str, Snap],
          sites: list[str], job, progress) -> dict[str, str]:
    arts = {}
    for snap in taken.snaps:
        name = stream_name(driver.kind, snap.volume, base_id)
        argv = driver.send_argv(snap, base.get(snap.volume) if base_id else None)
        with proc.Stream(argv, hint=f"check that {snap.name} exists and that the {driver.kind} tools work") as s:
            art = session.add_stream(name, s.stdout, level=getattr(job, "compression_level", 1),
                                     threads=2, kind=f"{driver.kind} send", sites=sites,
                                     progress=(lambda n, v=snap.volume: progress(v, n)) if progress else None)
            s.finish()
        arts[snap.volume] = art.name
    return arts


def backup(ctx, session, driver: Driver) -> BackupFacts:
    """Take a consistent snapshot set, store its metadata on it, send it to every site."""
    volumes: list[Volume] = driver.volumes()
    placements, mode = plan_layout(ctx, volumes)
    local = driver.local_sets()
    names = [v.name for v in volumes]
    bases = site_bases(session.catalogs, ctx.job_name, driver.kind, local, names)
    taken = take(ctx, driver, session.backup_id, volumes, placements, mode)
    meta = taken.meta(ctx.policy.cluster.name, ctx.job_name, ctx.server.system_identifier)
    try:
        driver.write_meta(taken.snaps, taken.backup_id, meta)
        if taken.backup_label:
            session.add_stream("backup_label", io.BytesIO(taken.backup_label.encode()), compression="none",
                               kind="backup_label")
        if taken.tablespace_map:
            session.add_stream("tablespace_map", io.BytesIO(taken.tablespace_map.encode()), compression="none",
                               kind="tablespace_map")
        for base_id, sites in groups(bases).items():
            live = [s for s in sites if s in session.catalogs]
            if not live:
                continue
            try:
                arts = _send(session, driver, taken, base_id, local.get(base_id, {}), live, ctx.job, ctx.progress)
            except SiteError as exc:  # every site of this group failed; the others may still commit
                log.warning("sites %s failed: %s", ", ".join(live), exc.message)
                continue
            for s in live:
                session.set_site_fields(s, parent=base_id, facts={"streams": arts, "incremental": base_id is not None})
        if not session.catalogs:
            raise PgvaultError(f"snapshot {taken.backup_id} reached no site", "check the sites with pgvault check")
    except BaseException:
        for s in reversed(taken.snaps):
            try:
                driver.destroy(s)
            except Exception as exc:
                log.warning("could not remove snapshot %s: %s", s.name, exc)
        raise
    _prune(ctx, driver, session, bases, local, taken.backup_id)
    # facts: mode (atomic | backup-api), fence_lsn (no recovery target before it),
    # backup_stop_lsn, snapshots, placements, backup_label, tablespace_map (docs/snapshots.md).
    return BackupFacts(
        timeline=taken.timeline, start_lsn=taken.start_lsn, stop_lsn=taken.stop_lsn,
        start_wal=taken.start_wal, stop_wal=taken.stop_wal, start_time=taken.start_time, stop_time=taken.stop_time,
        facts={"mode": mode, "fence_lsn": taken.stop_lsn, "backup_stop_lsn": taken.backup_stop_lsn,
               "snapshots": [asdict(s) for s in taken.snaps], "placements": [asdict(p) for p in placements],
               "backup_label": taken.backup_label, "tablespace_map": taken.tablespace_map},
        tool_versions=driver.versions(), restore=driver.restore_hint())


def _prune(ctx, driver: Driver, session, bases: dict, local: dict, new_id: str) -> None:
    if set(ctx.job.sites) - set(bases):
        # A site we could not read may depend on any local snapshot: keep them all this time.
        log.warning("job %s: not every site was reachable; local snapshots are not pruned", ctx.job_name)
        return
    protected = {b for b in bases.values() if b} | {new_id}
    keep = ctx.job.keep_local.count
    for bid in prune_plan(list(local) + [new_id], keep, protected):
        for snap in local.get(bid, {}).values():
            try:
                driver.destroy(snap)
            except PgvaultError as exc:  # e.g. a clone still depends on it
                log.warning("kept snapshot %s: %s", snap.name, exc.message)
