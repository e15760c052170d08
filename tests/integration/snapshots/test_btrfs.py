"""method: btrfs on a real loop-mounted btrfs with PostgreSQL 15 under pgbench load."""
from __future__ import annotations

import json
import os

from pgvault import pg

from .conftest import Load, consistent, invariants, pgbench_init, start_pg


def backup(world, job="snaps") -> str:
    return world.cli("backup", job).stdout.strip().splitlines()[-1]


def manifest(site_dir, bid) -> dict:
    return json.loads((site_dir / "clusters/main/backups" / bid / "manifest.json").read_text())


def test_snapshot_under_load_clones_consistently(btrfs_fs, workdir, instances, snapworld):
    sv = btrfs_fs.subvolume("pg", owner_postgres=True)
    inst = start_pg(workdir, sv / "data", instances)
    pgbench_init(inst)
    inst.psql("SELECT pg_create_physical_replication_slot('production_replica')")
    w = snapworld(inst)
    site = w.local_site("a")
    w.jobs["snaps"] = {"method": "btrfs", "subvolumes": [str(sv)], "sites": ["a"], "keep_local": {"count": 1}}
    w.policy()
    with Load(inst):
        before = invariants(inst.conninfo())["history"]
        first = backup(w)
    m1 = manifest(site, first)
    assert m1["facts"]["mode"] == "atomic" and m1.get("parent") is None
    sidecar = json.loads((btrfs_fs.mountpoint / ".pgvault-snapshots" / first / "pgvault.json").read_text())
    assert sidecar["fence_lsn"] == m1["stop_lsn"] and sidecar["timeline"] == m1["timeline"] == 1

    out = json.loads(w.cli("snapshot", "clone", "snaps", first, "--to", str(btrfs_fs.mountpoint / "clone1"),
                           "--start", "--json").stdout)
    instances.append(out["pgdata"])
    got = invariants(out["conninfo"])
    assert got["accounts"] == 100000 and got["history"] >= before and consistent(got), got
    clone = pg.connect(out["conninfo"])
    assert pg.scalar(clone, "SHOW archive_mode") == "off"
    assert pg.scalar(clone, "SELECT count(*) FROM pg_replication_slots") == 0
    clone.close()

    inst.psql("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())")
    second = backup(w)
    assert manifest(site, second)["parent"] == first
    out2 = json.loads(w.cli("snapshot", "clone", "snaps", "--to", str(btrfs_fs.mountpoint / "clone2"), "--start",
                            "--json").stdout)
    instances.append(out2["pgdata"])
    assert invariants(out2["conninfo"]) == invariants(inst.conninfo())

    # keep_local count 1, but the site's newest copy (the next incremental's base) is kept:
    # after the third snapshot the first is gone, the second stays as the site's base.
    third = backup(w)
    listed = [r["backup_id"] for r in json.loads(w.cli("snapshot", "list", "snaps", "--json").stdout)]
    assert listed == [second, third], listed
    assert manifest(site, third)["parent"] == second

    # A clone target that is not empty is refused with a hint; nothing is touched.
    cp = w.cli("snapshot", "clone", "snaps", "--to", str(btrfs_fs.mountpoint / "clone2"), check=False)
    assert cp.returncode == 2 and "HINT:" in cp.stderr and "Traceback" not in cp.stderr


def test_pg_wal_subvolume_backup_api_chain_to_local_and_s3(btrfs_fs, workdir, instances, snapworld, moto):
    data = btrfs_fs.subvolume("pg", owner_postgres=True)
    wal = btrfs_fs.subvolume("wal", owner_postgres=True)
    ts = btrfs_fs.subvolume("ts", owner_postgres=True)
    inst = start_pg(workdir, data / "data", instances, waldir=wal / "pg_wal")
    pgbench_init(inst)
    inst.psql(f"CREATE TABLESPACE ts LOCATION '{ts}'")
    inst.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 500) g")
    w = snapworld(inst, moto)
    local = w.local_site("near")
    w.s3_site("far", region="eu-west-1")
    w.jobs["snaps"] = {"method": "btrfs", "subvolumes": [str(data), str(wal), str(ts)], "sites": ["near", "far"]}
    w.policy()
    with Load(inst):
        first = backup(w)
        second = backup(w)
    m1, m2 = manifest(local, first), manifest(local, second)
    assert m1["facts"]["mode"] == m2["facts"]["mode"] == "backup-api"
    assert m2["parent"] == first and {"backup_label", "tablespace_map"} <= {a["name"] for a in m2["artifacts"]}

    # The local clone of a backup-API snapshot set starts from its backup_label.
    out = json.loads(w.cli("snapshot", "clone", "snaps", first, "--to", str(btrfs_fs.mountpoint / "clone"),
                           "--start", "--json").stdout)
    instances.append(out["pgdata"])
    assert consistent(invariants(out["conninfo"]))
    assert os.path.realpath(os.path.join(out["pgdata"], "pg_wal")).startswith(out["volumes"][str(wal)])
    # The tablespace is the clone's, not production's, and holds its rows.
    clone = pg.connect(out["conninfo"])
    assert pg.scalar(clone, "SELECT count(*) FROM in_ts") == 500
    assert pg.scalar(clone, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'") == out["volumes"][str(ts)]
    clone.close()

    # Received from S3 (full + incremental) into a fresh directory, then started.
    out = json.loads(w.cli("snapshot", "restore", "snaps", "--from-site", "far", "--to",
                           str(btrfs_fs.mountpoint / "fromfar"), "--start", "--json").stdout)
    instances.append(out["pgdata"])
    assert out["chain"] == [first, second]
    got = invariants(out["conninfo"])
    assert got["accounts"] == 100000 and consistent(got), got
    assert pg.scalar(pg.connect(out["conninfo"]), "SELECT count(*) FROM in_ts") == 500


def test_backup_api_failure_is_a_clear_error_and_leaves_nothing(btrfs_fs, workdir, instances, snapworld):
    data = btrfs_fs.subvolume("pg", owner_postgres=True)
    wal = btrfs_fs.subvolume("wal", owner_postgres=True)
    inst = start_pg(workdir, data / "data", instances, waldir=wal / "pg_wal")
    inst.configure(max_replication_slots=0)  # the backup API path cannot reserve its WAL
    inst.stop()
    inst.start()
    w = snapworld(inst)
    site = w.local_site("a")
    w.jobs["snaps"] = {"method": "btrfs", "subvolumes": [str(data), str(wal)], "sites": ["a"]}
    w.policy()
    cp = w.cli("backup", "snaps", check=False)
    assert cp.returncode == 3 and "max_replication_slots" in cp.stderr and "Traceback" not in cp.stderr
    snapdir = btrfs_fs.mountpoint / ".pgvault-snapshots"
    assert not snapdir.exists() or not any(p.is_dir() and any(p.iterdir()) for p in snapdir.iterdir())
    assert not list(site.rglob("manifest.json"))
