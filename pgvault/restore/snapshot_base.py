"""A snapshot as a point-in-time-recovery base: materialise it as a plain data directory that
the PITR restore then configures for recovery (restore_command, target).

The copy comes from the local snapshots when the set still exists here (a clone, copied out),
else from a site (the chain received into a scratch dataset/subvolume, copied out). The
scratch copy is always removed. Recovery must not stop before the snapshot's LSN fence
(manifest ``stop_lsn``): the PITR planner only picks a base whose ``stop_lsn``/``stop_time``
precede the target."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from .. import pg, proc
from ..errors import PgvaultError, RestoreRefused
from .snapshot import clone_local, driver_for, receive_from_site
from .snapshot_prepare import remap_tablespace_map

log = logging.getLogger("pgvault.restore.snapshot")


def _copy(src: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    proc.run(["cp", "-a", f"{src}/.", str(dest)])


def fetch_base(policy, manifest, site: str | None, dest: str | os.PathLike, *, force: bool = False) -> str:
    """Materialise snapshot backup ``manifest`` as a data directory at ``dest``; return it."""
    dest = Path(dest)
    pg.ensure_empty_target(dest, force=force)
    drv = driver_for(policy, manifest.job)
    volumes = [s["volume"] for s in manifest.facts["snapshots"]]
    # The temporary copy goes beside the job's volumes, so it is on the same pool or file system.
    scratch = drv.scratch_target(volumes[0], uuid.uuid4().hex[:10])
    local = drv.local_sets().get(manifest.backup_id, {})
    if all(v in local for v in volumes):
        copy = clone_local(policy, manifest.job, manifest.backup_id, scratch)
    else:
        log.info("snapshot %s is not here any more: receiving it from a site", manifest.backup_id)
        copy = receive_from_site(policy, manifest.job, manifest.backup_id, scratch, from_site=site)
    try:
        _copy(copy.pgdata, dest)
        os.chmod(dest, 0o700)
        pg.chown_to_run_user(dest)
        src = Path(copy.pgdata)
        if (src / "pg_wal").is_symlink():
            (dest / "pg_wal").unlink()
            _copy(os.path.realpath(src / "pg_wal"), dest / "pg_wal")
        moved = {}
        tblspc = dest.parent / f"{dest.name}.tablespaces"
        for link in sorted((src / "pg_tblspc").iterdir()) if (src / "pg_tblspc").is_dir() else []:
            if not link.is_symlink():
                continue
            target = tblspc / link.name
            if target.exists():
                raise RestoreRefused(f"{target} already exists", "remove it or restore into another directory")
            _copy(os.path.realpath(link), target)
            (dest / "pg_tblspc" / link.name).unlink()
            (dest / "pg_tblspc" / link.name).symlink_to(target)
            moved[link.name] = str(target)
        tsmap = dest / "tablespace_map"
        if tsmap.exists():
            tsmap.write_text(remap_tablespace_map(tsmap.read_text(), moved))
    finally:
        try:
            drv.remove_scratch(scratch)
        except PgvaultError as exc:
            log.warning("cleanup of %s incomplete: %s", scratch, exc.message)
    return str(dest)

