"""restore --before-truncate end to end: a Barman base backup and WAL (wal-push) at a local
site, a TRUNCATE under pgbench load, then pgvault finds the transaction, restores a side
instance paused just before it, and copies every row back into production."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pgvault import pg, sandbox
from tests.conftest import World

BIN = "/usr/lib/postgresql/15/bin"


def archived_all(inst) -> bool:
    import os

    status = inst.pgdata / "pg_wal" / "archive_status"
    return not [f for f in os.listdir(status) if f.endswith(".ready")]


@pytest.fixture
def scene(workdir):
    policy = workdir / "policy.yaml"
    inst = sandbox.new_instance(workdir, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy) + " wal-push %p"})
    w = World(workdir, inst)
    w.local_site("a")
    w.jobs["base"] = {"method": "barman", "sites": ["a"]}
    state = sandbox.owned_dir(workdir / "state")
    w.policy(wal={"sites": ["a"]}, state_dir=str(state))
    inst.start()
    yield w
    for pidfile in workdir.glob("*/postmaster.pid"):
        pg.Instance(pidfile.parent, 0).stop("immediate")


def test_before_truncate_restores_and_copies_every_row_back(scene):
    w, inst = scene, scene.pg
    inst.psql("CREATE DATABASE app")
    inst.psql("CREATE DATABASE bench")
    inst.psql("CREATE TABLE orders (id int PRIMARY KEY, note text); "
              "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 1000) g", dbname="app")
    subprocess.run([f"{BIN}/pgbench", "-i", "-s", "1", "-q", "-d", inst.conninfo("bench")], check=True,
                   capture_output=True, user="postgres")
    w.cli("backup", "base")
    load = subprocess.Popen([f"{BIN}/pgbench", "-c", "2", "-R", "50", "-T", "300", "-n", "-d", inst.conninfo("bench")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user="postgres")
    try:
        inst.psql("INSERT INTO orders SELECT g, 'late' FROM generate_series(1001, 1200) g", dbname="app")
        expected = inst.psql("SELECT count(*), sum(id), md5(string_agg(note, ',' ORDER BY id)) FROM orders", dbname="app")
        xid = int(inst.psql("BEGIN; SELECT txid_current(); TRUNCATE orders; COMMIT;", dbname="app").split()[0])
        inst.psql("INSERT INTO orders VALUES (5000, 'after the accident')", dbname="app")
    finally:
        load.terminate()
        load.wait()
    inst.psql("SELECT pg_switch_wal()")
    sandbox.wait_until(lambda: archived_all(inst), 120, "WAL to reach the site")

    dest = w.workdir / "side"
    cp = w.cli("restore", "--before-truncate", "public.orders", "--database-name", "app", "--target-dir", str(dest),
               "--start", "--copy-back-to", inst.conninfo().replace(" dbname=postgres", ""), "--json")
    doc = json.loads(cp.stdout)
    chosen = doc["plan"]["before_truncate"]
    assert (chosen["xid"], chosen["kind"]) == (xid, "TRUNCATE")
    assert doc["outcome"]["state"] == "paused"
    # Paused before the commit, the replayed lock of the TRUNCATE blocks the table: the side
    # instance was promoted (it never archives) before the copy.
    assert chosen["side_instance"].startswith("promoted")
    assert chosen["recovery_target"] == {"recovery_target_xid": str(xid), "recovery_target_inclusive": False}
    assert f"recovery stopping before commit of transaction {xid}" in (doc["outcome"]["postgres_says"] or "")
    # Every row is back in production, next to the row written after the accident.
    assert inst.psql("SELECT count(*), sum(id), md5(string_agg(note, ',' ORDER BY id)) FROM orders "
                     "WHERE id <> 5000", dbname="app") == expected
    assert inst.psql("SELECT note FROM orders WHERE id = 5000", dbname="app").strip() == "after the accident"
    shutil.rmtree(dest, ignore_errors=True)
