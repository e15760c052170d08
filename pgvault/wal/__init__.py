"""Continuous WAL archiving: wal-push (archive_command), wal-fetch (restore_command), the
spool that holds a dead site's backlog, and archive status. See docs/wal-archiving.md."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import PgvaultError


class WalConflict(PgvaultError):
    """A site already holds a different file under the same WAL name."""


def spool_dir(policy) -> Path:
    """wal.spool_dir, else <state_dir>/wal-spool, else /var/lib/pgvault/<cluster>/wal-spool."""
    if policy.wal.spool_dir:
        return Path(policy.wal.spool_dir)
    state = policy.state_dir or f"/var/lib/pgvault/{policy.cluster.name}"
    return Path(state) / "wal-spool"


def pgdata_of(wal_path: str | os.PathLike) -> Path | None:
    """The data directory a file in pg_wal belongs to (archive_command runs in PGDATA)."""
    p = Path(os.path.abspath(wal_path))
    if p.parent.name == "pg_wal" and (p.parent.parent / "global" / "pg_control").exists():
        return p.parent.parent
    return None
