"""Restore a logical backup: one database (optionally under a new name) or the whole cluster
(globals first). pg_restore stops on the first error, which is reported with its stderr."""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field

from .. import pg, proc
from ..catalog.catalog import Catalog
from ..catalog.formats import Manifest
from ..catalog.streams import decompressing
from ..errors import PgvaultError, RestoreRefused, UsageError
from ..methods.logical import GLOBALS, artifact_name
from .source import find_backup

log = logging.getLogger("pgvault.restore.logical")


@dataclass
class LogicalRestoreResult:
    backup_id: str
    site: str
    databases: dict[str, str] = field(default_factory=dict)   # source -> target name
    globals_restored: bool = False
    notes: list[str] = field(default_factory=list)


def _tool(name: str, policy) -> str:
    return pg.tool(name, None, policy.cluster.bin_dir)


def _database_exists(conn, name: str) -> bool:
    return bool(pg.scalar(conn, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def _database_is_empty(conninfo: str, name: str) -> bool:
    with pg.connect(conninfo, dbname=name) as c:
        n = pg.scalar(c, """SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'""")
    return n == 0


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def restore_database(policy, backup_id: str, database: str, target_conninfo: str, *, new_name: str | None = None,
                     from_site: str | None = None, no_owner: bool = False, force: bool = False,
                     warn=None) -> LogicalRestoreResult:
    """Restore one database of a logical backup into a (new) database on a target server."""
    candidates = find_backup(policy, backup_id, from_site, warn=warn)
    cat, m = candidates[0]
    _require_logical(m)
    if database not in m.facts.get("databases", []):
        raise UsageError(f"backup {backup_id} has no database {database!r}",
                         f"it holds: {', '.join(m.facts.get('databases', []))}")
    target = new_name or database
    with pg.connect(target_conninfo) as conn:
        if _database_exists(conn, target):
            if not _database_is_empty(target_conninfo, target) and not force:
                raise RestoreRefused(f"database {target!r} already exists on the target server and is not empty",
                                     "restore under another name with --as NEW, or pass --force to restore into it anyway")
        else:
            pg.query(conn, f"CREATE DATABASE {_quote_ident(target)} TEMPLATE template0")
    _restore_dump(policy, cat, m, database, target_conninfo, target, no_owner)
    return LogicalRestoreResult(backup_id, cat.name, {database: target})


def _require_logical(m: Manifest) -> None:
    from .routes import route_of

    route, how = route_of(m.method)
    if route != "logical":
        raise UsageError(f"backup {m.backup_id} is a {m.method} backup, not a logical dump", f"restore it with: {how.command}")


def _restore_dump(policy, cat: Catalog, m: Manifest, database: str, target_conninfo: str, target: str,
                  no_owner: bool, create: bool = False) -> None:
    name = artifact_name(database) + ".zst"
    # Python handles only the compressed bytes (hashing them as they stream); the zstd program
    # decompresses straight into pg_restore's stdin. Without zstd, decompress in-process.
    if shutil.which("zstd"):
        reader, pre = cat.open_artifact(m, name, decompress=False), [["zstd", "-dcq"]]
    else:
        reader, pre = cat.open_artifact(m, name), []
    from psycopg.conninfo import make_conninfo

    argv = [_tool("pg_restore", policy), "--exit-on-error", "-d", make_conninfo(target_conninfo, dbname=target)]
    if no_owner:
        argv += ["--no-owner", "--no-acl"]
    if create:
        argv.insert(2, "--create")
    proc.feed(pre + [argv], reader, hint=f"the dump of {database!r} did not restore cleanly; fix the cause above "
                             "(a missing role: restore the whole cluster or pass --no-owner) and retry")


def _filter_globals(sql: str, existing_roles: set[str]) -> str:
    """Drop ``CREATE ROLE x;`` for roles that already exist (their ALTER ROLE still applies).

    >>> _filter_globals('CREATE ROLE postgres;\\nALTER ROLE postgres WITH SUPERUSER;\\nCREATE ROLE app;\\n', {'postgres'})
    'ALTER ROLE postgres WITH SUPERUSER;\\nCREATE ROLE app;\\n'
    """
    out = []
    for line in sql.splitlines(keepends=True):
        mt = re.fullmatch(r'CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);\s*', line)
        if mt:
            role = mt.group(1)
            role = role[1:-1].replace('""', '"') if role.startswith('"') else role
            if role in existing_roles:
                continue
        out.append(line)
    return "".join(out)


def restore_cluster(policy, backup_id: str, target_conninfo: str, *, from_site: str | None = None,
                    force: bool = False, warn=None) -> LogicalRestoreResult:
    """Rebuild a whole cluster from a logical backup: globals first, then every database."""
    candidates = find_backup(policy, backup_id, from_site, warn=warn)
    cat, m = candidates[0]
    _require_logical(m)
    result = LogicalRestoreResult(backup_id, cat.name)
    with pg.connect(target_conninfo) as conn:
        present = {r[0] for r in pg.query(conn, "SELECT datname FROM pg_database")}
        roles = {r[0] for r in pg.query(conn, "SELECT rolname FROM pg_roles")}
        clash = [d for d in m.facts.get("databases", []) if d in present and d != "postgres"]
        if clash and not force:
            raise RestoreRefused(f"the target server already has database(s) {', '.join(clash)}",
                                 "restore into an empty cluster, or pass --force to restore into them")
    if any(a.name == GLOBALS + ".zst" for a in m.artifacts):
        reader = cat.open_artifact(m, GLOBALS + ".zst")
        sql = b"".join(iter(lambda: reader.read(1 << 20), b"")).decode()
        sql = _filter_globals(sql, roles)
        proc.run([_tool("psql", policy), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target_conninfo],
                 input=sql.encode(), hint="the globals (roles, tablespaces) did not apply; fix the cause above")
        result.globals_restored = True
    for db in m.facts.get("databases", []):
        with pg.connect(target_conninfo) as conn:
            exists = _database_exists(conn, db)
        if exists:
            if not _database_is_empty(target_conninfo, db) and not force:
                raise RestoreRefused(f"database {db!r} exists on the target and is not empty",
                                     "pass --force to restore into it")
            _restore_dump(policy, cat, m, db, target_conninfo, db, False)
        else:
            # --create recreates the database with its owner, encoding, ACL and settings.
            _restore_dump(policy, cat, m, db, target_conninfo, "postgres", False, create=True)
        result.databases[db] = db
    return result


def zstd_available() -> bool:
    return shutil.which("zstd") is not None
