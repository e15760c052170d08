"""Encryption at rest, end to end, on one module-scoped scene: a PostgreSQL on btrfs archiving
through `pgvault wal-push` to a local site and an S3 site, a logical job and a btrfs snapshot
job, everything encrypted to age recipients (the S3 site also to a break-glass key).

What it proves: round trips with rows compared (dump, snapshot + WAL to a point in time), the
stock `age` CLI opens one artifact of each kind (the README's commands), a missing or wrong
identity is exit 2 naming the backup and the key, a flipped ciphertext byte at one site falls
back to the other, rotation (old backup opens with the old key only; `check` reports it), and
no identity ever appears in what the cycle wrote or on a command line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from pgvault import pg, sandbox
from pgvault.crypt import age
from pgvault.sandbox.fs import BtrfsImage, instance_on

from ..conftest import World, bucket_name
from .test_logical import counts, load_data


def _keyfile(d: Path, name: str) -> tuple[Path, str, str]:
    ident, rcpt = age.generate()
    f = d / f"{name}.txt"
    f.write_text(f"# created: test\n# public key: {rcpt}\n{ident}\n")
    os.chmod(f, 0o600)  # root only: the restored PostgreSQL gets the key through its environment
    return f, ident, rcpt


def _archived(inst, seg: str) -> bool:
    return (inst.pgdata / "pg_wal" / "archive_status" / f"{seg}.done").exists()


def _switch(inst) -> str:
    seg = inst.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    inst.psql("SELECT pg_switch_wal()")
    sandbox.wait_until(lambda: _archived(inst, seg), 120, f"{seg} to be archived")
    return seg


class CmdlineWatch:
    """Samples every process's command line while the scene runs (no key may ever be on one)."""

    def __init__(self, needles: list[str]):
        self.needles = [n.encode() for n in needles]
        self.hits: list[str] = []
        self.samples = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            for p in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    c = p.read_bytes()
                except OSError:
                    continue
                if any(n in c for n in self.needles):
                    self.hits.append(c.decode(errors="replace"))
            self.samples += 1
            self.stop.wait(0.02)


@pytest.fixture(scope="module")
def scene(moto):
    wd = sandbox.workdir("pgvault-crypt-")
    fs = BtrfsImage(wd).create()
    keys = wd / "keys"
    keys.mkdir(mode=0o700)
    k1, id1, r1 = _keyfile(keys, "k1")
    k2, id2, r2 = _keyfile(keys, "k2")
    kb, idb, rb = _keyfile(keys, "breakglass")
    watch = CmdlineWatch([id1, id2, idb])
    watch.t.start()
    sv = fs.subvolume("pg", owner_postgres=True)
    policy_file = wd / "policy.yaml"
    inst = instance_on(sv / "data", wd / "sock", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy_file) + " wal-push %p"})
    w = World(wd, inst, moto)
    w.local_site("a")
    w.s3_site("eu", "eu-west-1")
    w.sites["eu"]["encryption"] = {"recipients": [r1, rb]}
    w.jobs["dumps"] = {"method": "logical", "sites": ["a", "eu"]}
    w.jobs["base"] = {"method": "barman", "sites": ["a"]}
    w.jobs["snaps"] = {"method": "btrfs", "subvolumes": [str(sv)], "sites": ["a", "eu"], "keep_local": {"count": 1}}
    state = sandbox.owned_dir(wd / "state")
    w.extra = {"encryption": {"recipients": [r1]}, "wal": {"sites": ["a", "eu"], "compression": "zstd"},
               "state_dir": str(state)}
    w.policy()
    inst.start()
    s = type("Scene", (), {})()
    s.w, s.inst, s.fs, s.wd, s.watch = w, inst, fs, wd, watch
    s.k1, s.k2, s.kb, s.r1, s.r2, s.rb = k1, k2, kb, r1, r2, rb
    s.ids = [id1, id2, idb]
    try:
        load_data(inst)
        _switch(inst)
        s.dump = w.cli("backup", "dumps").stdout.split()[0]
        s.snap = w.cli("backup", "snaps").stdout.strip().splitlines()[-1]
        inst.psql("INSERT INTO orders SELECT g, 'after', 1 FROM generate_series(100001, 100500) g", dbname="app")
        s.good = counts(inst, "app")
        s.target = inst.psql("SELECT clock_timestamp()").strip()
        inst.psql("INSERT INTO orders SELECT g, 'later', 1 FROM generate_series(200001, 200100) g", dbname="app")
        s.seg = _switch(inst)
        yield s
    finally:
        watch.stop.set()
        watch.t.join()
        for pidfile in wd.glob("**/postmaster.pid"):
            pg.Instance(pidfile.parent, 1).stop("immediate")
        inst.stop("immediate")
        fs.destroy()
        shutil.rmtree(wd, ignore_errors=True)


