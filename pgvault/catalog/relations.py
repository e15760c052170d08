"""The relation history: which files each table lived in, over time.

After a TRUNCATE the table keeps its OID but gets a new relfilenode, and after a DROP it is
gone from pg_class; the file that held the lost rows is only known from a record taken
earlier. ``record_relations(policy)`` takes such a record (per database: each table's OID,
relfilenode, tablespace, TOAST and index filenodes, row estimate, with the WAL position and
time) and stores it at the sites next to the catalog:

    clusters/<cluster>/relations/<YYYYmmddTHHMMSSZ>-<LSN as 16 hex>.json

It is called at each backup and at each tick (engine), and by ``pgvault find`` before it
scans. A record identical to the newest one (same files) is not stored again unless the newest
is older than ``REFRESH`` — so the history grows only when something changed, yet still gives
regular (LSN, time) marks for narrowing a scan window.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .. import pg
from ..catalog import layout
from ..crypt import age
from ..crypt import keys as keys_mod
from ..errors import KeyRequired, PgvaultError, SiteError
from ..sites import open_sites
from ..sites.base import get_bytes, put_bytes

log = logging.getLogger("pgvault.relations")

FORMAT = "pgvault-relations"
VERSION = 1
REFRESH = timedelta(hours=1)

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, pg_relation_filenode(c.oid), c.reltablespace,
       c.reltoastrelid, CASE WHEN c.reltoastrelid <> 0 THEN pg_relation_filenode(c.reltoastrelid) END,
       c.reltuples::bigint,
       coalesce((SELECT json_agg(json_build_array(i.indexrelid, pg_relation_filenode(i.indexrelid))
                                 ORDER BY i.indexrelid)
                 FROM pg_index i WHERE i.indrelid IN (c.oid, c.reltoastrelid)), '[]'::json)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY c.oid
"""


def _databases(conn) -> list[tuple[str, int, int]]:
    return [(r[0], int(r[1]), int(r[2])) for r in pg.query(conn, """
        SELECT datname, oid, dattablespace FROM pg_database
        WHERE datallowconn AND NOT datistemplate ORDER BY oid""")]


def snapshot(conninfo: str) -> dict:
    """Read the relation map of every connectable database (a pure read, no writes)."""
    conn = pg.connect(conninfo)
    try:
        info = pg.server_info(conn)
        dbs = _databases(conn)
        lsn = info.current_lsn
    finally:
        conn.close()
    out = {}
    for name, oid, spc in dbs:
        try:
            dconn = pg.connect(conninfo, dbname=name)
        except PgvaultError as exc:
            log.warning("relations: skipping database %s: %s", name, exc.message)
            continue
        try:
            tables = {}
            for r in pg.query(dconn, _TABLES_SQL):
                tables[f"{r[1]}.{r[2]}"] = {
                    "oid": int(r[0]), "kind": r[3], "filenode": r[4] and int(r[4]),
                    "tablespace": int(r[5]) or spc, "toast_oid": int(r[6]) or None,
                    "toast_filenode": r[7] and int(r[7]), "rows": int(r[8]),
                    "indexes": [[int(a), b and int(b)] for a, b in (r[9] or [])],
                }
        finally:
            dconn.close()
        out[name] = {"oid": oid, "tablespace": spc, "tables": tables}
    return {"format": FORMAT, "version": VERSION, "system_identifier": info.system_identifier,
            "timeline": info.timeline, "lsn": lsn, "time": datetime.now(timezone.utc).isoformat(),
            "databases": out}


def snapshot_id(doc: dict) -> str:
    """
    >>> snapshot_id({"time": "2026-11-25T22:15:30.5+00:00", "lsn": "0/1BC7990"})
    '20261125T221530Z-0000000001BC7990'
    """
    from ..lsn import parse_lsn

    t = datetime.fromisoformat(doc["time"]).astimezone(timezone.utc)
    return f"{t:%Y%m%dT%H%M%SZ}-{parse_lsn(doc['lsn']):016X}"


@dataclass
class RecordResult:
    key: str | None                      # None: unchanged, not stored
    stored_at: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    databases: int = 0
    tables: int = 0


