"""Base backups by pgvault's own engine (method barman), one module scene: a cluster with data
checksums and an extra tablespace, archiving through wal-push, a job writing to a local site and
two S3 sites (two moto buckets). Three bases in a row with WAL recycled between them (the
second-backup regression), then: stock barman-cloud-backup-list / barman-cloud-restore from
each S3 site, stock tar from the local one, PITR from every site with rows compared, the
manifest's per-file list and per-site bytes, a site failing mid-upload (the others commit), a
kill -9 mid-backup, a corrupt page (file + block), a role without permission; and, on an
instance of its own, wal_level = minimal."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pgvault import pg, sandbox
from pgvault.catalog import layout
from pgvault.methods import barman_tools as bt
from pgvault.sites.base import BarmanCloud
from tests.conftest import ROOT, base_world, db_now
from tests.integration.test_pitr import switch_and_wait

SITES = ("a", "eu", "us")


def rows(inst) -> list[int]:
    return [int(x) for x in inst.psql("SELECT id FROM orders ORDER BY id").split()]


def cloud(w, site: str) -> tuple[str, BarmanCloud]:
    cfg = w.sites[site]
    return f"s3://{cfg['bucket']}/pg/clusters", BarmanCloud(f"s3://{cfg['bucket']}/pg", "aws-s3", w.moto.url)


def cloud_env(w, site: str) -> dict:
    return dict(os.environ, AWS_DEFAULT_REGION=w.sites[site]["region"], AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test")


def listed(w, site: str) -> list[str]:
    return [d["backup_id"] for d in json.loads(w.cli("list", "--site", site, "--json").stdout)]


@pytest.fixture(scope="module")
def scene(moto):
    workdir = sandbox.workdir("pgvault-base-")
    w = base_world(workdir, moto, extra_sites=[("us", "us-east-1")])  # a (local), eu, us (S3)
    inst = w.pg
    w.ts = sandbox.owned_dir(workdir / "ts-hot")
    inst.psql(f"CREATE TABLESPACE hot LOCATION '{w.ts}'")
    inst.psql("CREATE TABLE orders (id int PRIMARY KEY, note text) TABLESPACE hot;"
              "CREATE TABLE filler AS SELECT g, md5(g::text) AS m FROM generate_series(1, 60000) g")
    w.bases = []
    for i in range(3):
        # what happens between two weekly bases: writes, WAL switched and recycled by checkpoints
        inst.psql(f"INSERT INTO orders SELECT g, 'batch {i}' FROM generate_series({i * 10 + 1}, {i * 10 + 10}) g")
        for _ in range(2):
            inst.psql("SELECT pg_switch_wal(); CHECKPOINT")
        cp = w.cli("backup", "base")
        w.bases.append(cp.stdout.strip().splitlines()[-1].split()[0])
    inst.psql("INSERT INTO orders SELECT g, 'after' FROM generate_series(31, 40) g")
    w.expected = rows(inst)
    w.before = db_now(inst)
    inst.psql("DELETE FROM orders")
    switch_and_wait(w, inst)
    yield w
    for pidfile in workdir.glob("*/postmaster.pid"):
        pg.Instance(pidfile.parent, 0).stop("immediate")
    inst.stop("immediate")
    shutil.rmtree(workdir, ignore_errors=True)


def manifest(w, bid: str) -> dict:
    return json.loads((w.workdir / "site-a/clusters/main/backups" / bid / "manifest.json").read_text())


def test_three_bases_in_a_row_with_wal_recycled_between_them(scene):
    w = scene
    assert len(set(w.bases)) == 3
    for site in SITES:
        assert listed(w, site) == w.bases
    m = manifest(w, w.bases[-1])
    # one read, one LSN range, the same at every site; no Barman server, no slot
    assert {json.dumps({k: f[k] for k in ("begin_lsn", "end_lsn", "backup_id")}) for f in m["facts"]["barman"].values()} \
        == {json.dumps({"begin_lsn": m["start_lsn"], "end_lsn": m["stop_lsn"], "backup_id": m["facts"]["base"]["barman_id"]})}
    assert not (w.workdir / "site-a/clusters/main/barman").exists()
    assert w.pg.psql("SELECT count(*) FROM pg_replication_slots").strip() == "0"


def test_the_layout_is_barmans_and_the_manifest_lists_every_file(scene):
    w = scene
    bid = w.bases[-1]
    m = manifest(w, bid)
    barman_id = m["facts"]["base"]["barman_id"]
    oid = m["facts"]["base"]["tablespaces"][0]["oid"]
    base = w.workdir / "site-a/clusters/main/base" / barman_id
    assert sorted(p.name for p in base.iterdir()) == sorted(["backup.info", "data.tar.lz4", f"{oid}.tar.lz4"])
    for p in base.iterdir():
        assert p.stat().st_mode & 0o077 == 0, p
    arts = {a["name"]: a for a in m["artifacts"]}
    assert arts["data.tar.lz4"]["key"] == f"base/{barman_id}/data.tar.lz4"
    stored = sum(a["size"] for a in m["artifacts"])
    for site in SITES:
        assert m["facts"]["barman"][site]["stored_bytes"] == stored
    status = json.loads(w.cli("status", "--json").stdout)
    assert json.dumps(status).count(str(stored)) >= 1            # the real size, not the facts file
    files = json.loads((w.workdir / "site-a/clusters/main/backups" / bid / "files.json").read_text())
    data = files["tars"]["data"]
    assert "backup_label" in data and "global/pg_control" in data and not any(k.startswith("pg_wal/0") for k in data)
    assert any(k.startswith("PG_15_") for k in files["tars"][str(oid)])
    # page checksums were verified while reading, and nothing was read twice
    f = m["facts"]["base"]
    assert f["data_checksums"] and f["pages_checked"] > 100 and f["bad_pages"] == []
    assert f["bytes_read"] == sum(v["size"] for t in files["tars"].values() for k, v in t.items() if k != "backup_label")
    cp = w.cli("verify")
    assert cp.returncode == 0 and "ok" in cp.stdout


def test_stock_barman_cloud_restores_from_each_s3_site_and_tar_from_the_local_one(scene):
    w = scene
    m = manifest(w, w.bases[-1])
    barman_id = m["facts"]["base"]["barman_id"]
    oid = m["facts"]["base"]["tablespaces"][0]["oid"]
    for site in ("eu", "us"):
        url, c = cloud(w, site)
        out = subprocess.run(bt.cloud_list_argv(url, "main", c), capture_output=True, text=True, check=True,
                             env=cloud_env(w, site)).stdout
        ids = [b["backup_id"] for b in json.loads(out)["backups_list"]]
        assert barman_id in ids and len(ids) == 3
        dest, tsdir = w.workdir / f"stock-{site}", w.workdir / f"stock-{site}-ts"
        subprocess.run(bt.cloud_restore_argv(url, "main", barman_id, str(dest), c) + ["--tablespace", f"hot:{tsdir}"],
                       capture_output=True, check=True, env=cloud_env(w, site))
        assert (dest / "PG_VERSION").read_text().strip() == "15"
        assert "START WAL LOCATION" in (dest / "backup_label").read_text()
        assert os.readlink(dest / "pg_tblspc" / str(oid)) == str(tsdir) and any(tsdir.glob("PG_15_*/*/*"))
    # a local site: stock lz4 + tar, nothing else
    local = w.workdir / "stock-a"
    local.mkdir()
    src = w.workdir / "site-a/clusters/main/base" / barman_id / "data.tar.lz4"
    subprocess.run(f"lz4 -dc {src} | tar -x -C {local}", shell=True, check=True)
    assert (local / "global/pg_control").stat().st_size == 8192 and (local / "backup_label").exists()
    # the stock restores hold the same files as the manifest says, byte for byte (sample)
    files = json.loads((w.workdir / "site-a/clusters/main/backups" / w.bases[-1] / "files.json").read_text())["tars"]["data"]
    import hashlib
    for rel in ("PG_VERSION", "global/pg_control", "backup_label", "postgresql.conf"):
        for d in (local, w.workdir / "stock-eu", w.workdir / "stock-us"):
            assert hashlib.sha256((d / rel).read_bytes()).hexdigest() == files[rel]["sha256"], (d, rel)


@pytest.mark.parametrize("site", SITES)
def test_pitr_from_each_site_brings_every_row_back(scene, site):
    w = scene
    dest, port = w.workdir / f"pitr-{site}", pg.free_port()
    cp = w.cli("restore", "--to-time", w.before, "--from-site", site, "--target-dir", str(dest),
               "--port", str(port), "--start")
    assert f"at site '{site}'" in cp.stdout and "recovery promoted" in cp.stdout, cp.stdout + cp.stderr
    inst = pg.Instance(dest, port, socket_dir=dest)
    try:
        assert rows(inst) == w.expected
        assert inst.psql("SELECT spcname FROM pg_tablespace t JOIN pg_class c ON c.reltablespace = t.oid "
                         "WHERE relname = 'orders'").strip() == "hot"
        assert (dest / "pg_tblspc").iterdir()
    finally:
        inst.stop("immediate")
        shutil.rmtree(dest, ignore_errors=True)


def test_kill_9_mid_backup_lists_nothing(scene):
    w = scene
    before = {s: listed(w, s) for s in SITES}
    env = dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"), PYTHONPATH=str(ROOT))
    base_dir = w.workdir / "site-a/clusters/main/base"
    known = set(os.listdir(base_dir))
    proc = subprocess.Popen([sys.executable, "-m", "pgvault", "backup", "base"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the tablespace tar is complete and data.tar is being written: in the middle
        sandbox.wait_until(lambda: any(d not in known and any((base_dir / d).glob("*.tar.lz4"))
                                       for d in os.listdir(base_dir)), 60, "a tar at site a", interval=0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for s in SITES:
        assert listed(w, s) == before[s]
    # what the kill left at the local site is debris: reported by verify (not damage), never listed
    new = [d for d in os.listdir(base_dir) if d not in known]
    if new and not (base_dir / new[0] / "backup.info").exists():
        rep = json.loads(w.cli("verify", "--site", "a", "--json").stdout)
        assert any(f"base/{new[0]}/" in d for d in rep[0]["debris"]), rep
    # the server ended the backup with the session: nobody is in backup mode
    sandbox.wait_until(lambda: w.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE "
                                         "query LIKE '%pg_backup_st%' AND pid <> pg_backend_pid()").strip() == "0",
                       30, "the killed backup's session gone")
    # the next backup works: the test below takes it (and fails one site on purpose)
    w.killed_at = before


def test_after_a_kill_the_next_backup_works_and_a_site_failing_mid_upload_is_dropped(scene):
    """In-process, with a FaultySite around site us failing its third write of the data tar:
    the backup right after the kill -9 above commits at a and eu, exit would be 1 naming us."""
    from pgvault.backup import run_backup
    from pgvault.policy import load_policy
    from pgvault.sites import wrapping
    from pgvault.sites.wrappers import FaultySite, nth

    w = scene
    policy = load_policy(str(w.workdir / "policy.yaml"))
    hit = nth(3, "write")
    with wrapping("us", lambda d: FaultySite(d, fail_on=lambda c: "data.tar" in c.key and hit(c))):
        r = run_backup(policy, "base")
    assert r.partial and set(r.failed_sites) == {"us"} and sorted(r.sites) == ["a", "eu"]
    assert listed(w, "a")[-1] == r.backup_id == listed(w, "eu")[-1] and r.backup_id not in listed(w, "us")
    bucket = w.sites["us"]["bucket"]
    keys = [o["Key"] for o in w.moto.client("us-east-1").list_objects_v2(Bucket=bucket).get("Contents", [])]
    barman_id = r.manifest.facts["base"]["barman_id"]
    assert not [k for k in keys if barman_id in k or r.backup_id in k]
    w.bases.append(r.backup_id)


def test_a_role_without_permission_gets_a_clear_error_and_hint(scene):
    w = scene
    w.pg.psql("CREATE ROLE weak LOGIN")
    path = w.workdir / "policy.yaml"
    text = path.read_text()
    try:
        path.write_text(text.replace("user=postgres", "user=weak"))
        cp = w.cli("backup", "base", check=False)
        assert cp.returncode != 0 and "may not run pg_backup_start" in cp.stderr and "GRANT EXECUTE" in cp.stderr, cp.stderr
        assert "Traceback" not in cp.stderr
    finally:
        path.write_text(text)


def test_a_corrupt_page_is_reported_with_file_and_block(scene):
    w = scene
    inst = w.pg
    inst.psql("CREATE TABLE victim AS SELECT g, md5(g::text) AS m FROM generate_series(1, 5000) g; CHECKPOINT")
    rel = inst.psql("SELECT pg_relation_filepath('victim')").strip()
    inst.stop()
    f = Path(inst.pgdata) / rel
    with open(f, "r+b") as fh:                     # a flipped byte in block 3, header intact
        fh.seek(3 * 8192 + 4000)
        b = fh.read(1)
        fh.seek(3 * 8192 + 4000)
        fh.write(bytes([b[0] ^ 0xFF]))
    inst.start()
    try:
        before = listed(w, "a")
        cp = w.cli("backup", "base", check=False)
        assert cp.returncode == 1, cp.stderr
        assert f"{rel} block 3" in cp.stderr and "fail their checksum" in cp.stderr and "HINT" in cp.stderr, cp.stderr
        assert listed(w, "a") == before
    finally:
        inst.psql("DROP TABLE victim")


def test_wal_level_minimal_is_refused_before_any_work_with_the_hint(workdir):
    from tests.conftest import World

    inst = sandbox.new_instance(workdir, "minimal", settings={"wal_level": "minimal", "max_wal_senders": 0})
    try:
        w = World(workdir, inst)
        site = w.local_site("a")
        w.jobs["base"] = {"method": "barman", "sites": ["a"]}
        w.policy(state_dir=str(sandbox.owned_dir(workdir / "state")))
        cp = w.cli("backup", "base", check=False)
        assert cp.returncode != 0 and "wal_level is minimal" in cp.stderr and "wal_level = replica" in cp.stderr
        assert "Traceback" not in cp.stderr and not (site / "clusters/main/base").exists()
    finally:
        inst.stop("immediate")


def test_a_base_from_a_hot_standby(scene):
    """A job `from: standby` over a two-host conninfo (no Patroni): the base is taken on the
    streaming standby, which archives nothing (archive_mode = on, copied from the primary), so
    pgvault switches WAL on the primary and waits for the stop segment at the WAL sites (the
    primary's archiver sends it) before the backup exists. Stock tar lays it down with
    PostgreSQL's own "BACKUP FROM: standby" label."""
    from pgvault.backup import run_backup
    from pgvault.policy import load_policy
    from tests.integration.test_ha import wal_names

    w = scene
    sdir, port = w.workdir / "standby", pg.free_port()
    sandbox.owned_dir(sdir)
    proc_argv = ["/usr/lib/postgresql/15/bin/pg_basebackup", "-D", str(sdir), "-R", "-X", "stream", "-c", "fast",
                 "-d", w.pg.conninfo(), "--tablespace-mapping", f"{w.ts}={w.workdir / 'standby-ts'}"]
    sandbox.owned_dir(w.workdir / "standby-ts")
    subprocess.run(proc_argv, check=True, capture_output=True, user="postgres")
    standby = pg.Instance(sdir, port, socket_dir=sandbox.owned_dir(w.workdir / "standby-sock", 0o755))
    standby.start()
    try:
        assert standby.psql("SELECT pg_is_in_recovery()").strip() == "t"
        policy = load_policy(str(w.workdir / "policy.yaml"))
        assert standby.psql("SHOW archive_mode").strip() == "on"
        both = f"host={w.pg.socket_dir},{standby.socket_dir} port={w.pg.port},{standby.port} user=postgres dbname=postgres"
        policy = policy.model_copy(update={
            "cluster": policy.cluster.model_copy(update={"conninfo": both, "pgdata": str(sdir)}),
            "jobs": {**policy.jobs, "base": policy.jobs["base"].model_copy(update={"from_": "standby"})}})
        w.pg.psql("SELECT pg_switch_wal()")          # give the standby's restartpoint something to start from
        r = run_backup(policy, "base")
        base = r.manifest.facts["base"]
        assert not r.partial and base["from_standby"] is True
        assert base["standby"]["archive_mode"] == "on" and base["standby"]["stop_wal_at"] == ["a", "eu"]
        for site in ("a", "eu"):  # the stop segment was there before the manifest
            assert base["end_wal"] in wal_names(w, site), (site, base["end_wal"])
        barman_id = r.manifest.facts["base"]["barman_id"]
        out = w.workdir / "from-standby"
        out.mkdir()
        src = w.workdir / "site-a/clusters/main/base" / barman_id / "data.tar.lz4"
        subprocess.run(f"lz4 -dc {src} | tar -x -C {out}", shell=True, check=True)
        assert "BACKUP FROM: standby" in (out / "backup_label").read_text()
        w.bases.append(r.backup_id)
    finally:
        standby.stop("immediate")
