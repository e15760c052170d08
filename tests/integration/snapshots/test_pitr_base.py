"""A snapshot as a PITR base: snapshot under load + WAL archived by `pgvault wal-push`, then an
accidental TRUNCATE; recover the snapshot with `pgvault wal-fetch` to a time just before it."""
from __future__ import annotations

import json
import subprocess

from pgvault import pg, sandbox
from pgvault.catalog.catalog import Catalog
from pgvault.policy import load_policy
from pgvault.lsn import parse_lsn as lsn_int
from pgvault.sites import open_sites

from .conftest import Load, consistent, invariants, pgbench_init
from pgvault.sandbox.fs import instance_on


def archived(inst, segment: str) -> bool:
    # wal-push ships waiting segments in batches and marks them done itself, so
    # pg_stat_archiver may never name this one: look at archive_status.
    return (inst.pgdata / "pg_wal" / "archive_status" / f"{segment}.done").exists()


def switch_and_wait(inst) -> None:
    seg = inst.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    inst.psql("SELECT pg_switch_wal()")
    sandbox.wait_until(lambda: archived(inst, seg), 120, f"{seg} to be archived")


def test_snapshot_plus_wal_recovers_to_just_before_truncate(zpool, workdir, instances, snapworld):
    ds, mnt = zpool.dataset("pg", owner_postgres=True)
    policy_file = workdir / "policy.yaml"
    inst = instance_on(mnt / "data", workdir / "sock", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy_file) + " wal-push %p"})
    instances.append(str(inst.pgdata))
    w = snapworld(inst)
    w.local_site("a")
    w.jobs["snaps"] = {"method": "zfs", "datasets": [ds], "sites": ["a"]}
    w.policy(wal={"sites": ["a"]}, state_dir=str(sandbox.owned_dir(workdir / "state")))
    inst.start()
    pgbench_init(inst)
    switch_and_wait(inst)  # wal-push (as postgres) binds the cluster at the site first

    with Load(inst):
        bid = w.cli("backup", "snaps").stdout.strip().splitlines()[-1]
    good = invariants(inst.conninfo())
    target = inst.psql("SELECT clock_timestamp()").strip()
    target_lsn = inst.psql("SELECT pg_current_wal_lsn()").strip()
    inst.psql("TRUNCATE pgbench_history")  # the accident
    switch_and_wait(inst)

    policy = load_policy(str(policy_file))
    m = Catalog(open_sites(policy)["a"], "main").manifest(bid)
    # The target is past the LSN fence, so this base may serve it.
    assert lsn_int(m.stop_lsn) <= lsn_int(target_lsn) and m.stop_time.isoformat() < target.replace(" ", "T")

    # A time before the fence is refused by the planner: no base can serve it.
    early = m.start_time.isoformat()
    cp = w.cli("restore", "--to-time", early, "--target-dir", str(workdir / "too-early"), check=False)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr and not (workdir / "too-early").exists()

    # `pgvault restore --to-time` picks the snapshot as its base and replays archived WAL.
    dest = workdir / "recovered"
    port = pg.free_port()
    plan = json.loads(w.cli("restore", "--to-time", target, "--target-dir", str(dest), "--port", str(port),
                            "--start", "--json").stdout)
    instances.append(str(dest))
    assert plan["plan"]["base"]["backup_id"] == bid and plan["plan"]["base"]["method"] == "zfs"
    restored = pg.Instance(dest, port, socket_dir=dest)
    assert restored.psql("SELECT pg_is_in_recovery()").strip() == "f"
    got = invariants(restored.conninfo())
    assert got == good and got["history"] > 0 and consistent(got)
    assert restored.psql("SHOW archive_mode").strip() == "off"
    restored.stop()

    # Once the local snapshot is gone the base is received from the site's chain instead.
    subprocess.run(["zfs", "destroy", f"{ds}@{bid}"], check=True)
    dest2 = workdir / "recovered-from-site"
    port2 = pg.free_port()
    w.cli("restore", "--to-time", target, "--target-dir", str(dest2), "--port", str(port2), "--start", "--json")
    instances.append(str(dest2))
    assert invariants(pg.Instance(dest2, port2, socket_dir=dest2).conninfo()) == good
    names = subprocess.run(["zfs", "list", "-H", "-o", "name"], capture_output=True, text=True).stdout
    assert "pgvault-scratch" not in names  # the scratch copy is gone