def _site_names(policy) -> list[str]:
    return list(policy.wal.sites) or list(policy.sites)


def _sites(policy) -> dict:
    return open_sites(policy, _site_names(policy))


def _latest(site, cluster: str) -> tuple[str, dict | None] | None:
    """The newest record at ``site``; its document is None when it is encrypted and this host
    holds no identity that opens it (the usual case: the backup host has only public keys)."""
    keys = sorted(o.key for o in site.list(layout.relations_prefix(cluster)) if o.key.endswith(".json"))
    if not keys:
        return None
    raw = get_bytes(site, keys[-1])
    if age.is_age(raw) and not keys_mod.identities():
        return keys[-1], None
    return keys[-1], decode(raw, f"relation record {keys[-1]}")


def decode(raw: bytes, what: str) -> dict:
    """A stored record: JSON, or age-encrypted JSON opened with the identities given."""
    if age.is_age(raw):
        try:
            raw = age.open_bytes(raw, keys_mod.identities())
        except age.NoMatchingIdentity:
            raise KeyRequired(f"{what} is encrypted and no identity given opens it",
                              "pass the age identity file with --identity FILE or PGVAULT_IDENTITY") from None
        except age.CorruptCiphertext as exc:
            raise SiteError(f"{what} is damaged: {exc}", "another site may hold an intact copy") from None
    return json.loads(raw)


def _digest_file(policy):
    from ..statedir import state_dir

    return state_dir(policy.state_dir, policy.cluster.name) / "relations-stored.json"


def _stored_digests(policy) -> dict:
    """What this host last stored, per site: {site: [key, sha256 of the databases part]}. Lets
    an unchanged record be skipped at a site whose records this host cannot decrypt."""
    try:
        return json.loads(_digest_file(policy).read_text())
    except (OSError, ValueError, PgvaultError):  # a cache: without it the record is stored again
        return {}


def _db_digest(doc: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(doc["databases"], sort_keys=True).encode()).hexdigest()


def record_relations(policy, *, force: bool = False, conninfo: str | None = None,
                     down: set | None = None) -> RecordResult:
    """Take a relation record of the policy's cluster and store it at every WAL site (or every
    site) but those in ``down`` (the caller just saw them fail). Skipped when nothing changed
    since the newest stored record (unless it is older than REFRESH, or ``force``). Raises only
    when no site took it."""
    doc = snapshot(conninfo or policy.cluster.conninfo)
    sid = snapshot_id(doc)
    key = layout.relations_key(policy.cluster.name, sid)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    result = RecordResult(key=key, databases=len(doc["databases"]),
                          tables=sum(len(d["tables"]) for d in doc["databases"].values()))
    encrypted = any(policy.recipients(n) for n in policy.sites)
    digests = _stored_digests(policy) if encrypted else {}
    mine = _db_digest(doc)
    def one(name: str, site) -> str | None:
        """Store the record at one site unless it holds the same; "stored", None, or the error."""
        try:
            if not force:
                latest = _latest(site, policy.cluster.name)
                if latest and latest[1] is None:  # encrypted, no key here: what did this host store last?
                    last = digests.get(name)
                    if last and last[0] == latest[0] and last[1] == mine and \
                            datetime.now(timezone.utc) - datetime.fromisoformat(last[2]) < REFRESH:
                        return None
                elif latest and latest[1].get("databases") == doc["databases"] and \
                        datetime.now(timezone.utc) - datetime.fromisoformat(latest[1]["time"]) < REFRESH:
                    return None
            rcpts = policy.recipients(name)
            put_bytes(site, key, age.seal(data, list(rcpts)) if rcpts else data)
            return "stored"
        except PgvaultError as exc:
            return exc.message

    # Every site at once: an unreachable one costs its timeout once, beside the others.
    from concurrent.futures import ThreadPoolExecutor

    sites = {n: site for n, site in _sites(policy).items() if n not in (down or ())}
    result.failed.update({n: "not reachable when the job started" for n in (down or ()) if n in _site_names(policy)})
    with ThreadPoolExecutor(max_workers=max(1, len(sites)), thread_name_prefix="pgvault-relations") as pool:
        answers = dict(zip(sites, pool.map(one, sites, sites.values())))
    for name, answer in answers.items():
        if answer == "stored":
            result.stored_at.append(name)
            digests[name] = [key, mine, doc["time"]]
        elif answer is not None:
            result.failed[name] = answer
    if result.stored_at and any(policy.recipients(n) for n in result.stored_at):
        try:
            from ..fsutil import mkdirs, write_atomic

            mkdirs(_digest_file(policy).parent)
            write_atomic(_digest_file(policy), json.dumps(digests).encode())
        except (OSError, PgvaultError) as exc:  # a cache: without it the next record is stored again
            log.debug("cannot save %s: %s", _digest_file(policy), exc)
    if result.failed and not result.stored_at:
        raise SiteError(f"relation history not stored: {result.failed}", "check that the sites are reachable")
    if not result.stored_at:
        result.key = None
    return result


