"""Expiry of base backups (method barman: pgvault's engine, Barman's cloud layout at every
site). The backup itself is exercised in test_base_backup.py's scene and test_pitr.py's."""
from __future__ import annotations



def test_expiry_removes_barmans_own_copies_and_the_wal_before_the_kept_base(s3world):
    """Two base backups, retention count 1: expire deletes the older one at both sites —
    pgvault's manifest, Barman's own backup (barman-cloud layout at S3, the Barman server at the
    local site) — and the WAL before the kept base; the kept one stays listed by stock Barman."""
    import json
    import os

    from pgvault import sandbox
    from pgvault.methods import barman_tools as bt
    from pgvault.sites.base import BarmanCloud

    w = s3world
    policy = w.workdir / "policy.yaml"
    w.pg.stop()
    w.pg.configure(archive_mode="on", archive_command=sandbox.pgvault_command(policy) + " wal-push %p")
    w.local_site("a")
    w.s3_site("eu", region="eu-west-1")
    # zstd, which barman-cloud-restore cannot read, from an earlier policy: written as lz4, said so
    w.jobs["base"] = {"method": "barman", "sites": ["a", "eu"], "compression": "zstd", "retain": {"count": 1}}
    w.policy(wal={"sites": ["a", "eu"]}, state_dir=str(sandbox.owned_dir(w.workdir / "state")))
    w.pg.start()
    w.pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()")
    cp = w.cli("backup", "base")
    first = cp.stdout.split()[0]
    assert "zstd is written as lz4" in cp.stderr, cp.stderr
    w.pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()")
    second = w.cli("backup", "base").stdout.split()[0]
    manifests = {d["backup_id"]: d for d in json.loads(w.cli("list", "--site", "a", "--json").stdout)}
    assert set(manifests) == {first, second}
    facts = json.loads((w.workdir / "site-a/clusters/main/backups" / first / "manifest.json").read_text())["facts"]
    old_ids = {s: facts["barman"][s]["backup_id"] for s in ("a", "eu")}

    w.cli("expire")

    for site in ("a", "eu"):
        assert [d["backup_id"] for d in json.loads(w.cli("list", "--site", site, "--json").stdout)] == [second]
    eu = w.sites["eu"]
    cloud = json.loads(subprocess_output(bt.cloud_list_argv(f"s3://{eu['bucket']}/pg/clusters", "main",
                                                       BarmanCloud(f"s3://{eu['bucket']}/pg", "aws-s3", w.moto.url))))
    assert old_ids["eu"] not in {b["backup_id"] for b in cloud["backups_list"]} and cloud["backups_list"]
    listing = os.listdir(w.workdir / "site-a/clusters/main/base")
    assert old_ids["a"] not in listing and listing
    # WAL before the kept base is gone; the kept base's own WAL is still there.
    kept = json.loads((w.workdir / "site-a/clusters/main/backups" / second / "manifest.json").read_text())
    wals = sorted(p.name[:24] for p in (w.workdir / "site-a/clusters/main/wals").rglob("0*") if p.is_file())
    assert wals and wals[0] >= kept["start_wal"][:24]


def subprocess_output(argv):
    import os
    import subprocess

    return subprocess.run(argv, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
