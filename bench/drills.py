"""Restore drills: what a pgvault logical drill costs over doing the same restore by hand.

    /opt/pgvault/venv/bin/python bench/drills.py [--scale 5] [--reps 3]

One logical backup of `pgbench -i -s SCALE` (one local site). Times, in the same run:
  bare      initdb + start, zstd -dc globals | psql, zstd -dc dump | pg_restore --create, stop, rm
  drill     `pgvault drill run` with a single trivial SQL check (restore + teardown + evidence)
  drill+    the same with amcheck on every B-tree index, read_all and row_counts
and prints each as a ratio of the bare restore. Peers have no built-in drill to compare with
(see docs/drills.md); the bare tools are the honest baseline."""
from __future__ import annotations

import argparse
import json
import shutil

import yaml
from common import pgvault, report, sh, timed

from pgvault import pg, sandbox


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    base = sandbox.workdir("pgvault-bench-drills-")
    inst = sandbox.new_instance(base, "pg")
    try:
        bindir = inst.bindir
        sh(f"{bindir}/pgbench -i -q -s {args.scale} -d '{inst.conninfo()}'")
        site = sandbox.owned_dir(base / "site")
        drills = base / "drills"
        drills.mkdir()
        (drills / "plain.yaml").write_text(yaml.safe_dump({
            "source": {"job": "dump", "site": "a"}, "checks": [{"sql": "SELECT true"}]}))
        (drills / "full.yaml").write_text(yaml.safe_dump({
            "source": {"job": "dump", "site": "a"},
            "checks": [{"amcheck": True}, {"read_all": True}, {"row_counts": True}]}))
        policy = base / "policy.yaml"
        policy.write_text(yaml.safe_dump({
            "version": 1, "cluster": {"name": "bench", "conninfo": inst.conninfo()},
            "sites": {"a": {"type": "local", "path": str(site)}},
            "jobs": {"dump": {"method": "logical", "sites": ["a"]}}, "drills": ["drills/*.yaml"]}))
        env = {"PGVAULT_POLICY": str(policy)}
        bid = pgvault("backup", "dump", env=env).stdout.strip().splitlines()[-1]
        bdir = site / "clusters/bench/backups" / bid
        size = json.loads((bdir / "manifest.json").read_text())
        size = sum(a["size"] for a in size["artifacts"])

        scratch = base / "bare"
        owned = sandbox.owned_dir(scratch, 0o755)

        def bare():
            port = pg.free_port()
            sandbox.owned_dir(owned / "sock", 0o755)
            i = pg.Instance(owned / "pgdata", port, socket_dir=owned / "sock")
            i.initdb(extra_args=["--data-checksums"])
            i.configure(fsync="off", wal_level="minimal", max_wal_senders=0, archive_mode="off")
            i.start()
            ci = i.conninfo()
            sh(f"zstd -dc {bdir}/globals.sql.zst | grep -v '^CREATE ROLE postgres;' | {bindir}/psql -X -q -v ON_ERROR_STOP=1 -d '{ci}'")
            sh(f"zstd -dc {bdir}/databases/postgres.dump.zst | {bindir}/pg_restore --exit-on-error -d '{ci}'")
            i.stop("immediate")
            shutil.rmtree(owned / "pgdata")

        scratch_root = base / "scratch"
        rows = [
            ("bare: initdb + psql globals + pg_restore + teardown", timed(bare, args.reps)),
            ("pgvault drill run plain (restore, 1 SQL check)",
             timed(lambda: pgvault("drill", "run", "plain", "--scratch-dir", str(scratch_root), env=env), args.reps)),
            ("pgvault drill run full (amcheck, read_all, row_counts)",
             timed(lambda: pgvault("drill", "run", "full", "--scratch-dir", str(scratch_root), env=env), args.reps)),
        ]
        report(f"logical drill, pgbench scale {args.scale} (dump {size / 2**20:.1f} MiB zstd)", rows,
               "bare: initdb + psql globals + pg_restore + teardown")
    finally:
        inst.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
