"""Handing a table back from the restored (paused) instance to production: dump just that
table (or database) from the side instance with pg_dump, load it with pg_restore.

What is loaded depends on the damage: after TRUNCATE or a mass DELETE the table still exists
in production, so only its rows go back (``--data-only``); after DROP TABLE the table itself
(definition, rows, indexes) goes back; after DROP DATABASE the whole database is dumped and
restored into a database created under the same name.

While the side instance is paused before the damaging transaction's commit, that
transaction is in progress as far as the standby knows, and its AccessExclusiveLock (logged
before the commit, replayed by the startup process) blocks every read of the table. Ending
recovery on the side instance aborts it and releases the lock; the side instance never
archives (archive_mode off), so promoting it touches nothing else."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import pg, proc
from .walscan import DROP_DATABASE, DROP_TABLE


def _with_db(conninfo: str, database: str) -> str:
    """
    >>> _with_db("host=/tmp port=5499 user=postgres", "app")
    'host=/tmp port=5499 user=postgres dbname=app'
    """
    return f"{conninfo} dbname={database}"


@dataclass
class CopyBack:
    commands: list[list[str]]
    dump_file: str

    def shell(self) -> list[str]:
        return [proc.quote(c) for c in self.commands]


def plan(kind: str, table: str, database: str, source_conninfo: str, dest_conninfo: str,
         dump_file: str | None = None, bindir: str | None = None) -> CopyBack:
    """The commands, in order.

    >>> cb = plan("TRUNCATE", "public.orders", "app", "host=/r port=5499 user=postgres", "CONNINFO", "/tmp/o.dump")
    >>> [c[0].rsplit('/', 1)[-1] for c in cb.commands], "--data-only" in cb.commands[1]
    (['pg_dump', 'pg_restore'], True)
    >>> "--data-only" in plan("DROP TABLE", "public.orders", "app", "s", "d", "/tmp/o.dump").commands[1]
    False
    """
    dump_file = dump_file or f"/tmp/pgvault-{database}-{table}.dump"
    tool = (lambda n: pg.tool(n, configured=bindir)) if bindir else (lambda n: n)
    if kind == DROP_DATABASE:
        dump = [tool("pg_dump"), "--format=custom", "--file", dump_file, "--dbname", _with_db(source_conninfo, database)]
        load = [tool("pg_restore"), "--create", "--exit-on-error", "--dbname", _with_db(dest_conninfo, "postgres"),
                dump_file]
        return CopyBack([dump, load], dump_file)
    dump = [tool("pg_dump"), "--format=custom", "--table", table, "--file", dump_file,
            "--dbname", _with_db(source_conninfo, database)]
    if kind == DROP_TABLE:
        load = [tool("pg_restore"), "--exit-on-error", "--dbname", _with_db(dest_conninfo, database), dump_file]
    else:
        load = [tool("pg_restore"), "--data-only", "--exit-on-error", "--dbname", _with_db(dest_conninfo, database),
                dump_file]
    return CopyBack([dump, load], dump_file)


def end_recovery(conninfo: str, timeout: float = 120) -> None:
    """Resume the paused side instance past its target: recovery ends, the instance is promoted."""
    import psycopg

    from ..proc import wait_until

    conn = pg.connect(conninfo, dbname="postgres")
    try:
        if pg.replay_pause_state(conn) is not None:
            try:
                pg.query(conn, "SELECT pg_wal_replay_resume()")
            except psycopg.errors.ObjectNotInPrerequisiteState:
                pass  # recovery ended on its own between the two statements
        wait_until(lambda: not pg.scalar(conn, "SELECT pg_is_in_recovery()"), timeout, "the side instance to end recovery",
                   interval=0.2)
    finally:
        conn.close()


def revalidate_database(conninfo: str, database: str) -> bool:
    """On the promoted side instance, make a database that DROP DATABASE had begun to drop
    connectable again; True if it had to.

    Since PostgreSQL 15.4 (and 11.21, 12.16, 13.12, 14.9), DROP DATABASE first marks the
    database invalid (``datconnlimit = -2``, an in-place catalog update WAL-logged *before* the
    ``Database DROP`` record), so that an interrupted drop cannot leave a half-removed database
    usable. A side instance stopped just before the DROP record therefore holds every file of
    the database and refuses connections to it ("cannot connect to invalid database"). The
    side instance is a disposable copy that never archives: undoing the mark there is safe.
    Found by `pgvault lab` (drop-database scenario)."""
    conn = pg.connect(conninfo, dbname="postgres")
    try:
        rows = pg.query(conn, "UPDATE pg_database SET datconnlimit = -1 WHERE datname = %s AND datconnlimit = -2 "
                              "RETURNING datname", (database,))
        return bool(rows)
    finally:
        conn.close()


def run(cb: CopyBack) -> None:
    """Run the dump and the load; the dump file is private and removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="pgvault-copyback-"))
    os.chmod(d, 0o700)
    try:
        for argv in cb.commands:
            argv = [str(d / "table.dump") if a == cb.dump_file else a for a in argv]
            proc.run(argv, hint="the restored instance keeps running (paused); fix the problem and run the "
                                "printed commands by hand")
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
