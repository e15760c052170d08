"""What ZFS and btrfs snapshots share: where PostgreSQL's files live, which consistency rule
applies, and the snapshot sequence with its LSN fence.

Rules (docs/snapshots.md):
- *atomic*: PGDATA, pg_wal and every tablespace sit on ONE volume (dataset/subvolume). One
  snapshot of it is crash-consistent. Right after it pgvault records the WAL insert position
  (the LSN fence): the snapshot holds no WAL beyond it, so recovery to any target at or after
  the fence is consistent, and no target before it is ever allowed.
- *backup-api*: they span several volumes. Snapshots of several volumes are not simultaneous
  (btrfs never; ZFS only via ``-r`` or multi-name calls that zfs-fuse lacks, and never across
  pools), so one session brackets them with pg_backup_start/pg_backup_stop and the returned
  backup_label and tablespace_map are kept with the snapshot. The volume holding pg_wal is
  snapshotted after pg_backup_stop, so a clone holds all WAL up to the end of the backup and
  starts without an archive. A temporary replication slot keeps that WAL from being recycled
  while the backup runs.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from .. import pg
from ..errors import DatabaseError, PgvaultError, UsageError
from ..lsn import parse_lsn

log = logging.getLogger("pgvault.snapshot")

ATOMIC = "atomic"
BACKUP_API = "backup-api"


@dataclass(frozen=True)
class Volume:
    """A dataset (zfs) or subvolume (btrfs) the job snapshots."""
    name: str   # zfs: pool/ds; btrfs: the subvolume's absolute path
    path: str   # where its files are visible (mountpoint / subvolume path)
    dev: int    # st_dev of ``path``: every file on the volume shares it


@dataclass(frozen=True)
class Snap:
    volume: str
    name: str       # zfs: pool/ds@ID; btrfs: absolute path of the read-only snapshot
    ident: str = ""  # zfs guid / btrfs uuid: the same name may later be a different snapshot


@dataclass(frozen=True)
class Placement:
    role: str    # pgdata | pg_wal | tablespace:<oid>
    volume: str
    rel: str     # path relative to the volume root ("" = the root itself)


@dataclass
class Taken:
    backup_id: str
    mode: str
    snaps: list[Snap]
    placements: list[Placement]
    start_lsn: str
    stop_lsn: str           # the LSN fence: recovery targets before it are refused
    start_wal: str
    stop_wal: str
    timeline: int
    start_time: datetime
    stop_time: datetime
    backup_label: str | None = None
    tablespace_map: str | None = None
    backup_stop_lsn: str | None = None
    extra: dict = field(default_factory=dict)

    def meta(self, cluster: str, job: str, system_identifier: str) -> dict:
        """What is stored on the snapshot itself (ZFS user properties / btrfs sidecar)."""
        return {"backup_id": self.backup_id, "cluster": cluster, "job": job,
                "system_identifier": system_identifier, "mode": self.mode,
                "start_lsn": self.start_lsn, "stop_lsn": self.stop_lsn, "fence_lsn": self.stop_lsn,
                "start_wal": self.start_wal, "stop_wal": self.stop_wal, "timeline": self.timeline,
                "start_time": self.start_time.isoformat(), "stop_time": self.stop_time.isoformat(),
                "backup_label": self.backup_label, "tablespace_map": self.tablespace_map,
                "placements": [asdict(p) for p in self.placements],
                "snapshots": [asdict(s) for s in self.snaps]}


class Driver(Protocol):
    """One file system's snapshot operations: ``Driver(job_name, job)``. The backup side needs
    the job; the restore side (from ``make_target`` on) works from a manifest and accepts
    ``job=None`` (except ``drill_target``, which places a copy beside the job's volumes).
    Restore and drill code call only these, so they never branch on the kind of file system."""

    kind: str   # the method's name (stream names, manifests)

    # backup side
    def volumes(self) -> list[Volume]: ...
    def snapshot(self, vol: Volume, backup_id: str) -> Snap: ...
    def destroy(self, snap: Snap) -> None: ...
    def write_meta(self, snaps: list[Snap], backup_id: str, meta: dict) -> None: ...
    def local_sets(self) -> dict[str, dict[str, Snap]]: ...
    def read_meta(self, snap: Snap) -> dict: ...
    def send_argv(self, snap: Snap, base: Snap | None) -> list[str]: ...
    def versions(self) -> dict[str, str]: ...
    def restore_hint(self) -> str: ...

    # restore side: a new target, each volume at TARGET/<short>; ``created`` collects what
    # cleanup must remove if the restore fails part-way.
    def make_target(self, target: str) -> None: ...
    def clone(self, snap: Snap, target: str, short: str, created: list[str]) -> str: ...
    def receive_argv(self, target: str, short: str, volume: str, backup_id: str, incremental: bool,
                     created: list[str]) -> list[str]: ...
    def received(self, target: str, short: str, volume: str, backup_id: str, created: list[str]) -> str: ...
    def cleanup(self, target: str, created: list[str]) -> None: ...
    def scratch_target(self, volume: str, tag: str) -> str: ...
    def remove_scratch(self, scratch: str) -> None: ...
    def drill_target(self, receive_into: str | None, name: str) -> str: ...
    def remove_received(self, target: str) -> None: ...


def place(found: dict[str, tuple[str, int]], volumes: list[Volume]) -> list[Placement]:
    """Map each PostgreSQL location (role -> (real path, st_dev)) to the volume holding it.

    >>> v = [Volume("p/data", "/m/data", 41), Volume("p/wal", "/m/wal", 42)]
    >>> [(p.role, p.volume, p.rel) for p in place({"pgdata": ("/m/data/pg", 41), "pg_wal": ("/m/wal/w", 42)}, v)]
    [('pgdata', 'p/data', 'pg'), ('pg_wal', 'p/wal', 'w')]
    >>> place({"pgdata": ("/elsewhere", 7)}, v)
    Traceback (most recent call last):
    ...
    pgvault.errors.UsageError: pgdata (/elsewhere) is not on any volume of the job (p/data, p/wal)
    """
    by_dev = {v.dev: v for v in volumes}
    out, missing = [], []
    for role, (path, dev) in found.items():
        vol = by_dev.get(dev)
        if vol is None or not (path == vol.path or path.startswith(vol.path.rstrip("/") + "/")):
            missing.append(f"{role} ({path})")
            continue
        out.append(Placement(role, vol.name, os.path.relpath(path, vol.path) if path != vol.path else ""))
    if missing:
        raise UsageError(f"{', '.join(missing)} is not on any volume of the job ({', '.join(v.name for v in volumes)})",
                         "list every dataset/subvolume that holds PGDATA, pg_wal and tablespaces in the job; "
                         "a snapshot that misses one of them cannot restore")
    return out


def mode_for(placements: list[Placement]) -> str:
    """
    >>> mode_for([Placement("pgdata", "a", ""), Placement("pg_wal", "a", "pg_wal")])
    'atomic'
    >>> mode_for([Placement("pgdata", "a", ""), Placement("pg_wal", "b", "")])
    'backup-api'
    """
    return ATOMIC if len({p.volume for p in placements}) == 1 else BACKUP_API


def order(volumes: list[Volume], placements: list[Placement]) -> tuple[list[Volume], list[Volume]]:
    """(volumes snapshotted inside the backup window, volumes snapshotted after it): the volume
    holding pg_wal goes last so it holds every WAL record up to the end of the backup.

    >>> vs = [Volume("w", "/w", 1), Volume("d", "/d", 2)]
    >>> [[v.name for v in part] for part in order(vs, [Placement("pgdata", "d", ""), Placement("pg_wal", "w", "")])]
    [['d'], ['w']]
    """
    wal = {p.volume for p in placements if p.role == "pg_wal"}
    return [v for v in volumes if v.name not in wal], [v for v in volumes if v.name in wal]


def locate(conn, pgdata: str) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """Where PGDATA, pg_wal and the tablespaces really are (symlinks resolved), with st_dev;
    and problems such as a nested mount or subvolume inside PGDATA (a snapshot of PGDATA's
    volume would show it as an empty directory)."""
    root = Path(os.path.realpath(pgdata))
    found = {"pgdata": (str(root), root.stat().st_dev)}
    wal = Path(os.path.realpath(root / "pg_wal"))
    found["pg_wal"] = (str(wal), wal.stat().st_dev)
    for oid, in pg.query(conn, "SELECT oid::text FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')"):
        real = Path(os.path.realpath(root / "pg_tblspc" / oid))
        found[f"tablespace:{oid}"] = (str(real), real.stat().st_dev)
    problems = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.stat().st_dev != found["pgdata"][1]:
            problems.append(f"{entry} is a separate mount or subvolume nested inside PGDATA; a snapshot "
                            "of PGDATA's volume would hold it as an empty directory (HINT: make it a symlink "
                            "to its own volume listed in the job, or move it into PGDATA's volume)")
    return found, problems


def data_directory(ctx) -> str:
    pgdata = ctx.server.data_directory or ctx.policy.cluster.pgdata
    if not pgdata:
        raise UsageError("the data directory is unknown", "set cluster.pgdata in the policy")
    return pgdata


def plan_layout(ctx, volumes: list[Volume]) -> tuple[list[Placement], str]:
    found, problems = locate(ctx.conn, data_directory(ctx))
    if problems:
        raise UsageError(f"job {ctx.job_name!r}: " + "; ".join(problems))
    placements = place(found, volumes)
    return placements, mode_for(placements)


def _walfile(conn, lsn: str) -> str:
    return pg.scalar(conn, "SELECT pg_walfile_name(%s::pg_lsn)", [lsn])


def take(ctx, driver: Driver, backup_id: str, volumes: list[Volume], placements: list[Placement],
         mode: str) -> Taken:
    """Take one consistent snapshot set; on any failure destroy what was taken."""
    conn = ctx.conn
    during, after = order(volumes, placements) if mode == BACKUP_API else (volumes, [])
    slot = f"pgvault_{backup_id.lower()}"
    snaps: list[Snap] = []
    in_backup = False
    label = tsmap = backup_stop = None
    started = datetime.now(timezone.utc)
    try:
        if mode == BACKUP_API:
            # Reserve WAL from here on: a checkpoint during the window must not recycle the WAL
            # the snapshot of pg_wal's volume has to hold.
            pg.query(conn, "SELECT pg_create_physical_replication_slot(%s, true, true)", [slot])
            start_lsn = pg.scalar(conn, "SELECT pg_backup_start(%s, true)::text", [f"pgvault {ctx.job_name} {backup_id}"])
            in_backup = True
        else:
            # Replay of a crash-consistent copy starts at its last checkpoint's redo, which is at
            # or after the redo read here (checkpoints only move forward).
            start_lsn = pg.scalar(conn, "SELECT redo_lsn::text FROM pg_control_checkpoint()")
        for vol in during:
            snaps.append(driver.snapshot(vol, backup_id))
        if mode == BACKUP_API:
            backup_stop, label, tsmap = pg.query(conn, "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)")[0]
            in_backup = False
        for vol in after:
            snaps.append(driver.snapshot(vol, backup_id))
        fence = pg.scalar(conn, "SELECT pg_current_wal_insert_lsn()::text")
        stop_time = datetime.now(timezone.utc)
        stop_wal = _walfile(conn, fence)
        start_wal = _walfile(conn, start_lsn)
    except BaseException as exc:
        failure = exc
        if in_backup:
            try:
                pg.query(conn, "SELECT pg_backup_stop(false)")
            except Exception as exc:  # the connection may be gone; the server ends the backup then
                log.warning("could not end the backup: %s", exc)
        for s in reversed(snaps):
            try:
                driver.destroy(s)
            except Exception as exc:
                log.warning("could not remove partial snapshot %s: %s", s.name, exc)
        import psycopg

        if isinstance(failure, psycopg.Error):
            raise DatabaseError(f"snapshot {backup_id} failed: {str(failure).strip()}",
                                "no snapshot was kept; see the PostgreSQL server log (backup-api mode needs "
                                "one free replication slot: max_replication_slots)") from failure
        raise
    finally:
        if mode == BACKUP_API:
            try:
                pg.query(conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [slot])
            except Exception as exc:
                log.warning("could not drop temporary slot %s: %s", slot, exc)
    if mode == BACKUP_API and label:
        for line in label.splitlines():
            if line.startswith("START WAL LOCATION:") and "(file " in line:
                start_wal = line.split("(file ")[1].rstrip(")")
    if backup_stop and parse_lsn(backup_stop) > parse_lsn(fence):
        fence = backup_stop
    return Taken(backup_id, mode, snaps, placements, start_lsn, fence, start_wal, stop_wal,
                 int(stop_wal[:8], 16), started, stop_time, label, tsmap or None, backup_stop)


def check_server(ctx) -> list[str]:
    problems = []
    if ctx.server.in_recovery:
        problems.append("the server is a standby; snapshot jobs run against the primary "
                        "(HINT: point cluster.conninfo at the primary)")
    if not ctx.job.sites:
        problems.append(f"jobs.{ctx.job_name}.sites is empty (HINT: name at least one site: the manifest "
                        "that makes a snapshot restorable and usable for PITR lives there)")
    try:
        data_directory(ctx)
    except PgvaultError as exc:
        problems.append(f"{exc.message} (HINT: {exc.hint})")
    return problems
