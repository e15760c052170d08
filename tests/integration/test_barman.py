"""Barman base backups at a local site (generated Barman server) and an S3 site
(barman-cloud-backup), read back with the stock Barman tools alone."""
from __future__ import annotations

import json
import os

from pgvault.methods import barman_tools as bt


def test_barman_backup_to_local_and_s3_sites(s3world):
    w = s3world
    w.pg.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
    local = w.local_site("disk")
    bucket = w.s3_site("eu", region="eu-west-1")
    w.jobs["base"] = {"method": "barman", "sites": ["disk", "eu"], "compression": "lz4"}
    w.policy()
    bid = w.cli("backup", "base").stdout.strip().splitlines()[-1]

    m = json.loads((local / "clusters/main/backups" / bid / "manifest.json").read_text())
    assert m["method"] == "barman"
    for site in ("disk", "eu"):
        f = m["facts"]["barman"][site]
        assert f["begin_wal"] <= f["end_wal"] and f["timeline"] == 1
        assert f["begin_time"] <= f["end_time"]
    assert m["start_lsn"] and m["stop_lsn"] and m["start_wal"] and m["stop_wal"]

    # Stock Barman sees each backup in its own layout.
    conf = local / "clusters/main/barman/barman.conf"
    out = json.loads(os.popen(f"{bt.tool('barman')} -c {conf} -f json list-backups main").read())
    ids = [b["backup_id"] for b in out["main"]] if isinstance(out.get("main"), list) else list(out["main"])
    assert m["facts"]["barman"]["disk"]["backup_id"] in str(out)
    keys = [o["Key"] for o in w.moto.client("eu-west-1").list_objects_v2(Bucket=bucket)["Contents"]]
    cloud_id = m["facts"]["barman"]["eu"]["backup_id"]
    assert f"pg/clusters/main/base/{cloud_id}/backup.info" in keys
    # Backup files at the local site are private.
    for p in (local / "clusters/main/barman").rglob("*"):
        assert p.stat().st_mode & 0o077 == 0, p
    # The replication slot Barman used is gone (it must never hold WAL on the server).
    assert w.pg.psql("SELECT count(*) FROM pg_replication_slots").strip() == "0"
    assert ids is not None
