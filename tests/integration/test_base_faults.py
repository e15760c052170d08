"""Faults around pgvault's base backups (method barman), one module scene: a cluster archiving
through wal-push to site a (local) and eu (S3, moto), a base job to both.

- the server restarted in the middle of a backup (its held session dies before pg_backup_stop):
  a clear error, nothing listed or left that looks like a backup, the next backup works;
- a damaged copy at the chosen site (a byte flipped inside the lz4 stream, or the object cut
  short): the restore takes the same backup from the other site and says so;
- bases of the earlier engine (one Barman run per site: a generated Barman server at the local
  site, barman-cloud-backup at S3), taken by the commit before the engine changed: listed,
  restored by PITR from each site, expired by the new code;
- a local site that fills up mid-upload (a 16 MiB tmpfs) beside S3: the full site is dropped and
  named, the other commits, the full site keeps nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgvault import pg, sandbox
from tests.conftest import ROOT, base_world, db_now
from tests.integration.test_pitr import switch_and_wait

# The last commit whose `method: barman` ran Barman itself (a Barman server at local sites,
# barman-cloud-backup at S3): the parent of e3b2842, which brought pgvault's own engine.
EARLIER_ENGINE = "3ccd521"


def rows(inst) -> list[int]:
    return [int(x) for x in inst.psql("SELECT id FROM orders ORDER BY id").split()]


def listed(w, site: str) -> list[str]:
    return [d["backup_id"] for d in json.loads(w.cli("list", "--site", site, "--json").stdout)]


def s3_keys(w, site: str) -> list[str]:
    cfg = w.sites[site]
    client = w.moto.client(cfg["region"])
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = client.list_objects_v2(Bucket=cfg["bucket"], **kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def manifest(w, bid: str) -> dict:
    return json.loads((w.workdir / "site-a/clusters/main/backups" / bid / "manifest.json").read_text())


@pytest.fixture(scope="module")
def scene(moto):
    workdir = sandbox.workdir("pgvault-basefault-")
    w = base_world(workdir, moto)
    inst = w.pg
    inst.psql("CREATE TABLE orders (id int PRIMARY KEY, note text);"
              "CREATE TABLE filler AS SELECT g, md5(g::text) AS m FROM generate_series(1, 60000) g")
    yield w
    for pidfile in workdir.glob("*/postmaster.pid"):
        pg.Instance(pidfile.parent, 0).stop("immediate")
    inst.stop("immediate")
    shutil.rmtree(workdir, ignore_errors=True)


def add_rows(w, first: int, n: int, note: str) -> None:
    w.pg.psql(f"INSERT INTO orders SELECT g, '{note}' FROM generate_series({first}, {first + n - 1}) g")


def pitr(w, site: str, to_time: str, name: str) -> list[int]:
    """restore --to-time from one site alone, started; the rows it holds."""
    dest, port = w.workdir / name, pg.free_port()
    cp = w.cli("restore", "--to-time", to_time, "--from-site", site, "--target-dir", str(dest),
               "--port", str(port), "--start")
    assert "recovery promoted" in cp.stdout, cp.stdout + cp.stderr
    inst = pg.Instance(dest, port, socket_dir=dest)
    try:
        return rows(inst)
    finally:
        inst.stop("immediate")
        shutil.rmtree(dest, ignore_errors=True)


def test_the_server_restarted_mid_backup_fails_clearly_and_leaves_nothing(scene):
    """In-process: the first write of data.tar at site a restarts the server (pg_ctl -m fast),
    so the restart falls between pg_backup_start and pg_backup_stop whatever the machine's
    speed. The held session dies with it; the backup fails with the cause (exit 3), no site
    lists it, and the next backup works."""
    from pgvault.backup import run_backup
    from pgvault.errors import DatabaseError
    from pgvault.policy import load_policy
    from pgvault.sites import wrapping
    from pgvault.sites.wrappers import FaultySite

    w = scene
    add_rows(w, 1, 10, "before restart")
    before = {s: listed(w, s) for s in ("a", "eu")}
    keys_before = set(s3_keys(w, "eu"))
    base_dir = w.workdir / "site-a/clusters/main/base"
    dirs_before = set(os.listdir(base_dir)) if base_dir.is_dir() else set()
    restarted = []

    def restart_once(call) -> bool:
        if "data.tar" in call.key and call.op == "write" and not restarted:
            restarted.append(call.key)
            w.pg.stop("fast")
            w.pg.start()
        return False                       # the write itself goes through

    policy = load_policy(str(w.workdir / "policy.yaml"))
    with wrapping("a", lambda d: FaultySite(d, fail_on=restart_once)):
        with pytest.raises(DatabaseError) as err:
            run_backup(policy, "base")
    assert restarted, "the backup never wrote data.tar"
    assert "ended the backup's session before pg_backup_stop" in err.value.message, err.value.message
    assert err.value.exit_code == 3 and "take the backup again" in err.value.hint
    for s in ("a", "eu"):
        assert listed(w, s) == before[s]
    # nothing at either site looks like a backup: no new backup.info, no new manifest
    new_dirs = set(os.listdir(base_dir)) - dirs_before if base_dir.is_dir() else set()
    assert not [d for d in new_dirs if (base_dir / d / "backup.info").exists()]
    new_keys = set(s3_keys(w, "eu")) - keys_before
    assert not [k for k in new_keys if k.endswith(("backup.info", "manifest.json"))], new_keys
    assert w.pg.psql("SELECT 1").strip() == "1"
    # the next backup works (CLI, as a user runs it)
    cp = w.cli("backup", "base")
    w.base = cp.stdout.strip().splitlines()[-1].split()[0]
    assert listed(w, "a")[-1] == w.base == listed(w, "eu")[-1]
    add_rows(w, 11, 10, "after base")
    w.after_base = rows(w.pg)
    w.after_base_time = db_now(w.pg)
    add_rows(w, 1000, 1, "past the target")      # recovery stops at the first commit after it
    switch_and_wait(w, w.pg)


@pytest.mark.parametrize("damage", ["byte flipped mid-stream", "cut short"])
def test_a_damaged_copy_at_the_chosen_site_falls_back_to_the_other(scene, damage):
    w = scene
    m = manifest(w, w.base)
    tar = w.workdir / "site-a/clusters/main/base" / m["facts"]["base"]["barman_id"] / "data.tar.lz4"
    good = tar.read_bytes()
    bad = bytearray(good)
    if damage == "cut short":
        bad = bad[: len(bad) // 2]
    else:
        for off in range(len(bad) // 3, len(bad) // 3 + 64):    # inside an lz4 block, not a header
            bad[off] ^= 0xA5
    tar.write_bytes(bytes(bad))
    try:
        if damage == "cut short":
            got = pitr(w, "a", w.after_base_time, "fallback-pitr")
            assert got == w.after_base
        dest = w.workdir / "fallback"
        cp = w.cli("restore", "--to-time", w.after_base_time, "--from-site", "a", "--target-dir", str(dest),
                   check=False)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "restored base from site 'eu'" in cp.stdout, cp.stdout
        assert "failed its checksum" in cp.stderr and "site 'a'" in cp.stderr and "Traceback" not in cp.stderr, cp.stderr
        files = json.loads((w.workdir / "site-a/clusters/main/backups" / w.base / "files.json").read_text())
        import hashlib
        for rel in ("PG_VERSION", "global/pg_control", "backup_label"):
            assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == files["tars"]["data"][rel]["sha256"]
        shutil.rmtree(dest)
        # verify names the damaged copy
        rep = w.cli("verify", "--site", "a", check=False)
        assert rep.returncode != 0 and "data.tar.lz4" in rep.stdout + rep.stderr
    finally:
        tar.write_bytes(good)


def earlier_engine(w) -> Path:
    """The earlier engine's pgvault package, from this repository's history."""
    out = w.workdir / "earlier"
    if not out.exists():
        out.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", EARLIER_ENGINE, "pgvault"],
                                 capture_output=True, check=False)
        assert archive.returncode == 0, (
            f"this test needs commit {EARLIER_ENGINE} (the earlier base engine) in the checkout's history: "
            f"{archive.stderr.decode()} (clone without --depth)")
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def test_bases_of_the_earlier_engine_stay_listable_restorable_and_expirable(scene):
    w = scene
    old = earlier_engine(w)
    env = dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"), PYTHONPATH=str(old))
    cp = subprocess.run([sys.executable, "-m", "pgvault", "backup", "base"], capture_output=True, text=True,
                        env=env, cwd=str(old), timeout=600)   # cwd first on sys.path: not this checkout
    assert cp.returncode == 0, cp.stdout + cp.stderr
    old_id = cp.stdout.strip().splitlines()[-1].split()[0]
    facts = manifest(w, old_id)["facts"]["barman"]
    assert facts["a"]["route"] == "barman-server" and facts["eu"]["route"] == "barman-cloud"
    assert (w.workdir / "site-a/clusters/main/barman").is_dir()
    assert w.pg.psql("SELECT count(*) FROM pg_replication_slots").strip() == "0"
    add_rows(w, 21, 10, "after earlier base")
    expected, t = rows(w.pg), db_now(w.pg)
    add_rows(w, 1001, 1, "past the target")
    switch_and_wait(w, w.pg)
    # listed by the new code at both sites, beside the new engine's base
    for s in ("a", "eu"):
        assert listed(w, s)[-1] == old_id and w.base in listed(w, s)
    # restored from each site alone through its own route (barman recover / cp, barman-cloud-restore)
    for s in ("a", "eu"):
        plan = json.loads(w.cli("restore", "--to-time", t, "--from-site", s, "--plan", "--json").stdout)["plan"]
        assert plan["base"]["backup_id"] == old_id and plan["base"]["route"] == facts[s]["route"], plan
        assert pitr(w, s, t, f"earlier-{s}") == expected
    # expired by the new code: a newer base, keep one; Barman's own copies go at both sites
    w.pg.psql("SELECT pg_switch_wal()")
    newest = w.cli("backup", "base").stdout.strip().splitlines()[-1].split()[0]
    text = (w.workdir / "policy.yaml").read_text()
    try:
        w.jobs["base"]["retain"] = {"count": 1}
        w.policy(wal={"sites": ["a", "eu"], "retry_interval": "1s"}, state_dir=str(w.state))
        w.cli("expire")
        for s in ("a", "eu"):
            assert listed(w, s) == [newest]
        server_base = w.workdir / "site-a/clusters/main/barman"
        assert facts["a"]["backup_id"] not in [p.name for p in server_base.rglob(facts["a"]["backup_id"])]
        assert not [k for k in s3_keys(w, "eu") if facts["eu"]["backup_id"] in k]
    finally:
        del w.jobs["base"]["retain"]
        (w.workdir / "policy.yaml").write_text(text)
    w.base = newest


@pytest.fixture
def small_site(scene):
    """A 16 MiB tmpfs as a local site: smaller than the base's data tar."""
    mnt = sandbox.owned_dir(scene.workdir / "small")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    pg.chown_to_run_user(mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_local_site_that_fills_up_is_dropped_and_the_other_commits(scene, small_site):
    w = scene
    # enough incompressible data that data.tar.lz4 outgrows 16 MiB
    hexes = " || ".join(["md5(random()::text)"] * 8)           # 256 random hex digits a row, per row
    w.pg.psql(f"CREATE TABLE bulk AS SELECT g, {hexes} AS r FROM generate_series(1, 90000) g")
    text = (w.workdir / "policy.yaml").read_text()
    try:
        w.sites["small"] = {"type": "local", "path": str(small_site)}
        w.jobs["base"]["sites"] = ["small", "eu"]
        w.policy(wal={"sites": ["a", "eu"], "retry_interval": "1s"}, state_dir=str(w.state))
        before_eu = listed(w, "eu")
        cp = w.cli("backup", "base", check=False)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "small" in cp.stderr and ("No space left" in cp.stderr or "full" in cp.stderr), cp.stderr
        assert "Traceback" not in cp.stderr
        new = [b for b in listed(w, "eu") if b not in before_eu]
        assert len(new) == 1
        assert listed(w, "small") == []
        # the full site keeps nothing: the partial tar was removed, the space is free again
        leftovers = [p for p in small_site.rglob("*") if p.is_file()]
        assert not [p for p in leftovers if p.name in ("backup.info", "manifest.json") or ".tar" in p.name], leftovers
        assert shutil.disk_usage(small_site).used < 1 << 20
    finally:
        del w.sites["small"]
        w.jobs["base"]["sites"] = ["a", "eu"]
        (w.workdir / "policy.yaml").write_text(text)
        w.pg.psql("DROP TABLE bulk")
