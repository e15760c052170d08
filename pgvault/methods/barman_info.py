"""Barman's ``backup.info`` for a base backup pgvault took itself (pure, doctested).

The file barman-cloud-backup writes at ``<url>/<server>/base/<barman id>/backup.info``:
``key=value`` lines; tablespaces and backup_label as Python literals (Barman reads them with
``ast.literal_eval``: pgvault only writes them, with ``repr``). Stock barman-cloud-backup-list,
-show and -restore read what is written here (tests/integration/test_base_backup.py)."""
from __future__ import annotations

import re
from datetime import datetime


def barman_id(backup_id: str) -> str:
    """Barman's id for a pgvault backup id (Barman's ids are ``YYYYMMDDTHHMMSS``).

    >>> barman_id("20261125T221530Z")
    '20261125T221530'
    """
    m = re.match(r"^(\d{8}T\d{6})Z", backup_id)
    if not m:
        raise ValueError(f"not a pgvault backup id: {backup_id!r}")
    return m.group(1)


def _time(t: datetime) -> str:
    return t.isoformat(sep=" ")


def render(*, server: str, pgdata: str, version_num: int, timeline: int, systemid: str,
           begin_time: datetime, end_time: datetime, begin_lsn: str, end_lsn: str, begin_wal: str,
           end_wal: str, begin_offset: int, end_offset: int, size: int, cluster_size: int,
           backup_label: str, tablespaces: list[tuple[str, int, str]], compression: str | None,
           wal_segment_size: int, backup_name: str, data_checksums: bool) -> str:
    """backup.info text, keys in Barman's own (sorted) order.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 11, 25, 22, 15, 30, tzinfo=timezone.utc)
    >>> text = render(server="main", pgdata="/pg", version_num=150018, timeline=1, systemid="7",
    ...   begin_time=t, end_time=t, begin_lsn="0/2000028", end_lsn="0/2000100",
    ...   begin_wal="000000010000000000000002", end_wal="000000010000000000000002", begin_offset=40,
    ...   end_offset=256, size=10, cluster_size=20, backup_label="START WAL LOCATION: 0/2000028\\n",
    ...   tablespaces=[("ts", 16390, "/srv/ts")], compression="lz4", wal_segment_size=16777216,
    ...   backup_name="20261125T221530Z", data_checksums=True)
    >>> print(text.splitlines()[1]); print([l for l in text.splitlines() if l.startswith("tablespaces")][0])
    backup_label='START WAL LOCATION: 0/2000028\\n'
    tablespaces=[('ts', 16390, '/srv/ts')]
    """
    fields = {
        "backup_label": repr(backup_label),
        "backup_name": backup_name,
        "begin_offset": begin_offset,
        "begin_time": _time(begin_time),
        "begin_wal": begin_wal,
        "begin_xlog": begin_lsn,
        "cluster_size": cluster_size,
        "compression": compression,
        "config_file": f"{pgdata}/postgresql.conf",
        "data_checksums": "on" if data_checksums else "off",
        "end_offset": end_offset,
        "end_time": _time(end_time),
        "end_wal": end_wal,
        "end_xlog": end_lsn,
        "hba_file": f"{pgdata}/pg_hba.conf",
        "ident_file": f"{pgdata}/pg_ident.conf",
        "mode": "concurrent",
        "pgdata": pgdata,
        "server_name": server,
        "size": size,
        "status": "DONE",
        "systemid": systemid,
        "tablespaces": repr([(n, int(o), loc) for n, o, loc in tablespaces]) if tablespaces else None,
        "timeline": timeline,
        "version": version_num,
        "xlog_segment_size": wal_segment_size,
    }
    lines = ["# Written by pgvault in Barman's format (barman-cloud-restore reads it)"]
    lines += [f"{k}={v}" for k, v in fields.items() if v is not None]
    return "\n".join(lines) + "\n"
