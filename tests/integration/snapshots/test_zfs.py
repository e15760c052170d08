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
