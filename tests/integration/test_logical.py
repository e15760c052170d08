"""Logical dumps end to end on a real cluster: backup to several sites, list, verify, restore."""
from __future__ import annotations

import json
import shutil

import pytest

from pgvault import pg


def load_data(inst, db="app", rows=5000):
    inst.psql(f"CREATE DATABASE {db}")
    inst.psql(f"""
        CREATE ROLE app_owner LOGIN;
        CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric);
        INSERT INTO orders SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, {rows}) g;
        CREATE TABLE "Odd Name" (x int);
        INSERT INTO "Odd Name" VALUES (1), (2), (3);
        ALTER TABLE orders OWNER TO app_owner;
        CREATE INDEX ON orders (note);
    """, dbname=db)


def counts(inst, db):
    return {
        "orders": int(inst.psql("SELECT count(*) FROM orders", dbname=db)),
        "odd": int(inst.psql('SELECT count(*) FROM "Odd Name"', dbname=db)),
        "sum": inst.psql("SELECT sum(amount) FROM orders", dbname=db).strip(),
    }


@pytest.fixture
def logical_world(world):
    load_data(world.pg)
    world.local_site("a")
    world.local_site("b")
    world.jobs["nightly"] = {"method": "logical", "sites": ["a", "b"], "schedule": "0 2 * * *"}
    world.policy()
    return world


def backup(world, job="nightly"):
    cp = world.cli("backup", job)
    bid = cp.stdout.strip().splitlines()[-1]
    return bid


def test_backup_list_verify_restore_round_trip(logical_world):
    w = logical_world
    bid = backup(w)
    listed = json.loads(w.cli("list", "--json").stdout)
    assert {(d["site"], d["backup_id"]) for d in listed} == {("a", bid), ("b", bid)}
    assert all(d["method"] == "logical" for d in listed)

    assert "ok" in w.cli("verify").stdout

    w.cli("restore", bid, "--database", "app", "--as", "app_restored")
    assert counts(w.pg, "app_restored") == counts(w.pg, "app")

    # The manifest recorded exact row counts taken in the dump's own snapshot.
    manifest = json.loads((w.workdir / "site-a" / "clusters/main/backups" / bid / "manifest.json").read_text())
    assert manifest["facts"]["row_counts"]["app"]["public.orders"] == 5000
    assert manifest["system_identifier"] == pg.server_info(w.pg.connect()).system_identifier
    # The backup also noted which file each table lives in (what `pgvault find` needs later).
    records = list((w.workdir / "site-a" / "clusters/main/relations").glob("*.json"))
    assert records and '"public.orders"' in records[0].read_text()


def test_backup_files_are_private(logical_world):
    w = logical_world
    bid = backup(w)
    bdir = w.workdir / "site-a" / "clusters/main/backups" / bid
    modes = {p.name: p.stat().st_mode & 0o777 for p in bdir.rglob("*")}
    assert modes, "backup directory is empty"
    for name, mode in modes.items():
        assert mode & 0o077 == 0, f"{name} is mode {oct(mode)}"


def test_restore_refuses_existing_nonempty_database(logical_world):
    w = logical_world
    bid = backup(w)
    cp = w.cli("restore", bid, "--database", "app", check=False)
    assert cp.returncode == 2
    assert "already exists" in cp.stderr and "HINT:" in cp.stderr


def test_verify_reports_flipped_byte_and_missing_artifact(logical_world):
    w = logical_world
    bid = backup(w)
    bdir_a = w.workdir / "site-a" / "clusters/main/backups" / bid
    dump = bdir_a / "databases" / "app.dump.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    (w.workdir / "site-b" / "clusters/main/backups" / bid / "globals.sql.zst").unlink()

    cp = w.cli("verify", "--json", check=False)
    assert cp.returncode == 1
    reports = {r["site"]: r for r in json.loads(cp.stdout)}
    assert [(p["artifact"], p["kind"]) for p in reports["a"]["problems"]] == [("databases/app.dump.zst", "corrupt")]
    assert [(p["artifact"], p["kind"]) for p in reports["b"]["problems"]] == [("globals.sql.zst", "missing")]


def test_restore_falls_back_to_second_site_when_first_copy_is_corrupt(logical_world):
    w = logical_world
    bid = backup(w)
    dump = w.workdir / "site-a" / "clusters/main/backups" / bid / "databases" / "app.dump.zst"
    data = bytearray(dump.read_bytes())
    data[100] ^= 0xFF
    dump.write_bytes(bytes(data))
    cp = w.cli("restore", bid, "--database", "app", "--as", "app_copy", "--from-site", "a")
    assert "site 'a'" in cp.stderr and "damaged" in cp.stderr
    assert "at site 'b'" in cp.stdout
    assert counts(w.pg, "app_copy") == counts(w.pg, "app")


def test_list_works_from_the_sites_alone(logical_world, tmp_path):
    w = logical_world
    bid = backup(w)
    # A fresh host: a new state dir, nothing but the policy.
    cp = w.cli("list", "--site", "b", "--json", env={"HOME": str(tmp_path)})
    assert [d["backup_id"] for d in json.loads(cp.stdout)] == [bid]


def test_whole_cluster_restore_into_a_fresh_cluster(logical_world, workdir):
    from pgvault import sandbox

    w = logical_world
    bid = backup(w)
    fresh = sandbox.new_instance(workdir, "fresh")
    try:
        w.cli("restore", bid, "--all", "--target", fresh.conninfo())
        assert counts(fresh, "app") == counts(w.pg, "app")
        # Globals came first: the table's owner role exists and owns it.
        assert fresh.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'", dbname="app").strip() == "app_owner"
    finally:
        fresh.stop("immediate")


def test_failed_backup_leaves_nothing_that_looks_like_a_backup(logical_world):
    """pg_dump fails after globals and a first database were already written to both sites."""
    w = logical_world
    w.pg.psql("CREATE DATABASE zlocked")
    w.pg.psql("CREATE TABLE t (x int)", dbname="zlocked")
    w.jobs["broken"] = {"method": "logical", "sites": ["a", "b"], "databases": ["app", "zlocked"],
                        "lock_wait_timeout": "1s"}
    w.policy()
    holder = w.pg.connect("zlocked", autocommit=False)
    try:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        cp = w.cli("backup", "broken", check=False)
    finally:
        holder.close()
    assert cp.returncode == 1
    assert "pg_dump exited with code 1" in cp.stderr and "lock table" in cp.stderr.lower()
    assert json.loads(w.cli("list", "--json").stdout) == []
    # No debris either: the failed backup's artifacts (globals, app's dump) were removed.
    for site in ("site-a", "site-b"):
        assert not list((w.workdir / site / "clusters/main/backups").rglob("*"))
    assert w.cli("verify", check=False).returncode == 0


def test_second_cluster_with_same_name_is_refused(logical_world, workdir):
    from pgvault import sandbox

    w = logical_world
    backup(w)
    other = sandbox.new_instance(workdir, "other")
    try:
        w.pg = other
        w.policy()
        cp = w.cli("backup", "nightly", check=False)
        assert cp.returncode == 2
        assert "system identifier" in cp.stderr and "HINT:" in cp.stderr
    finally:
        other.stop("immediate")