def _site_a(s) -> Path:
    return s.wd / "site-a" / "clusters" / "main"


def test_catalog_reads_without_a_key_and_manifests_name_recipients(scene):
    s = scene
    listed = json.loads(s.w.cli("list", "--json").stdout)
    assert {d["backup_id"] for d in listed} >= {s.dump, s.snap}
    assert s.w.cli("verify").returncode == 0
    m = json.loads((_site_a(s) / "backups" / s.dump / "manifest.json").read_text())
    assert m["artifacts"] and all(a["encryption"] == "age" and a["recipients"] == [s.r1] for a in m["artifacts"])
    for a in m["artifacts"]:
        head = (_site_a(s) / "backups" / s.dump / a["name"]).read_bytes()[:22]
        assert age.is_age(head), a["name"]


def test_missing_and_wrong_identity_are_exit_2_naming_backup_and_key(scene):
    s = scene
    cp = s.w.cli("restore", s.dump, "--database", "app", "--as", "nokey", check=False)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr, cp.stderr
    assert s.dump in cp.stderr and s.r1 in cp.stderr and "--identity" in cp.stderr
    cp = s.w.cli("restore", s.dump, "--database", "app", "--as", "wrongkey", "--identity", str(s.k2), check=False)
    assert cp.returncode == 2 and s.dump in cp.stderr and s.r1 in cp.stderr and "Traceback" not in cp.stderr
    assert "wrongkey" not in s.inst.psql("SELECT string_agg(datname, ',') FROM pg_database")


def test_dump_round_trip_falls_back_when_one_site_is_tampered(scene):
    s = scene
    a = json.loads((_site_a(s) / "backups" / s.dump / "manifest.json").read_text())
    dump = next(x["name"] for x in a["artifacts"] if x.get("database") == "app")
    f = _site_a(s) / "backups" / s.dump / dump
    saved = f.read_bytes()
    data = bytearray(saved)
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    try:
        cp = s.w.cli("restore", s.dump, "--database", "app", "--as", "restored", "--from-site", "a",
                     env={"PGVAULT_IDENTITY": str(s.k1)})
        assert "damaged" in cp.stderr and "'a'" in cp.stderr
        assert counts(s.inst, "restored")["orders"] == 5000
    finally:
        f.write_bytes(saved)
    # the break-glass key opens the S3 copy (it is a recipient there only)
    s.w.cli("restore", s.dump, "--database", "app", "--as", "breakglass", "--from-site", "eu",
            "--identity", str(s.kb))
    assert counts(s.inst, "breakglass") == counts(s.inst, "restored")


def _age_d(key: Path, f: Path) -> subprocess.Popen:
    return subprocess.Popen(["age", "-d", "-i", str(key), str(f)], stdout=subprocess.PIPE)


