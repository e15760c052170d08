"""What wal-push reads from and marks in a data directory: the .ready files of
pg_wal/archive_status, pg_control's system identifier and the PostgreSQL major version."""
from __future__ import annotations

import os
from pathlib import Path

from . import names

# Page-header magic -> PostgreSQL major (used to bind a cluster at a site on first push).
MAGIC_MAJOR = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}


def is_segment(name: str) -> bool:
    return names.kind(name) == "segment"


def ready_neighbours(path: Path, limit: int) -> list[Path]:
    """Other files PostgreSQL has marked ready to archive, in the archiver's own order."""
    status = path.parent / "archive_status"
    if limit <= 0 or not status.is_dir():
        return []
    try:
        ready = [f[:-6] for f in os.listdir(status) if f.endswith(".ready")]
    except OSError:
        return []
    ready = sorted((n for n in ready if n != path.name and names.is_wal_name(n)), key=names.sort_key)
    return [path.parent / n for n in ready[:limit]]


def mark_done(pg_wal: Path, name: str) -> None:
    """Tell PostgreSQL a file is archived (what its archiver does after archive_command)."""
    status = pg_wal / "archive_status"
    try:
        os.rename(status / f"{name}.ready", status / f"{name}.done")
    except FileNotFoundError:
        pass


def control_sysid(pgdata: Path | None) -> str | None:
    """The system identifier from global/pg_control (its first field, a uint64)."""
    if pgdata is None:
        return None
    try:
        with open(pgdata / "global" / "pg_control", "rb") as fh:
            return str(int.from_bytes(fh.read(8), "little"))
    except OSError:
        return None


def pg_major(hdr: names.PageHeader | None, pgdata: Path | None) -> int:
    if hdr is not None and hdr.magic in MAGIC_MAJOR:
        return MAGIC_MAJOR[hdr.magic]
    if pgdata is not None:
        try:
            return int((pgdata / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            pass
    return 0
