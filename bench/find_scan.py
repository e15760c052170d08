"""Scan speed of `pgvault find` over archived WAL versus a plain pg_waldump over the same files.

    PYTHONPATH=. /opt/pgvault/venv/bin/python bench/find_scan.py [--segments 64] [--reps 2]

Builds a PostgreSQL 15 cluster archiving to a directory, generates WAL with pgbench until
``--segments`` segments (16 MiB each; 64 = 1 GiB) are archived, TRUNCATEs a table at the end,
then times, alternately and from the page cache (files read once before, `sync` before each
run):
  - waldump:  pg_waldump over the segments, output to /dev/null (the bare tool);
  - find:     `pgvault find --table public.orders --wal-dir DIR --no-record` (CLI, end to end:
              start-up, history lookup, pg_waldump with resource-manager filters, classifier).
Prints MB/s and the ratio find/waldump (goal >= 0.5), and checks the truncate was found.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgvault import sandbox  # noqa: E402

BIN = "/usr/lib/postgresql/15/bin"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--scale", type=int, default=60, help="pgbench -i scale (bulk part of the WAL)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--reuse", metavar="DIR", help="time again over a directory kept by --keep")
    a = ap.parse_args()
    if a.reuse:
        work = Path(a.reuse)
        return measure(work, int((work / "xid").read_text()), a.reps, None)
    work = sandbox.workdir("pgvault-bench-find-")
    arch = sandbox.owned_dir(work / "archive", 0o755)
    inst = sandbox.new_instance(work, settings={"archive_mode": "on", "archive_command": f"cp %p {arch}/%f",
                                                "synchronous_commit": "off", "max_wal_size": "4GB",
                                                "checkpoint_timeout": "5min"})
    try:
        site = sandbox.owned_dir(work / "site-a")
        policy = work / "policy.yaml"
        policy.write_text(json.dumps({"version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo()},
                                      "sites": {"a": {"type": "local", "path": str(site)}}}))
        env = dict(os.environ, PYTHONPATH=str(ROOT), PGVAULT_POLICY=str(policy))
        cli = [sys.executable, "-m", "pgvault"]
        inst.psql("CREATE DATABASE app")
        inst.psql("CREATE TABLE orders (id int PRIMARY KEY, note text); "
                  "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 10000) g", dbname="app")
        subprocess.run([*cli, "relations"], env=env, check=True, capture_output=True)
        t0 = time.monotonic()
        # A bulk pgbench load (-i: COPY, index builds: large records) for most of the WAL, then
        # the TPC-B run (many small records: the hard case for a text scanner) for the rest.
        subprocess.run([f"{BIN}/pgbench", "-i", "-s", str(a.scale), "-q", "-d", inst.conninfo("app")], check=True,
                       capture_output=True, user="postgres")
        after_init = len([p for p in arch.iterdir() if len(p.name) == 24])
        load = subprocess.Popen([f"{BIN}/pgbench", "-c", "2", "-j", "2", "-T", "3600", "-n", "-d", inst.conninfo("app")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user="postgres")
        try:
            sandbox.wait_until(lambda: len([p for p in arch.iterdir() if len(p.name) == 24]) >= a.segments - 1,
                               3600, "WAL to be generated", interval=1)
        finally:
            load.terminate()
            load.wait()
        gen = time.monotonic() - t0
        xid = int(inst.psql("BEGIN; SELECT txid_current(); TRUNCATE orders; COMMIT;", dbname="app").split()[0])
        last = inst.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
        inst.psql("SELECT pg_switch_wal()")
        sandbox.wait_until(lambda: (arch / last).exists(), 120, "the last segment to be archived")
        inst.stop()
        (work / "xid").write_text(str(xid))
        print(f"generated WAL with pgbench in {gen:.0f}s: about {after_init} segments by pgbench -i -s {a.scale}, "
              f"the rest by the TPC-B run")
        return measure(work, xid, a.reps, gen)
    finally:
        inst.stop("immediate")
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def measure(work: Path, xid: int, reps: int, gen) -> int:
    arch = work / "archive"
    policy = work / "policy.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PGVAULT_POLICY=str(policy))
    cli = [sys.executable, "-m", "pgvault"]
    segs = sorted(p for p in arch.iterdir() if len(p.name) == 24)
    total = sum(p.stat().st_size for p in segs)
    mb = total / 1e6
    for p in segs:                       # warm the page cache once for both contenders
        p.read_bytes()
    print(f"{len(segs)} segments ({mb:.0f} MB) of WAL")

    def waldump():
        with open(os.devnull, "wb") as null:
            subprocess.run([f"{BIN}/pg_waldump", "-p", str(arch), segs[0].name, segs[-1].name],
                           stdout=null, stderr=subprocess.DEVNULL)

    found = {}

    def find():
        cp = subprocess.run([*cli, "find", "--table", "public.orders", "--database", "app", "--wal-dir",
                             str(arch), "--no-record", "--json"], env=env, capture_output=True, text=True)
        if cp.returncode != 0:
            raise SystemExit(f"find failed: {cp.stderr}")
        found.update(json.loads(cp.stdout))

    times = {"waldump": [], "find": []}
    for _ in range(reps):
        for name, fn in (("waldump", waldump), ("find", find)):
            subprocess.run(["sync"])
            t = time.monotonic()
            fn()
            times[name].append(time.monotonic() - t)
    best = {k: min(v) for k, v in times.items()}
    first = next((c for c in found["candidates"] if c["damaging"]), None)
    print(f"{'contender':<10} {'best s':>8} {'MB/s':>8}   runs")
    for k in ("waldump", "find"):
        print(f"{k:<10} {best[k]:8.2f} {mb / best[k]:8.1f}   {', '.join(f'{x:.2f}' for x in times[k])}")
    print(f"ratio find/waldump speed: {best['waldump'] / best['find']:.2f}x (goal >= 0.5x)")
    print(f"find: pg_waldump text classified {found['scan']['waldump_output_bytes'] / 1e6:.0f} MB; "
          f"scan part {found['scan']['seconds']:.2f}s (the rest is start-up and the history lookup)")
    ok = first is not None and first["xid"] == xid and first["kind"] == "TRUNCATE"
    print(f"truncate xid {xid} found first: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