def test_stock_cli_opens_a_dump_globals_a_snapshot_stream_and_a_wal_segment(scene):
    s = scene
    bdir = _site_a(s) / "backups" / s.dump
    m = json.loads((bdir / "manifest.json").read_text())
    dump = next(x["name"] for x in m["artifacts"] if x.get("database") == "app")
    # README: age -d -i key.txt FILE | zstd -dc | pg_restore -l
    toc = subprocess.run(f"age -d -i {s.k1} {bdir / dump} | zstd -dc | /usr/lib/postgresql/15/bin/pg_restore -l",
                         shell=True, check=True, capture_output=True, text=True).stdout
    assert "TABLE DATA public orders" in toc
    glob = next(x["name"] for x in (m["artifacts"]) if x["name"].startswith("globals"))
    sql = subprocess.run(f"age -d -i {s.k1} {bdir / glob} | zstd -dc", shell=True, check=True,
                         capture_output=True, text=True).stdout
    assert "CREATE ROLE app_owner" in sql
    # a snapshot stream into btrfs receive
    sm = json.loads((_site_a(s) / "backups" / s.snap / "manifest.json").read_text())
    stream = next(x["name"] for x in sm["artifacts"] if x["compression"] == "zstd")
    dest = s.fs.mountpoint / "by-hand"
    dest.mkdir()
    subprocess.run(f"age -d -i {s.k1} {_site_a(s) / 'backups' / s.snap / stream} | zstd -dc | btrfs receive {dest}",
                   shell=True, check=True, capture_output=True)
    assert list(dest.iterdir())
    # a WAL segment, then pg_waldump reads it
    wal = next((_site_a(s) / "wals").rglob(s.seg + "*"))
    out = s.wd / "by-hand-wal"
    out.mkdir()
    subprocess.run(f"age -d -i {s.k1} {wal} | zstd -dc > {out / s.seg}", shell=True, check=True)
    assert (out / s.seg).stat().st_size == 16 << 20
    subprocess.run(["/usr/lib/postgresql/15/bin/pg_waldump", "-p", str(out), s.seg, "-n", "5"], check=True,
                   capture_output=True)


