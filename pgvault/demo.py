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

from . import sandbox

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Demo:
    base: Path
    out: callable = print
    keep: bool = False
    env: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

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


def write_policy(base: Path, inst, moto: sandbox.Moto | None, bucket: str | None) -> Path:
    sites = {
        "local": {"type": "local", "path": str(sandbox.owned_dir(base / "site-local"))},
        "offsite": {"type": "local", "path": str(sandbox.owned_dir(base / "site-offsite"))},
    }
    if moto:
        sites["s3-eu"] = {"type": "s3", "bucket": bucket, "region": "eu-west-1", "prefix": "demo",
                          "endpoint_url": moto.url}
    doc = {
        "version": 1,
        "cluster": {"name": "demo", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
        "sites": sites,
        "jobs": {
            "nightly-dump": {"method": "logical", "schedule": "0 2 * * *", "sites": list(sites),
                             "retain": {"daily": 7, "weekly": 4, "monthly": 12}},
        },
        "objectives": {"rpo": "5m", "rto": "30m"},
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


def run_demo(keep: bool = False, out=print) -> int:
    base = sandbox.workdir("pgvault-demo-")
    moto = inst = None
    demo = Demo(base, out, keep)
    try:
        demo.say(f"sandbox in {base}: a PostgreSQL cluster, two local sites, one S3 site (moto_server)")
        inst = sandbox.new_instance(base, "cluster")
        load_sample_data(inst)
        moto = sandbox.Moto().start()
        bucket = "pgvault-demo-eu"
        moto.create_bucket(bucket, "eu-west-1")
        policy = write_policy(base, inst, moto, bucket)
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
        if moto:
            moto.stop()
        if inst:
            inst.stop("immediate")
        if keep:
            out(f"(sandbox kept in {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)


def step_check(demo: Demo, inst) -> None:
    demo.say("check the policy, the cluster, every site and the tools")
    demo.pgvault("check")


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


# The demo's steps, in order. Each capability adds its step here.
STEPS = [step_check, step_logical]
