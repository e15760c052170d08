"""pgvault find on real WAL (PostgreSQL 15, wal_level replica and logical), written while a
light pgbench load runs: TRUNCATE, DROP TABLE, VACUUM FULL (a rewrite, not a truncate), a mass
DELETE and DROP DATABASE are each found with the xid captured in the damaging session."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pgvault import sandbox

BIN = "/usr/lib/postgresql/15/bin"


def xid_of(inst, sql, db="app"):
    """Run ``sql`` in one transaction and return that transaction's id."""
    out = inst.psql(f"BEGIN; SELECT txid_current(); {sql}; COMMIT;", dbname=db)
    return int(out.split()[0])


@pytest.fixture(scope="module", params=["replica", "logical"])
def damaged(request):
    """A cluster archiving to a directory, damaged five ways under pgbench load (built once per
    wal_level; the tests only read its WAL)."""
    workdir = sandbox.workdir("pgvault-test-find-")
    try:
        w = _damage(request.param, workdir)
        yield w
    finally:
        subprocess.run([f"{BIN}/pg_ctl", "stop", "-D", str(workdir / "pg"), "-m", "immediate"],
                       capture_output=True, user="postgres")
        shutil.rmtree(workdir, ignore_errors=True)


def _damage(wal_level, workdir):
    arch = sandbox.owned_dir(workdir / "archive", 0o755)
    policy = workdir / "policy.yaml"
    # Every segment goes both to a plain directory (find --wal-dir) and through the real
    # wal-push to site a (find from the site's archive).
    inst = sandbox.new_instance(workdir, start=False, settings={
        "wal_level": wal_level, "archive_mode": "on",
        "archive_command": f"cp %p {arch}/%f && " + sandbox.pgvault_command(policy) + " wal-push %p"})
    w = _World(workdir, inst, arch)
    w.site = w.world.local_site("a")
    state = sandbox.owned_dir(workdir / "state")
    # batch 1: wal-push must not ship (and mark done) files the `cp` before it has not copied.
    w.world.policy(wal={"sites": ["a"], "batch": 1}, state_dir=str(state))
    inst.start()
    inst.psql("CREATE DATABASE app")
    inst.psql("CREATE DATABASE scratch")
    inst.psql("CREATE DATABASE bench")
    inst.psql("""
        CREATE TABLE orders (id int PRIMARY KEY, note text);
        INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
        CREATE TABLE items (id int PRIMARY KEY);
        INSERT INTO items SELECT generate_series(1, 500);
        CREATE TABLE events (id int, payload text);
        INSERT INTO events SELECT g, repeat('e', 50) FROM generate_series(1, 2000) g;
        ANALYZE;""", dbname="app")
    inst.psql("CREATE TABLE keep (x int); INSERT INTO keep SELECT generate_series(1, 10);", dbname="scratch")
    subprocess.run([f"{BIN}/pgbench", "-i", "-s", "1", "-q", "-d", inst.conninfo("bench")], check=True,
                   capture_output=True, user="postgres")
    w.world.cli("relations")
    load = subprocess.Popen([f"{BIN}/pgbench", "-c", "2", "-R", "100", "-T", "300", "-n", "-d",
                             inst.conninfo("bench")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            user="postgres")
    try:
        sandbox.wait_until(lambda: int(inst.psql("SELECT count(*) FROM pgbench_history", dbname="bench")) > 20,
                           60, "pgbench to run")
        inst.psql("VACUUM FULL orders", dbname="app")
        w.xids["truncate"] = xid_of(inst, "TRUNCATE orders")
        w.xids["drop"] = xid_of(inst, "DROP TABLE items")
        w.xids["delete"] = xid_of(inst, "DELETE FROM events")
        inst.psql("DROP DATABASE scratch")
        before = int(inst.psql("SELECT count(*) FROM pgbench_history", dbname="bench"))
        sandbox.wait_until(lambda: int(inst.psql("SELECT count(*) FROM pgbench_history", dbname="bench")) > before + 5,
                           60, "pgbench to run on after the damage")
    finally:
        load.terminate()
        load.wait()
    last = inst.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    inst.psql("SELECT pg_switch_wal()")
    sandbox.wait_until(lambda: (arch / last).exists() and not [
        f for f in os.listdir(inst.pgdata / "pg_wal" / "archive_status") if f.endswith(".ready")],
        120, "the last segment to be archived")
    w.wal_level = wal_level
    return w


class _World:
    def __init__(self, workdir, inst, arch):
        from tests.conftest import World

        self.world = World(workdir, inst)
        self.inst = inst
        self.arch = arch
        self.xids = {}

    def find(self, *args):
        cp = self.world.cli("find", *args, "--json")
        return json.loads(cp.stdout)


def damaging(doc):
    return [c for c in doc["candidates"] if c["damaging"]]


def test_truncate_found_first_and_vacuum_full_is_a_rewrite(damaged):
    doc = damaged.find("--table", "public.orders", "--database", "app", "--wal-dir", str(damaged.arch))
    first = damaging(doc)[0]
    assert (first["xid"], first["kind"], first["confidence"]) == (damaged.xids["truncate"], "TRUNCATE", "high")
    assert first["recovery_target"] == {"recovery_target_xid": str(damaged.xids["truncate"]),
                                        "recovery_target_inclusive": False}
    rewrites = [c for c in doc["candidates"] if c["kind"] == "REWRITE"]
    assert len(rewrites) == 1 and not rewrites[0]["damaging"]
    assert rewrites[0]["xid"] < damaged.xids["truncate"]
    assert [c["xid"] for c in doc["candidates"] if c["kind"] == "TRUNCATE"] == [damaged.xids["truncate"]]


def test_drop_table_found(damaged):
    doc = damaged.find("--table", "items", "--wal-dir", str(damaged.arch))
    first = damaging(doc)[0]
    assert (first["xid"], first["kind"]) == (damaged.xids["drop"], "DROP TABLE")
    assert doc["database"] == "app"


def test_mass_delete_found(damaged):
    doc = damaged.find("--table", "public.events", "--wal-dir", str(damaged.arch))
    first = damaging(doc)[0]
    assert (first["xid"], first["kind"]) == (damaged.xids["delete"], "MASS DELETE")
    assert "2000 rows" in first["detail"]


def test_drop_database_targets_the_drop_record(damaged):
    doc = damaged.find("--table", "public.keep", "--database", "scratch", "--wal-dir", str(damaged.arch))
    first = damaging(doc)[0]
    assert first["kind"] == "DROP DATABASE"
    target = first["recovery_target"]
    assert set(target) == {"recovery_target_lsn", "recovery_target_inclusive"}
    # The drop record comes before the commit record.
    from pgvault.lsn import parse_lsn

    assert parse_lsn(target["recovery_target_lsn"]) < parse_lsn(first["commit_lsn"])


def test_find_reads_the_wal_archive_at_a_site(damaged):
    """Segments pushed by wal-push (gzip, Barman's cloud layout) are fetched and scanned."""
    from pgvault.catalog.layout import wal_key

    assert (damaged.site / wal_key("main", sorted(os.listdir(damaged.arch))[-1], ".gz")).exists()
    doc = damaged.find("--table", "public.orders", "--database", "app")
    assert doc["source"] == "site a"
    first = damaging(doc)[0]
    assert (first["xid"], first["kind"]) == (damaged.xids["truncate"], "TRUNCATE")
    around = first["commit_time"]
    doc = damaged.find("--table", "public.orders", "--database", "app", "--around", around, "--window", "10m")
    assert damaging(doc)[0]["xid"] == damaged.xids["truncate"]


def test_bad_input_is_refused_with_a_hint(damaged):
    w = damaged.world
    for args, words in ((["--table", "public.nosuch", "--wal-dir", str(damaged.arch)], "no record of table public.nosuch"),
                        (["--table", "orders", "--window", "1h"], "--window needs --around"),
                        (["--table", "orders", "--around", "yesterday-ish"], "not a time"),
                        (["--table", "orders", "--wal-dir", "/nonexistent/wal"], "does not exist")):
        cp = w.cli("find", *args, check=False)
        assert cp.returncode == 2, (args, cp.stderr)
        assert words in cp.stderr and "HINT:" in cp.stderr and "Traceback" not in cp.stderr, cp.stderr
