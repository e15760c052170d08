"""Checks run on a restored scratch instance. Each returns a CheckResult and never raises for
a check that does not hold: the runner needs every check's verdict for the report."""
from __future__ import annotations

import datetime as dt
import decimal
import time
from dataclasses import dataclass, field
from typing import Any

from .. import pg, proc
from ..errors import PgvaultError
from .model import AmcheckCheck, ReadAllCheck, RowCountsCheck, SqlCheck

MAX_LISTED = 10


@dataclass
class CheckResult:
    kind: str                  # sql | amcheck | read_all | row_counts | canary
    name: str
    status: str                # passed | failed | skipped
    detail: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class CheckContext:
    instance: pg.Instance
    manifest: Any = None                    # the restored backup's Manifest, when there is one
    expected: dict = field(default_factory=dict)   # e.g. the canary's table and rows


def databases(inst: pg.Instance) -> list[str]:
    with inst.connect() as conn:
        return [r[0] for r in pg.query(conn, "SELECT datname FROM pg_database WHERE datallowconn "
                                             "AND NOT datistemplate ORDER BY datname")]


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def normalize(value):
    """A database value as YAML would write it, so `expect: 5000` matches a bigint or numeric.

    >>> normalize(decimal.Decimal("5000"))
    5000
    >>> normalize(decimal.Decimal("1.50"))
    1.5
    >>> normalize(dt.date(2026, 11, 25))
    '2026-11-25'
    """
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    return value


def same(got, want) -> bool:
    """Whether a database value equals the value a drill file expects.
    >>> same(5000, "5000"), same(True, True), same(1, True), same(None, None)
    (True, True, False, True)
    """
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    return got == want or (got is not None and want is not None and str(got) == str(want))


def sql_check(check: SqlCheck, ctx: CheckContext) -> tuple[bool, str]:
    label = check.name or check.sql.strip().splitlines()[0][:60]
    with ctx.instance.connect(check.database) as conn:
        rows = [[normalize(v) for v in r] for r in pg.query(conn, check.sql)]
    where = f"in database {check.database!r}"
    if check.expect_rows is not None:
        want = check.expect_rows
        ok = len(rows) == len(want) and all(len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
                                            for a, b in zip(rows, want))
        return ok, (f"{label!r} {where} returned the expected {len(rows)} row(s)" if ok else
                    f"{label!r} {where}: expected rows {want!r}, got {rows[:MAX_LISTED]!r}")
    want = True if check.expect is None else check.expect
    got = rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else rows[:MAX_LISTED]
    ok = len(rows) == 1 and len(rows[0]) == 1 and same(got, want)
    return ok, (f"{label!r} {where} returned {got!r}" if ok else f"{label!r} {where}: expected {want!r}, got {got!r}")


_BTREE_INDEXES = """
    SELECT c.oid, n.nspname || '.' || c.relname FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't'
     ORDER BY 2"""


