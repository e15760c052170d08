"""Make a cloned or received snapshot safe to start (clone hygiene):

- no stale ``postmaster.pid`` / ``postmaster.opts`` from the production server;
- replication slots dropped (``pg_replslot`` emptied): a clone must not hold WAL for replicas
  it will never serve;
- ``archive_mode = off``: a clone never writes into the production WAL archive;
- its own port;
- pg_wal and tablespace symlinks (and tablespace_map) pointing at the clone's volumes, never
  at production's;
- in backup-api mode, the backup_label and tablespace_map returned by pg_backup_stop written
  back into PGDATA (byte-for-byte, except tablespace paths remapped to the clone).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import pg
from ..errors import RestoreRefused


@dataclass(frozen=True)
class Prepared:
    pgdata: str
    port: int
    paths: dict[str, str]   # volume -> where its copy is


def new_location(placement: dict, paths: dict[str, str]) -> str:
    """Where a placement lives in the copy.

    >>> new_location({"role": "pg_wal", "volume": "p/wal", "rel": "w"}, {"p/wal": "/c/wal"})
    '/c/wal/w'
    >>> new_location({"role": "pgdata", "volume": "p/d", "rel": ""}, {"p/d": "/c/d"})
    '/c/d'
    """
    base = paths[placement["volume"]]
    return os.path.join(base, placement["rel"]) if placement["rel"] else base


def remap_tablespace_map(text: str, new: dict[str, str]) -> str:
    """Rewrite ``<oid> <path>`` lines of a tablespace_map to the copy's paths.

    >>> remap_tablespace_map("16384 /srv/ts1\\n", {"16384": "/clone/ts1"})
    '16384 /clone/ts1\\n'
    """
    out = []
    for line in text.splitlines():
        oid, _, path = line.partition(" ")
        out.append(f"{oid} {new.get(oid, path)}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o600)
    pg.chown_to_run_user(path)


def _relink(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.symlink_to(target)
    os.lchown(link, *_ids())


def _ids() -> tuple[int, int]:
    import pwd

    user = pg.run_user()
    if not user:
        return os.getuid(), os.getgid()
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def prepare(meta: dict, paths: dict[str, str], port: int) -> Prepared:
    """Apply clone hygiene to the copy described by ``meta`` (snapshot metadata or manifest
    facts) whose volumes now live at ``paths``. Returns the copy's PGDATA."""
    placements = meta["placements"]
    pgdata = Path(new_location(next(p for p in placements if p["role"] == "pgdata"), paths))
    if not (pgdata / "PG_VERSION").exists():
        raise RestoreRefused(f"{pgdata} does not hold a PostgreSQL data directory",
                             "the snapshot's metadata does not match its contents")
    for stale in ("postmaster.pid", "postmaster.opts", "recovery.signal", "standby.signal"):
        (pgdata / stale).unlink(missing_ok=True)
    slots = pgdata / "pg_replslot"
    for entry in (slots.iterdir() if slots.is_dir() else []):
        shutil.rmtree(entry, ignore_errors=True)
    new_ts = {}
    for p in placements:
        if p["role"] == "pg_wal":
            wal = new_location(p, paths)
            if os.path.realpath(pgdata / "pg_wal") != os.path.realpath(wal):
                _relink(pgdata / "pg_wal", wal)
        elif p["role"].startswith("tablespace:"):
            oid = p["role"].split(":", 1)[1]
            new_ts[oid] = new_location(p, paths)
            _relink(pgdata / "pg_tblspc" / oid, new_ts[oid])
    if meta.get("mode") == "backup-api" and meta.get("backup_label"):
        _write(pgdata / "backup_label", meta["backup_label"])
        if meta.get("tablespace_map"):
            _write(pgdata / "tablespace_map", remap_tablespace_map(meta["tablespace_map"], new_ts))
    inst = pg.Instance(pgdata, port)
    # Later lines win in postgresql.auto.conf.
    inst.configure(port=port, archive_mode="off", archive_command="", restore_command="",
                   primary_conninfo="", primary_slot_name="")
    return Prepared(str(pgdata), port, dict(paths))
