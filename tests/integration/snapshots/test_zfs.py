"""method: zfs on a real zfs-fuse pool with PostgreSQL 15 under pgbench load."""
from __future__ import annotations

import json
import subprocess

from pgvault import pg

from .conftest import Load, consistent, invariants, pgbench_init, start_pg


def backup(world, job="snaps") -> str:
    return world.cli("backup", job).stdout.strip().splitlines()[-1]


def manifest(site_dir, bid) -> dict:
    return json.loads((site_dir / "clusters/main/backups" / bid / "manifest.json").read_text())


def zget(prop, name) -> str:
    return subprocess.run(["zfs", "get", "-H", "-o", "value", prop, name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_snapshot_under_load_clones_consistently(zpool, workdir, instances, snapworld):
    ds, mnt = zpool.dataset("pg", owner_postgres=True)
    inst = start_pg(workdir, mnt / "data", instances)
    pgbench_init(inst)
    inst.psql("SELECT pg_create_physical_replication_slot('production_replica')")
    w = snapworld(inst)
    site = w.local_site("a")
    w.jobs["snaps"] = {"method": "zfs", "datasets": [ds], "sites": ["a"]}
    w.policy()

    with Load(inst):
        before = invariants(inst.conninfo())["history"]
        first = backup(w)
    m1 = manifest(site, first)
    assert m1["facts"]["mode"] == "atomic" and m1.get("parent") is None
    assert pg.server_info(inst.connect()).timeline == m1["timeline"] == 1
    # The LSN fence is on the snapshot and in the manifest, and is past the replay start.
    assert zget("pgvault:fence_lsn", f"{ds}@{first}") == m1["stop_lsn"] == m1["facts"]["fence_lsn"]
    assert m1["start_time"] and m1["stop_time"] and m1["start_wal"] <= m1["stop_wal"]

    out = json.loads(w.cli("snapshot", "clone", "snaps", first, "--to", f"{zpool.name}/clone1", "--start",
                           "--json").stdout)
    instances.append(out["pgdata"])
    got = invariants(out["conninfo"])
    assert got["accounts"] == 100000 and got["history"] >= before and consistent(got), got
    # Clone hygiene: own port, archiving off, production's replication slot gone.
    assert out["port"] != inst.port
    clone = pg.connect(out["conninfo"])
    assert pg.scalar(clone, "SHOW archive_mode") == "off"
    assert pg.scalar(clone, "SELECT count(*) FROM pg_replication_slots") == 0
    clone.close()
    assert inst.psql("SELECT slot_name FROM pg_replication_slots").strip() == "production_replica"

    # Idle now: a second snapshot goes to the site incrementally and its clone matches exactly.
    inst.psql("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())")
    second = backup(w)
    m2 = manifest(site, second)
    assert m2["parent"] == first and m2["facts"]["incremental"] is True
    assert all(".from-" + first in a["name"] for a in m2["artifacts"] if a["name"].startswith("streams/"))
    out2 = json.loads(w.cli("snapshot", "clone", "snaps", "--to", f"{zpool.name}/clone2", "--start", "--json").stdout)
    instances.append(out2["pgdata"])
    assert out2["backup_id"] == second
    assert invariants(out2["conninfo"]) == invariants(inst.conninfo())

    listed = json.loads(w.cli("snapshot", "list", "snaps", "--json").stdout)
    assert [r["backup_id"] for r in listed] == [first, second]


def test_pg_wal_on_second_dataset_uses_backup_api(zpool, workdir, instances, snapworld):
    data_ds, data_mnt = zpool.dataset("pg", owner_postgres=True)
    wal_ds, wal_mnt = zpool.dataset("wal", owner_postgres=True)
    inst = start_pg(workdir, data_mnt / "data", instances, waldir=wal_mnt / "pg_wal")
    pgbench_init(inst)
    w = snapworld(inst)
    site = w.local_site("a")
    # A job that misses the pg_wal dataset would produce a snapshot that cannot restore: refused.
    w.jobs["partial"] = {"method": "zfs", "datasets": [data_ds], "sites": ["a"]}
    w.jobs["nothere"] = {"method": "zfs", "datasets": [f"{zpool.name}/nope"], "sites": ["a"]}
    w.jobs["snaps"] = {"method": "zfs", "datasets": [data_ds, wal_ds], "sites": ["a"]}
    w.policy()
    cp = w.cli("backup", "partial", check=False)
    assert cp.returncode != 0 and "pg_wal" in cp.stderr and "HINT" in cp.stderr and "Traceback" not in cp.stderr
    cp = w.cli("backup", "nothere", check=False)
    assert cp.returncode != 0 and "does not exist" in cp.stderr and "Traceback" not in cp.stderr
    assert subprocess.run(["zfs", "list", "-H", "-t", "snapshot"], capture_output=True, text=True).stdout.count(zpool.name) == 0
    with Load(inst):
        bid = backup(w)
    m = manifest(site, bid)
    assert m["facts"]["mode"] == "backup-api"
    assert "LABEL: pgvault snaps " + bid in m["facts"]["backup_label"]
    assert {"backup_label"} <= {a["name"] for a in m["artifacts"]}
    assert "START WAL LOCATION" in zget("pgvault:meta", f"{data_ds}@{bid}")
    # Nothing is left of the backup window on the server.
    assert inst.psql("SELECT count(*) FROM pg_replication_slots").strip() == "0"

    out = json.loads(w.cli("snapshot", "clone", "snaps", bid, "--to", f"{zpool.name}/clone", "--start", "--json").stdout)
    instances.append(out["pgdata"])
    got = invariants(out["conninfo"])
    assert got["accounts"] == 100000 and consistent(got), got
    # The clone's pg_wal is the clone of the wal dataset, not production's.
    import os
    assert os.path.realpath(os.path.join(out["pgdata"], "pg_wal")).startswith(out["volumes"][wal_ds])


def test_full_then_incremental_to_local_and_s3_then_receive(zpool, workdir, instances, snapworld, moto):
    ds, mnt = zpool.dataset("pg", owner_postgres=True)
    inst = start_pg(workdir, mnt / "data", instances)
    pgbench_init(inst)
    w = snapworld(inst, moto)
    local = w.local_site("near")
    w.s3_site("far", region="eu-west-1")
    w.jobs["snaps"] = {"method": "zfs", "datasets": [ds], "sites": ["near", "far"]}
    w.policy()
    with Load(inst):
        first = backup(w)
    inst.psql("CREATE TABLE after_first AS SELECT g FROM generate_series(1, 1000) g")
    second = backup(w)
    expected = invariants(inst.conninfo())
    assert manifest(local, second)["parent"] == first

    out = json.loads(w.cli("snapshot", "restore", "snaps", "--from-site", "far", "--to", f"{zpool.name}/fromfar",
                           "--start", "--json").stdout)
    instances.append(out["pgdata"])
    assert out["backup_id"] == second and out["chain"] == [first, second] and out["site"] == "far"
    assert invariants(out["conninfo"]) == expected
    assert pg.scalar(pg.connect(out["conninfo"]), "SELECT count(*) FROM after_first") == 1000

    # A damaged stream at a site fails the restore cleanly and leaves no dataset behind.
    stream = next(p for p in (local / "clusters/main/backups" / second / "streams").iterdir())
    stream.write_bytes(stream.read_bytes()[:-10] + b"0123456789")
    cp = w.cli("snapshot", "restore", "snaps", "--from-site", "near", "--to", f"{zpool.name}/broken", check=False)
    assert cp.returncode == 1 and "checksum" in cp.stderr and "Traceback" not in cp.stderr
    assert subprocess.run(["zfs", "list", f"{zpool.name}/broken"], capture_output=True).returncode != 0
    # Without --from-site the damaged copy is reported and the intact one at the other site used.
    out = json.loads(w.cli("snapshot", "restore", "snaps", "--to", f"{zpool.name}/fallback", "--json").stdout)
    assert out["site"] == "far" and out["backup_id"] == second

