"""The canary: a synthetic accidental TRUNCATE in production, recovered from every site.

Production side (this module): in the ``pgvault_drill`` schema — and nowhere else — create a
canary table, insert K rows, note the time, TRUNCATE it, switch WAL and wait until that segment
is archived. Each site's drill then restores to the noted time (just before the TRUNCATE) and
expects all K rows back. Afterwards the canary table is dropped, and the schema too when empty.

Why this is safe on production: the only objects written are one new table in its own schema;
the TRUNCATE is of that table; a WAL switch costs at most one partly-filled segment."""
from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .. import pg
from ..errors import DatabaseError, PgvaultError

log = logging.getLogger("pgvault.drills.canary")

SCHEMA = "pgvault_drill"
ARCHIVE_TIMEOUT = 300.0


class CanaryNotPlanted(PgvaultError):
    """The production side of the canary failed; nothing of it is left behind."""


@dataclass(frozen=True)
class Canary:
    database: str
    table: str
    token: str
    rows: int
    planted_at: datetime          # after the INSERT committed, before the TRUNCATE (reported)
    planted_lsn: str              # WAL insert position at that instant: the recovery target
    insert_xid: int
    truncate_xid: int
    truncate_lsn: str             # WAL position just after the TRUNCATE committed
    wal_file: str                 # the segment switched out (and archived) after the TRUNCATE
    timeline: int

    def expected(self) -> dict:
        return {"database": self.database, "table": self.table, "token": self.token, "rows": self.rows}


def table_name(now: datetime | None = None) -> str:
    """A fresh name per run, so two runs (or a leftover) never share a table.

    >>> table_name(datetime(2026, 11, 25, 22, 15, 30, tzinfo=timezone.utc))[:21]
    'canary_20261125221530'
    """
    # Lower case only: the name is used unquoted in SQL and quoted in checks.
    t = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    return f"canary_{t}_{secrets.token_hex(3)}"


def _db(conninfo: str, database: str | None) -> str:
    if database:
        return database
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(conninfo).get("dbname") or "postgres"


def plant(conninfo: str, rows: int, *, database: str | None = None,
          archive_timeout: float = ARCHIVE_TIMEOUT) -> Canary:
    """Create, fill and TRUNCATE a canary table; return once its WAL is archived."""
    db = _db(conninfo, database)
    table = table_name()
    token = secrets.token_hex(8)
    conn = pg.connect(conninfo, dbname=db)
    try:
        if pg.scalar(conn, "SELECT pg_is_in_recovery()"):
            raise DatabaseError("the canary needs the primary; this server is a standby",
                                "point cluster.conninfo at the primary")
        fq = f"{SCHEMA}.{table}"
        with conn.transaction():
            pg.query(conn, "SET LOCAL lock_timeout = '10s'")
            pg.query(conn, f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            pg.query(conn, f"CREATE TABLE {fq} (id int PRIMARY KEY, token text NOT NULL)")
            pg.query(conn, f"INSERT INTO {fq} SELECT g, %s FROM generate_series(1, %s) g", (token, rows))
            insert_xid = int(pg.scalar(conn, "SELECT txid_current()"))
        try:
            # Read after the INSERT's commit and before the TRUNCATE: recovery to this LSN keeps
            # the rows and stops before the TRUNCATE's commit. An LSN rather than the time: the
            # planner proves LSN coverage from segment names, while time coverage depends on
            # object timestamps (whole seconds at S3).
            planted_at, planted_lsn = pg.query(conn, "SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text")[0]
            with conn.transaction():
                pg.query(conn, f"TRUNCATE {fq}")
                truncate_xid = int(pg.scalar(conn, "SELECT txid_current()"))
            truncate_lsn = str(pg.scalar(conn, "SELECT pg_current_wal_lsn()"))
            wal_file = pg.scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())")
            wait_archived(conn, wal_file, archive_timeout)
        except BaseException:
            _drop(conn, table)
            raise
        canary = Canary(db, table, token, rows, planted_at, planted_lsn, insert_xid, truncate_xid, truncate_lsn,
                        wal_file, int(wal_file[:8], 16))
        log.info("canary %s planted: %d rows, truncated by xid %d, WAL %s archived", fq, rows, truncate_xid, wal_file)
        return canary
    finally:
        conn.close()


def archived_through(conn) -> tuple[str | None, str | None]:
    """(last archived WAL file, last failed WAL file) from pg_stat_archiver."""
    row = pg.query(conn, "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
    return row[0], row[1]


def wait_archived(conn, wal_file: str, timeout: float = ARCHIVE_TIMEOUT) -> None:
    """Poll pg_stat_archiver until ``wal_file`` (or a later segment) has been archived."""
    if pg.scalar(conn, "SELECT current_setting('archive_mode')") == "off":
        raise PgvaultError("the canary needs WAL archiving, but archive_mode is off",
                           "set archive_mode = on and archive_command to pgvault wal-push (see docs/wal.md)")
    deadline = time.monotonic() + timeout
    while True:
        last, failed = archived_through(conn)
        # WAL file names of one timeline sort in LSN order; the archiver goes in order.
        if last and last[:24] >= wal_file:
            return
        if time.monotonic() > deadline:
            raise PgvaultError(f"WAL file {wal_file} with the canary's TRUNCATE was not archived within "
                               f"{timeout:.0f}s (last archived {last or 'none'}, last failed {failed or 'none'})",
                               "check archive_command and the server log; pgvault check shows the WAL archive")
        time.sleep(0.2)


def _drop(conn, table: str) -> None:
    pg.query(conn, f"DROP TABLE IF EXISTS {SCHEMA}.{table}")
    # Only when empty: never CASCADE into objects pgvault did not create.
    if not pg.scalar(conn, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE n.nspname = %s", (SCHEMA,)):
        pg.query(conn, f"DROP SCHEMA IF EXISTS {SCHEMA}")


def remove(conninfo: str, canary: Canary) -> None:
    """Drop the canary table (and the schema when nothing else is left in it)."""
    conn = pg.connect(conninfo, dbname=canary.database)
    try:
        _drop(conn, canary.table)
    finally:
        conn.close()


@contextlib.contextmanager
def plant_for(policy, drill):
    """The canary for a ``target: canary`` drill (None otherwise), removed afterwards."""
    if drill.target_kind != "canary":
        yield None
        return
    conninfo = policy.cluster.conninfo
    try:
        canary = plant(conninfo, drill.canary_rows, database=drill.canary_database)
    except PgvaultError as exc:
        raise CanaryNotPlanted(f"the canary could not be planted: {exc.message}", exc.hint) from exc
    try:
        yield canary
    finally:
        try:
            remove(conninfo, canary)
        except PgvaultError as exc:
            log.error("could not drop canary %s.%s: %s", SCHEMA, canary.table, exc.message)
