"""`pgvault demo`: a self-contained sandbox run of pgvault's main jobs.

It creates a PostgreSQL cluster in a temporary directory, two local sites and an S3 site on a
local moto_server, writes a policy, and then runs the real `pgvault` commands one after the
other, printing each command and its output, exactly as an operator would type them."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import pg, sandbox

ROOT = Path(__file__).resolve().parents[2]  # the checkout: restore_drills/ is beside pgvault/


@dataclass
class Demo:
    base: Path
    out: callable = print
    keep: bool = False
    env: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    report_dir: Path | None = None

    def say(self, text: str) -> None:
        self.out(f"\n=== {text}")

    def pgvault(self, *args: str, expect: int | tuple = 0, show: bool = True) -> subprocess.CompletedProcess:
        shown = "pgvault " + " ".join(shlex.quote(a) for a in args)
        self.out(f"$ {shown}")
        t0 = time.monotonic()
        cp = subprocess.run([sys.executable, "-m", "pgvault", *args], capture_output=True, text=True,
                            env=self.env)
        self.timings[shown] = time.monotonic() - t0
        if show:
            for line in (cp.stdout + cp.stderr).rstrip().splitlines():
                self.out("  " + line)
        expected = expect if isinstance(expect, tuple) else (expect,)
        if cp.returncode not in expected:
            self.failures.append(f"{shown} exited {cp.returncode} (expected {expect})")
            self.out(f"  !! exit code {cp.returncode}")
        return cp


def write_policy(base: Path, inst, moto: sandbox.Moto, bucket: str, snap_subvolume: Path | None) -> Path:
    sites = {
        "local": {"type": "local", "path": str(sandbox.owned_dir(base / "site-local"))},
        "offsite": {"type": "local", "path": str(sandbox.owned_dir(base / "site-offsite"))},
        "s3-eu": {"type": "s3", "bucket": bucket, "region": "eu-west-1", "prefix": "demo",
                  "endpoint_url": moto.url, "connect_timeout": 2, "max_attempts": 2},
    }
    jobs = {
        "nightly-dump": {"method": "logical", "schedule": "0 2 * * *", "sites": ["local", "offsite", "s3-eu"],
                         "retain": {"daily": 7, "weekly": 4, "monthly": 12}},
        "weekly-base": {"method": "barman", "schedule": "0 3 * * 0", "sites": ["local", "s3-eu"],
                        "retain": {"count": 4}},
    }
    if snap_subvolume:
        jobs["snapshots"] = {"method": "btrfs", "subvolumes": [str(snap_subvolume)], "schedule": "*/15 * * * *",
                             "sites": ["offsite"], "keep_local": {"count": 4}}
    doc = {
        "version": 1,
        "cluster": {"name": "demo", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
        "sites": sites,
        "wal": {"sites": ["local", "s3-eu"]},
        "jobs": jobs,
        "objectives": {"rpo": "5m", "rto": "30m"},
        "drills": [str(ROOT / "restore_drills" / "logical-latest.yaml"),
                   str(ROOT / "restore_drills" / "pitr" / "canary.yaml")],
        "state_dir": str(sandbox.owned_dir(base / "state")),
    }
    path = base / "policy.yaml"
    path.write_text("# written by pgvault demo\n" + yaml.safe_dump(doc, sort_keys=False))
    os.chmod(path, 0o644)
    return path


def load_sample_data(inst) -> None:
    sandbox_bin = Path(inst.bindir)
    subprocess.run([str(sandbox_bin / "pgbench"), "-i", "-s", "2", "-q", "-d", inst.conninfo("postgres")],
                   check=True, capture_output=True)
    inst.psql("CREATE DATABASE shop")
    inst.psql("""
        CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, total numeric(10,2), placed_at timestamptz DEFAULT now());
        INSERT INTO orders (customer, total) SELECT 'customer ' || g, (g % 500) + 0.99 FROM generate_series(1, 20000) g;
        CREATE INDEX ON orders (customer);
    """, dbname="shop")


def _snapshot_fs(base: Path, out):
    """A btrfs file system for the cluster when this machine can make one, else None."""
    if os.geteuid() != 0 or not shutil.which("btrfs") or not shutil.which("mkfs.btrfs"):
        out("(btrfs is not available here: the snapshot method is left out of this demo)")
        return None
    from .fs import BtrfsImage

    try:
        return BtrfsImage(base).create("1G")
    except Exception as exc:  # noqa: BLE001 - the demo goes on without snapshots
        out(f"(could not mount a btrfs image: {exc}; the snapshot method is left out of this demo)")
        return None


def run_demo(keep: bool = False, out=print, report_dir: str | None = None) -> int:
    base = sandbox.workdir("pgvault-demo-")
    moto = inst = fs = None
    demo = Demo(base, out, keep)
    demo.report_dir = Path(report_dir).resolve() if report_dir else base / "reports"
    try:
        demo.say(f"sandbox in {base}: a PostgreSQL cluster, two local sites, one S3 site (moto_server)")
        moto = sandbox.Moto().start()
        bucket = "pgvault-demo-eu"
        moto.create_bucket(bucket, "eu-west-1")
        fs = _snapshot_fs(base, out)
        policy = base / "policy.yaml"
        settings = {"archive_mode": "on", "archive_command": sandbox.pgvault_command(policy) + " wal-push %p"}
        if fs:
            from .fs import instance_on

            subvol = fs.subvolume("pg", owner_postgres=True)
            inst = instance_on(subvol / "data", base / "cluster-sock", settings=settings, start=False)
        else:
            subvol = None
            inst = sandbox.new_instance(base, "cluster", settings=settings, start=False)
        write_policy(base, inst, moto, bucket, subvol)
        inst.start()
        load_sample_data(inst)
        demo.env = dict(os.environ, PGVAULT_POLICY=str(policy), PYTHONPATH=str(ROOT), **sandbox.S3_ENV)
        out(f"policy: {policy}")
        for line in policy.read_text().splitlines():
            out("  | " + line)

        for step in STEPS:
            step(demo, inst)

        demo.say("summary")
        for cmd, secs in demo.timings.items():
            out(f"  {secs:6.2f}s  {cmd}")
        if demo.failures:
            out("\nDEMO FAILED:\n  " + "\n  ".join(demo.failures))
            return 1
        out("\ndemo completed: every step did what it should")
        return 0
    finally:
        for pidfile in list(base.rglob("postmaster.pid")):
            pg.Instance(pidfile.parent, 0).stop("immediate")
        if moto:
            moto.stop()
        if fs and not keep:
            fs.destroy()
        if keep:
            out(f"(sandbox kept in {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)


def step_check(demo: Demo, inst) -> None:
    demo.say("check the policy, the cluster, every site and the tools")
    demo.pgvault("check", expect=(0, 1))  # WARNING (exit 1) is expected: nothing has been backed up yet


def step_logical(demo: Demo, inst) -> None:
    demo.say("take a logical backup (pg_dumpall globals + pg_dump of every database) to all three sites in one pass")
    cp = demo.pgvault("backup", "nightly-dump")
    backup_id = cp.stdout.strip().splitlines()[-1] if cp.stdout.strip() else ""
    demo.say("list what each site holds (read from the sites alone)")
    demo.pgvault("list")
    demo.say("verify: re-read and re-hash every artifact at every site")
    demo.pgvault("verify")
    demo.say("restore database 'shop' from the S3 site under a new name, and compare")
    demo.pgvault("restore", backup_id, "--database", "shop", "--as", "shop_restored", "--from-site", "s3-eu")
    before = inst.psql("SELECT count(*), sum(total) FROM orders", dbname="shop").strip()
    after = inst.psql("SELECT count(*), sum(total) FROM orders", dbname="shop_restored").strip()
    demo.out(f"  shop.orders          count|sum = {before}")
    demo.out(f"  shop_restored.orders count|sum = {after}")
    if before != after:
        demo.failures.append("restored rows differ from the original")
    demo.say("damage a copy at one site: verify finds it, restore uses another site's copy")
    dump = next((demo.base / "site-local").rglob("shop.dump.zst"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    demo.pgvault("verify", "--site", "local", expect=1)
    demo.pgvault("restore", backup_id, "--database", "shop", "--as", "shop_again", "--from-site", "local")
    data[len(data) // 2] ^= 0xFF  # mend the copy again, so the drills below find every site intact
    dump.write_bytes(bytes(data))
    demo.pgvault("verify", "--site", "local")


def step_physical(demo: Demo, inst) -> None:
    demo.say("a base backup: PGDATA read once, streamed to the local and the S3 site at once, in Barman's cloud "
             "layout at both; WAL flows through wal-push")
    demo.pgvault("backup", "weekly-base")
    if "snapshots" in _jobs(demo):
        demo.say("a PostgreSQL-consistent btrfs snapshot, sent to the offsite site")
        demo.pgvault("backup", "snapshots")
        demo.pgvault("snapshot", "list", "snapshots")
    demo.pgvault("wal-status")


def _jobs(demo: Demo) -> dict:
    return yaml.safe_load((demo.base / "policy.yaml").read_text())["jobs"]


def _switch_and_wait(inst) -> str:
    seg = inst.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
    sandbox.wait_until(lambda: inst.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").strip() >= seg,
                       120, f"{seg} to be archived")
    return seg


def step_accident(demo: Demo, inst) -> None:
    demo.say("an accident: new orders arrive, then someone runs TRUNCATE orders")
    inst.psql("INSERT INTO orders (customer, total) SELECT 'late customer ' || g, 9.99 FROM generate_series(1, 250) g",
              dbname="shop")
    demo.expected = inst.psql("SELECT count(*), sum(total) FROM orders", dbname="shop").strip()
    demo.accident_at = inst.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')").strip()
    inst.psql("TRUNCATE orders", dbname="shop")
    _switch_and_wait(inst)
    demo.out(f"  shop.orders before the accident: count|sum = {demo.expected}; now: "
             f"{inst.psql('SELECT count(*) FROM orders', dbname='shop').strip()} rows")
    demo.say("find the transaction that did it, from the archived WAL")
    demo.pgvault("find", "--table", "public.orders", "--database", "shop", "--around", demo.accident_at + "+00:00",
                 "--window", "30m")
    demo.say("restore a side instance to just before it (paused), and copy the table back into production")
    demo.pgvault("restore", "--before-truncate", "public.orders", "--database-name", "shop",
                 "--around", demo.accident_at + "+00:00", "--window", "30m",
                 "--target-dir", str(demo.base / "side"), "--start", "--copy-back-to", inst.conninfo("shop"))
    after = inst.psql("SELECT count(*), sum(total) FROM orders", dbname="shop").strip()
    demo.out(f"  shop.orders after the copy-back: count|sum = {after}")
    if after != demo.expected:
        demo.failures.append(f"orders after the copy-back ({after}) differ from before the accident ({demo.expected})")
    for pidfile in (demo.base / "side").glob("postmaster.pid"):
        pg.Instance(pidfile.parent, 0).stop("fast")


def step_drills(demo: Demo, inst) -> None:
    demo.say("restore drills: the newest dump at each site, and the accidental-truncate canary from each WAL site")
    demo.pgvault("drill", "run", "--report-dir", str(demo.report_dir))
    demo.out(f"  reports: {', '.join(sorted(p.name for p in demo.report_dir.iterdir()))} in {demo.report_dir}")
    demo.pgvault("list", "--drills")


def step_status(demo: Demo, inst) -> None:
    demo.say("the state of the promise: backups, WAL lag (RPO now) and drills against the objectives")
    demo.pgvault("status", expect=(0, 1))
    demo.say("retention: what expire would keep and delete, and why")
    demo.pgvault("expire", "--dry-run")
    demo.pgvault("schedule", "show")


# The demo's steps, in order. Each capability adds its step here.
STEPS = [step_check, step_logical, step_physical, step_accident, step_drills, step_status]