def load_history(policy, from_site: str | None = None) -> list[dict]:
    """Every stored relation record, oldest first, from the first site that has any."""
    names = list(policy.sites)
    if from_site:
        names = [from_site] + [n for n in names if n != from_site]
    for name, site in open_sites(policy, names).items():
        try:
            keys = sorted(o.key for o in site.list(layout.relations_prefix(policy.cluster.name))
                          if o.key.endswith(".json"))
            if keys:
                return [decode(get_bytes(site, k), f"site {name!r}: relation record {k}") for k in keys]
        except KeyRequired:
            raise
        except PgvaultError as exc:
            log.warning("site %s: relation history unreadable: %s", name, exc.message)
    return []


@dataclass
class TableHistory:
    table: str
    database: str
    db_oids: set[int] = field(default_factory=set)
    table_oids: set[int] = field(default_factory=set)
    heap_files: set[tuple[int, int]] = field(default_factory=set)
    other_files: set[tuple[int, int]] = field(default_factory=set)   # TOAST and index files
    rows: int = -1
    seen: list[tuple[str, str]] = field(default_factory=list)    # (time, lsn) of records holding it
    marks: list[tuple[str, str]] = field(default_factory=list)   # (time, lsn) of every record


def qualify(table: str) -> str:
    """
    >>> qualify('orders'), qualify('sales.orders'), qualify('"Odd".x')
    ('public.orders', 'sales.orders', 'Odd.x')
    """
    t = table.replace('"', "")
    return t if "." in t else f"public.{t}"


def table_history(history: list[dict], table: str, database: str | None) -> TableHistory:
    """Everything the records say about one table. Raises UsageError when it is unknown or
    ambiguous (present in several databases and no database given)."""
    from ..errors import UsageError

    name = qualify(table)
    dbs = sorted({db for doc in history for db, d in doc["databases"].items() if name in d["tables"]})
    if database:
        if database not in dbs:
            raise UsageError(f"no record of table {name} in database {database!r} in the relation history",
                             (f"it is recorded in: {', '.join(dbs)}" if dbs else
                              "the history is taken at each backup and tick; without a record from before the "
                              "damage pgvault cannot tell which file held the table") )
    elif len(dbs) == 1:
        database = dbs[0]
    elif not dbs:
        raise UsageError(f"no record of table {name} in the relation history",
                         "check the name (SCHEMA.TABLE) and --database; the history is taken at each backup and tick")
    else:
        raise UsageError(f"table {name} is recorded in several databases: {', '.join(dbs)}", "pass --database")
    th = TableHistory(name, database)
    for doc in history:
        th.marks.append((doc["time"], doc["lsn"]))
        d = doc["databases"].get(database)
        if not d or name not in d["tables"]:
            continue
        t = d["tables"][name]
        th.db_oids.add(d["oid"])
        th.table_oids.add(t["oid"])
        if t["filenode"]:
            th.heap_files.add((d["oid"], t["filenode"]))
        for f in [t.get("toast_filenode")] + [i[1] for i in t.get("indexes", [])]:
            if f:
                th.other_files.add((d["oid"], f))
        if t["rows"] > 0:
            th.rows = t["rows"]
        th.seen.append((doc["time"], doc["lsn"]))
    return th
