"""What encryption at rest costs: the same work with and without `encryption: {recipients}`,
rounds interleaved (clear, encrypted, clear, encrypted ...), in one run:

  wal-push   drain a backlog of N fresh 16 MiB segments through PostgreSQL's archiver to three
             sites (one local, two S3 on moto), zstd        target: encrypted >= 0.9 x clear
  backup     a logical backup of one database to a local and an S3 site   target: <= 1.1 x
  restore    pgvault restore of that database from the local site         target: <= 1.1 x

    PYTHONPATH=. /opt/pgvault/venv/bin/python bench/encryption.py [--segments 40] [--rows 1500000] [--rounds 2]

Writes bench/results/encryption.txt (every run, medians, ratios).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgvault import sandbox  # noqa: E402
from pgvault.crypt import age  # noqa: E402

from wal_archive import drain, make_backlog  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cli(policy: Path, *args, env=None) -> str:
    cp = subprocess.run([sys.executable, "-m", "pgvault", *args], capture_output=True, text=True, check=True, cwd=ROOT,
                        env=dict(os.environ, PGVAULT_POLICY=str(policy), PYTHONPATH=str(ROOT), **(env or {})))
    return cp.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=40)
    ap.add_argument("--rows", type=int, default=1_500_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wal-only", action="store_true", help="only the wal-push part")
    ap.add_argument("--out", default="encryption.txt", help="file name under bench/results/")
    a = ap.parse_args()
    os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(1 << 30)
    moto = sandbox.Moto().start()
    base = sandbox.workdir("pgvault-bench-enc-")
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        inst = sandbox.new_instance(base, "pg", settings={"archive_mode": "on", "archive_command": "false",
                                                          "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
        ident, rcpt = age.generate()
        keyfile = base / "key.txt"
        keyfile.write_text(ident + "\n")
        os.chmod(keyfile, 0o600)
        sites = {"local": {"type": "local", "path": str(sandbox.owned_dir(base / "site-local"))}}
        for name, region in (("eu", "eu-west-1"), ("us", "us-east-1")):
            bucket = f"bench-enc-{name}-{os.getpid()}"
            moto.create_bucket(bucket, region)
            sites[name] = {"type": "s3", "bucket": bucket, "region": region, "prefix": "pg", "endpoint_url": moto.url}
        state = sandbox.owned_dir(base / "state")
        policy = base / "policy.yaml"

        def write_policy(encrypted: bool) -> None:
            doc = {"version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
                   "sites": sites, "wal": {"sites": ["local", "eu", "us"], "compression": "zstd"},
                   "jobs": {"dumps": {"method": "logical", "sites": ["local", "eu"], "databases": ["app"],
                                      "retain": {"count": 50}}},
                   "state_dir": str(state)}
            if encrypted:
                doc["encryption"] = {"recipients": [rcpt]}
            policy.write_text(yaml.safe_dump(doc))
            os.chmod(policy, 0o644)

        say(f"# encryption at rest: with vs without, {a.rounds} interleaved round(s); host {os.cpu_count()} cores")
        # -- wal-push to three sites
        # CPU seconds of every wal-push process (GNU time appends user+system per run): on a
        # shared machine wall time swings with the neighbours' load, CPU per segment much less.
        cpu_dir = sandbox.owned_dir(base / "cpu")
        wal: dict[str, list[float]] = {"clear": [], "encrypted": []}
        cpu: dict[str, list[float]] = {"clear": [], "encrypted": []}
        for r in range(a.rounds):
            for mode in ("clear", "encrypted"):
                write_policy(mode == "encrypted")
                backlog = make_backlog(inst, a.segments)
                acct = cpu_dir / f"{mode}-{r}.txt"
                command = f"/usr/bin/time -a -o {acct} -f '%U %S' " + sandbox.pgvault_command(policy) + " wal-push %p"
                secs = drain(inst, command, backlog)
                used = sum(float(u) + float(sy) for u, sy in (ln.split() for ln in acct.read_text().splitlines()
                                                              if len(ln.split()) == 2))
                wal[mode].append(len(backlog) / secs)
                cpu[mode].append(len(backlog) / used)
                say(f"wal-push 3 sites {mode:9} round {r + 1}: {len(backlog)} segments in {secs:.2f}s = "
                    f"{len(backlog) / secs:.1f} segments/s wall; wal-push CPU {used:.2f}s = "
                    f"{len(backlog) / used:.1f} segments per CPU-s")
        med = statistics.median
        if a.wal_only:
            say("")
            for label, d in (("wal-push to 3 sites (segments/s wall, median)", wal),
                             ("wal-push to 3 sites (segments per CPU-s, median)", cpu)):
                ratio = med(d["encrypted"]) / med(d["clear"])
                say(f"{label:50} clear {med(d['clear']):6.2f} encrypted {med(d['encrypted']):6.2f} ratio {ratio:.2f} "
                    f"(target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})")
            return 0
        # -- logical backup and restore
        inst.psql("CREATE DATABASE app")
        inst.psql("CREATE TABLE t (id int, a text, b text, n numeric)", dbname="app")
        inst.psql(f"INSERT INTO t SELECT g, md5(g::text), md5((g * 7)::text), g * 1.5 FROM generate_series(1, {a.rows}) g",
                  dbname="app")
        size = inst.psql("SELECT pg_size_pretty(pg_database_size('app'))").strip()
        bk: dict[str, list[float]] = {"clear": [], "encrypted": []}
        rs: dict[str, list[float]] = {"clear": [], "encrypted": []}
        n = 0
        for r in range(a.rounds):
            for mode in ("clear", "encrypted"):
                write_policy(mode == "encrypted")
                subprocess.run(["sync"], check=True)
                t0 = time.perf_counter()
                bid = cli(policy, "backup", "dumps").split()[0]
                bk[mode].append(time.perf_counter() - t0)
                n += 1
                subprocess.run(["sync"], check=True)
                t0 = time.perf_counter()
                cli(policy, "restore", bid, "--database", "app", "--as", f"r{n}", "--from-site", "local",
                    env={"PGVAULT_IDENTITY": str(keyfile)})
                rs[mode].append(time.perf_counter() - t0)
                inst.psql(f"DROP DATABASE r{n}")
                say(f"logical {size} {mode:9} round {r + 1}: backup {bk[mode][-1]:.2f}s, restore {rs[mode][-1]:.2f}s")
        say("")
        say(f"{'measure':44} {'clear':>9} {'encrypted':>10} {'ratio':>7} target")
        wr = med(wal["encrypted"]) / med(wal["clear"])
        say(f"{'wal-push to 3 sites (segments/s, median)':44} {med(wal['clear']):9.1f} {med(wal['encrypted']):10.1f} "
            f"{wr:7.2f} >= 0.90 {'met' if wr >= 0.9 else 'NOT met'}")
        cr = med(cpu["encrypted"]) / med(cpu["clear"])
        say(f"{'wal-push to 3 sites (segments per CPU-s)':44} {med(cpu['clear']):9.1f} {med(cpu['encrypted']):10.1f} "
            f"{cr:7.2f} >= 0.90 {'met' if cr >= 0.9 else 'NOT met'}")
        for label, d in (("logical backup, 2 sites (s, median)", bk), ("logical restore from local (s, median)", rs)):
            ratio = med(d["encrypted"]) / med(d["clear"])
            say(f"{label:44} {med(d['clear']):9.2f} {med(d['encrypted']):10.2f} {ratio:7.2f} <= 1.10 "
                f"{'met' if ratio <= 1.1 else 'NOT met'}")
    finally:
        for pidfile in base.glob("*/postmaster.pid"):
            subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-D",
                            str(pidfile.parent), "-m", "immediate"], capture_output=True)
        moto.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        out = ROOT / "bench" / "results" / a.out
        out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