def test_wal_fetch_decrypts_and_pitr_from_an_encrypted_snapshot_reaches_the_target(scene):
    s = scene
    dest = s.fs.mountpoint / "pitr"
    port = pg.free_port()
    # the local snapshot is gone: the base is received from the site (an encrypted stream)
    for snap in (s.fs.mountpoint / ".pgvault-snapshots").glob("*"):
        subprocess.run(["btrfs", "subvolume", "delete", str(snap / "pg")], capture_output=True)
        shutil.rmtree(snap, ignore_errors=True)
    plan = json.loads(s.w.cli("restore", "--to-time", s.target, "--target-dir", str(dest), "--port", str(port),
                              "--start", "--json", "--identity", str(s.k1)).stdout)
    assert plan["plan"]["base"]["backup_id"] == s.snap
    restored = pg.Instance(dest, port, socket_dir=dest)
    try:
        assert counts(restored, "app") == s.good
    finally:
        restored.stop()
    # wal-fetch by hand, without and with the key
    out = s.wd / "fetched"
    cp = s.w.cli("wal-fetch", s.seg, str(out), check=False)
    assert cp.returncode == 2 and "encrypted" in cp.stderr and "Traceback" not in cp.stderr
    # a flipped byte in site a's ciphertext: detected, and the copy at eu is used
    wal = next((_site_a(s) / "wals").rglob(s.seg + "*"))
    saved = wal.read_bytes()
    bad = bytearray(saved)
    bad[len(bad) // 3] ^= 0x01
    wal.write_bytes(bytes(bad))
    try:
        cp = s.w.cli("wal-fetch", s.seg, str(out), "--from-site", "a", env={"PGVAULT_IDENTITY": str(s.k1)})
        assert "damaged" in cp.stderr and "'a'" in cp.stderr, cp.stderr
    finally:
        wal.write_bytes(saved)
    assert out.stat().st_size == 16 << 20


def test_a_base_backup_at_an_encrypted_site_is_sealed_and_opens_with_the_stock_cli(scene):
    # The base engine streams its tars through the same sealed path as every other artifact:
    # nothing lands in clear at an encrypted site, and age + lz4 + tar open it by hand (README).
    s = scene
    s.w.cli("backup", "base")
    docs = [json.loads(p.read_text()) for p in (_site_a(s) / "backups").glob("*/manifest.json")]
    m = next(d for d in docs if d["method"] == "barman")
    tars = [a for a in m["artifacts"] if a["name"].startswith("data.tar")]
    assert len(tars) == 1 and tars[0]["encryption"] == "age" and tars[0]["recipients"] == [s.r1]
    sealed = _site_a(s) / tars[0]["key"]
    assert sealed.read_bytes()[:22] == b"age-encryption.org/v1\n"
    names = subprocess.run(f"age -d -i {s.k1} {sealed} | lz4 -dc | tar -t", shell=True, check=True,
                           capture_output=True, text=True).stdout.split()
    assert "backup_label" in names and "PG_VERSION" in names and "global/pg_control" in names
    cp = subprocess.run(f"age -d -i {s.k2} {sealed}", shell=True, capture_output=True)
    assert cp.returncode != 0                          # another key opens nothing
    # and pgvault's own round trip: the sealed base laid down, its WAL fetched and decrypted
    dest, port = s.wd / "pitr-base", pg.free_port()
    want = counts(s.inst, "app")
    plan = json.loads(s.w.cli("restore", "--latest", "--from-site", "a", "--target-dir", str(dest), "--port",
                              str(port), "--start", "--json", "--identity", str(s.k1)).stdout)
    assert plan["plan"]["base"]["backup_id"] == m["backup_id"]
    restored = pg.Instance(dest, port, socket_dir=dest)
    try:
        assert counts(restored, "app") == want
    finally:
        restored.stop()


def test_rotation_new_backups_use_new_keys_and_check_reports_old_ones(scene):
    s = scene
    s.w.sites["eu"]["encryption"] = {"recipients": [s.r2, s.rb]}
    s.w.extra["encryption"] = {"recipients": [s.r2]}
    s.w.policy()
    new = s.w.cli("backup", "dumps").stdout.split()[0]
    m = json.loads((_site_a(s) / "backups" / new / "manifest.json").read_text())
    assert {tuple(a["recipients"]) for a in m["artifacts"]} == {(s.r2,)}
    cp = s.w.cli("check", check=False)
    assert s.dump in cp.stdout and s.r1 in cp.stdout and "no longer" in cp.stdout, cp.stdout
    # the old backup opens with the old key only (it opened with k1 above: the fallback test)
    cp = s.w.cli("restore", s.dump, "--database", "app", "--as", "old_k2", "--from-site", "a",
                 "--identity", str(s.k2), check=False)
    assert cp.returncode == 2 and s.r1 in cp.stderr and "Traceback" not in cp.stderr
    s.w.cli("restore", new, "--database", "app", "--as", "new_k2", "--from-site", "a", "--identity", str(s.k2))
    assert counts(s.inst, "new_k2")["orders"] == s.good["orders"] + 100




def test_no_identity_anywhere_the_cycle_wrote_nor_on_a_command_line(scene):
    s = scene
    s.watch.stop.set()
    s.watch.t.join()
    assert s.watch.samples > 10
    assert s.watch.hits == []
    needles = [i.encode() for i in s.ids] + [i.lower().encode() for i in s.ids]
    roots = [s.wd / "site-a", s.wd / "state", s.inst.pgdata, s.wd]
    hits = []
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink() and "keys" not in f.relative_to(s.wd).parts and f.suffix != ".img":
                try:
                    data = f.read_bytes()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    hits.append(str(f))
    import boto3

    c = boto3.client("s3", endpoint_url=s.w.moto.url, region_name="eu-west-1")
    for o in c.list_objects_v2(Bucket=s.w.sites["eu"]["bucket"]).get("Contents", []):
        body = c.get_object(Bucket=s.w.sites["eu"]["bucket"], Key=o["Key"])["Body"].read()
        if any(n in body for n in needles):
            hits.append(o["Key"])
    assert hits == []
