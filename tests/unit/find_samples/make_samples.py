"""Regenerate the captured pg_waldump samples used by tests/unit/test_walscan.py.

    PYTHONPATH=. python tests/unit/find_samples/make_samples.py

For each wal_level it builds a small cluster, damages a table five ways (VACUUM FULL, TRUNCATE,
DROP TABLE, mass DELETE, DROP DATABASE) plus an unrelated REINDEX and DROP INDEX, and keeps the
pg_waldump lines (Transaction/Heap/Storage/Database) of those transactions, with a JSON of
the OIDs, relfilenodes and xids."""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from pgvault import sandbox  # noqa: E402

HERE = Path(__file__).resolve().parent


def xid(inst, sql, db="app"):
    return int(inst.psql(f"BEGIN; SELECT txid_current(); {sql}; COMMIT;", dbname=db).split()[0])


def one(level):
    base = sandbox.workdir("find-samples-")
    arch = sandbox.owned_dir(base / "arch", 0o755)
    inst = sandbox.new_instance(base, settings={"wal_level": level, "archive_mode": "on",
                                                "archive_command": f"cp %p {arch}/%f"})
    try:
        inst.psql("CREATE DATABASE app")
        inst.psql("CREATE DATABASE scratch")
        inst.psql("""CREATE TABLE orders (id int PRIMARY KEY, note text);
                     INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 300) g;
                     CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 50);
                     CREATE TABLE events (id int); INSERT INTO events SELECT generate_series(1, 200);
                     CREATE INDEX events_id ON events (id);""", dbname="app")
        inst.psql("CREATE TABLE keep (x int)", dbname="scratch")
        q = lambda sql, db="app": inst.psql(sql, dbname=db).strip()  # noqa: E731
        meta = {"wal_level": level,
                "app_oid": int(q("SELECT oid FROM pg_database WHERE datname = 'app'")),
                "scratch_oid": int(q("SELECT oid FROM pg_database WHERE datname = 'scratch'")),
                "tables": {t: [int(x) for x in q(f"SELECT oid, pg_relation_filenode(oid) FROM pg_class "
                                                  f"WHERE relname = '{t}'").split("|")]
                           for t in ("orders", "items", "events")},
                "events_index_filenode": int(q("SELECT pg_relation_filenode('events_id')"))}
        lsn0 = q("SELECT pg_current_wal_lsn()", "postgres")
        inst.psql("VACUUM FULL orders", dbname="app")
        meta["truncate"] = xid(inst, "TRUNCATE orders")
        meta["reindex"] = xid(inst, "REINDEX TABLE events")
        meta["events_index_filenode_after_reindex"] = int(q("SELECT pg_relation_filenode('events_id')"))
        meta["drop_index"] = xid(inst, "DROP INDEX events_id")
        meta["drop"] = xid(inst, "DROP TABLE items")
        meta["delete"] = xid(inst, "DELETE FROM events")
        inst.psql("DROP DATABASE scratch")
        inst.psql("SELECT pg_switch_wal()")
        out = subprocess.run(["/usr/lib/postgresql/15/bin/pg_waldump", "-p", str(inst.pgdata / "pg_wal"),
                              "-s", lsn0, "--rmgr=Transaction", "--rmgr=Heap", "--rmgr=Storage", "--rmgr=Database"],
                             capture_output=True, text=True).stdout
        lines = [ln for ln in out.splitlines() if "tx:          0," not in ln]
        (HERE / f"{level}.txt").write_text("\n".join(lines) + "\n")
        (HERE / f"{level}.json").write_text(json.dumps(meta, indent=1) + "\n")
    finally:
        inst.destroy()


if __name__ == "__main__":
    for level in ("replica", "logical"):
        one(level)