def amcheck(check: AmcheckCheck, ctx: CheckContext) -> tuple[bool, str]:
    """bt_index_check on every B-tree index (system catalogs included) of every database."""
    dbs = check.databases or databases(ctx.instance)
    checked, bad = 0, []
    for db in dbs:
        with ctx.instance.connect(db) as conn:
            schema = pg.scalar(conn, "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                     "ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'")
            if schema is None:
                # Its own schema: the restored database's search_path and schemas stay as they were.
                pg.query(conn, "CREATE SCHEMA IF NOT EXISTS pgvault_amcheck")
                pg.query(conn, "CREATE EXTENSION amcheck SCHEMA pgvault_amcheck")
                schema = "pgvault_amcheck"
            fn = f"{_quote(schema)}.bt_index_check"
            for oid, name in pg.query(conn, _BTREE_INDEXES):
                try:
                    pg.query(conn, f"SELECT {fn}(%s::regclass, %s)", (oid, check.heapallindexed))
                except Exception as exc:  # psycopg error: the index is corrupt
                    bad.append(f"{db}: {name}: {str(exc).strip().splitlines()[0]}")
                checked += 1
    if bad:
        return False, f"amcheck: {len(bad)} of {checked} B-tree index(es) corrupt: " + "; ".join(bad[:MAX_LISTED])
    return True, f"amcheck: {checked} B-tree index(es) in {len(dbs)} database(s) intact"


def read_all(check: ReadAllCheck, ctx: CheckContext) -> tuple[bool, str]:
    """pg_dump every database to /dev/null: every heap block of every table is read (and its
    data checksum verified, when the cluster has checksums)."""
    dbs = check.databases or databases(ctx.instance)
    pg_dump = pg.tool("pg_dump", configured=ctx.instance.bindir)
    failed = []
    for db in dbs:
        try:
            proc.run([pg_dump, "-Fc", "-Z0", "--no-sync", "-f", "/dev/null", "-d", ctx.instance.conninfo(db)])
        except PgvaultError as exc:
            failed.append(f"{db}: {exc.message}")
    if failed:
        return False, "read_all: " + "; ".join(failed[:MAX_LISTED])
    return True, f"read_all: every table of {len(dbs)} database(s) read"


def row_counts(check: RowCountsCheck, ctx: CheckContext) -> tuple[bool | None, str]:
    """Exact counts now vs. the counts the backup recorded in its own snapshot."""
    recorded = (ctx.manifest.facts.get("row_counts") if ctx.manifest is not None else None) or None
    if not recorded:
        if ctx.manifest is None:
            return None, "row_counts: no counts are recorded for this restore target; nothing to compare"
        return None, f"row_counts: the {ctx.manifest.method} backup recorded no row counts; nothing to compare"
    diffs, tables = [], 0
    for db, counts in recorded.items():
        with ctx.instance.connect(db) as conn:
            for qualified, want in counts.items():
                schema, _, table = qualified.partition(".")
                tables += 1
                try:
                    got = pg.scalar(conn, f"SELECT count(*) FROM {_quote(schema)}.{_quote(table)}")
                except Exception as exc:
                    got = f"error: {str(exc).strip().splitlines()[0]}"
                if got != want:
                    diffs.append(f"{db}.{qualified}: {got} rows, backup recorded {want}")
    if diffs:
        return False, f"row_counts: {len(diffs)} of {tables} table(s) differ: " + "; ".join(diffs[:MAX_LISTED])
    return True, f"row_counts: {tables} table(s) in {len(recorded)} database(s) match the backup's counts"


def canary(ctx: CheckContext) -> tuple[bool, str]:
    """Every planted canary row is back, exactly."""
    exp = ctx.expected
    with ctx.instance.connect(exp["database"]) as conn:
        try:
            got, tokens = pg.query(conn, f"SELECT count(*), count(*) FILTER (WHERE token = %s) "
                                         f"FROM pgvault_drill.{_quote(exp['table'])}", (exp["token"],))[0]
        except Exception as exc:
            return False, f"canary: table pgvault_drill.{exp['table']} is not in the restored instance ({str(exc).strip().splitlines()[0]})"
    ok = got == exp["rows"] and tokens == exp["rows"]
    return ok, (f"canary: all {got} rows of pgvault_drill.{exp['table']} are back" if ok else
                f"canary: expected {exp['rows']} rows in pgvault_drill.{exp['table']}, found {got} ({tokens} with the canary's token)")


RUNNERS = {SqlCheck: ("sql", sql_check), AmcheckCheck: ("amcheck", amcheck),
           ReadAllCheck: ("read_all", read_all), RowCountsCheck: ("row_counts", row_counts)}


def run_check(check, ctx: CheckContext) -> CheckResult:
    kind, fn = RUNNERS[type(check)]
    name = getattr(check, "name", None) or kind
    t0 = time.monotonic()
    try:
        ok, detail = fn(check, ctx)
    except PgvaultError as exc:
        ok, detail = False, f"{kind}: {exc.message}"
    except Exception as exc:  # a SQL error in the check itself is the check failing
        ok, detail = False, f"{kind}: {type(exc).__name__}: {str(exc).strip()}"
    status = "skipped" if ok is None else ("passed" if ok else "failed")
    return CheckResult(kind, name, status, detail, time.monotonic() - t0)


def run_canary(ctx: CheckContext) -> CheckResult:
    t0 = time.monotonic()
    try:
        ok, detail = canary(ctx)
    except PgvaultError as exc:
        ok, detail = False, f"canary: {exc.message}"
    return CheckResult("canary", "canary", "passed" if ok else "failed", detail, time.monotonic() - t0)
