"""RTO of undoing a TRUNCATE: through a delayed standby (`restore --before-truncate T
--via-standby NAME --copy-back-to ...`) against the PITR route (`restore --before-truncate T
--target-dir D --start --copy-back-to ...`: Barman base at a local site + archived WAL), on the
same pgbench cluster, in one run on this machine.

    PYTHONPATH=. /opt/pgvault/venv/bin/python bench/standby_undo.py --scale 50 --tx 20000

Set-up: pgbench -i -s SCALE, a table `orders` (--rows rows) next to it, a Barman base, the
standby (`pgvault standby create`, delay 1h: the damage is never applied during the run), then
--tx pgbench transactions (WAL the PITR route replays). Each round: record the relation history,
TRUNCATE orders, undo it through the standby; TRUNCATE it again, switch and archive the WAL,
undo it by the PITR route. Timed: from the pgvault command's start until the table is back in
production (the PITR route: the whole command; the standby route: the whole command less the
revert phase that follows the copy, reported too); `sync` before each. Rounds interleave the routes; medians, every run
and the ratio are printed and written to bench/results/standby-undo.txt."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from pgvault import pg, proc, sandbox  # noqa: E402

BIN = "/usr/lib/postgresql/15/bin"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--tx", type=int, default=20000, help="pgbench transactions after the base (WAL the PITR route replays)")
    ap.add_argument("--rows", type=int, default=100000, help="rows of the truncated table")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "standby-undo.txt"))
    args = ap.parse_args()
    sandbox.use_this_checkout()
    lines: list[str] = []

    def say(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    work = sandbox.workdir("pgvault-bench-standby-")
    policy = work / "policy.yaml"
    inst = sandbox.new_instance(work, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy) + " wal-push %p",
        "max_wal_size": "2GB", "checkpoint_timeout": "30min"})
    sock = sandbox.owned_dir(work / "sb-sock", 0o755)
    policy.write_text(yaml.safe_dump({
        "version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
        "sites": {"local": {"type": "local", "path": str(sandbox.owned_dir(work / "site-local"))}},
        "state_dir": str(sandbox.owned_dir(work / "state")), "wal": {"sites": ["local"]},
        "jobs": {"base": {"method": "barman", "sites": ["local"]},
                 "undo": {"method": "standby", "conninfo": f"host={sock} port={pg.free_port()} user=postgres",
                          "delay": "1h", "pgdata": str(work / "sb")}}}, sort_keys=False))
    os.chmod(policy, 0o644)
    env = dict(os.environ, PGVAULT_POLICY=str(policy), PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "pgvault"]

    def pgvault(*a, check=True):
        cp = subprocess.run(cli + list(a), env=env, capture_output=True, text=True, cwd=ROOT)
        if check and cp.returncode:
            raise SystemExit(f"pgvault {' '.join(a)} failed:\n{cp.stdout}\n{cp.stderr}")
        return cp

    def step(what, fn):
        t = time.monotonic()
        fn()
        say(f"{what}: {time.monotonic() - t:.1f}s")

    primary = inst.conninfo().replace(" dbname=postgres", "")
    results: dict[str, list[float]] = {"standby": [], "pitr": []}
    walls: list[float] = []
    try:
        inst.start()
        step(f"pgbench -i -s {args.scale}", lambda: proc.run([f"{BIN}/pgbench", "-i", "-q", "-s", str(args.scale),
                                                               "-d", inst.conninfo()]))
        inst.psql(f"CREATE TABLE orders (id int PRIMARY KEY, note text); "
                  f"INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, {args.rows}) g")
        expected = inst.psql("SELECT count(*), md5(string_agg(note, ',' ORDER BY id)) FROM orders").strip()
        step("pgvault backup base (barman, local site)", lambda: pgvault("backup", "base"))
        step("pgvault standby create undo (pg_basebackup, delay 1h)", lambda: pgvault("standby", "create", "undo"))
        lsn0 = inst.psql("SELECT pg_current_wal_lsn()").strip()
        step(f"pgbench -n -t {args.tx}", lambda: proc.run([f"{BIN}/pgbench", "-n", "-c", "2", "-t", str(args.tx // 2),
                                                           "-d", inst.conninfo()]))
        wal = int(inst.psql(f"SELECT pg_current_wal_lsn() - '{lsn0}'::pg_lsn").strip())
        size = inst.psql("SELECT pg_size_pretty(pg_database_size('postgres'))").strip()
        say(f"cluster: database {size}; WAL after the base {wal / 2**20:.0f} MiB; orders {args.rows} rows")

        def damage():
            pgvault("relations", "--force")
            inst.psql("TRUNCATE orders")
            inst.psql("INSERT INTO orders VALUES (-1, 'after the accident')")

        def check_back():
            got = inst.psql("SELECT count(*), md5(string_agg(note, ',' ORDER BY id)) FROM orders WHERE id <> -1").strip()
            assert got == expected, (got, expected)
            inst.psql("DELETE FROM orders WHERE id = -1")

        for i in range(args.rounds):
            damage()
            proc.run(["sync"])
            t = time.monotonic()
            cp = pgvault("restore", "--before-truncate", "public.orders", "--via-standby", "undo",
                         "--copy-back-to", primary, "--json")
            wall = time.monotonic() - t
            doc = json.loads(cp.stdout)
            # The table is back before the standby's own configuration is restored: that last
            # phase (timed by pgvault as "revert") is not part of the outage.
            results["standby"].append(wall - doc["timings"]["revert"])
            walls.append(wall)
            check_back()
            say(f"round {i + 1} standby: {results['standby'][-1]:.2f}s to the table back, {wall:.2f}s with the revert "
                f"(pgvault's RTO {doc['rto_seconds']}s from its start: {doc['timings']}; reverted {doc['reverted']['ok']})")

            damage()
            inst.psql("SELECT pg_switch_wal()")
            status = inst.pgdata / "pg_wal" / "archive_status"
            sandbox.wait_until(lambda: not [f for f in os.listdir(status) if f.endswith(".ready")], 1800, "archiving",
                               interval=0.2)
            dest = work / f"side-{i}"
            proc.run(["sync"])
            t = time.monotonic()
            cp = pgvault("restore", "--before-truncate", "public.orders", "--target-dir", str(dest), "--start",
                         "--copy-back-to", primary)
            results["pitr"].append(time.monotonic() - t)
            check_back()
            timings = [x for x in cp.stdout.splitlines() if x.startswith("timings:")]
            say(f"round {i + 1} pitr:    {results['pitr'][-1]:.2f}s ({timings[0] if timings else '-'})")
            pg.Instance(dest, 0).stop("immediate")
            shutil.rmtree(dest, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        say("")
        say(f"RTO of undoing a TRUNCATE of a {args.rows}-row table, pgbench -s {args.scale} cluster, "
            f"{args.tx} transactions after the base; {args.rounds} rounds, interleaved")
        for k, v in results.items():
            say(f"  {k:8s} median {med[k]:7.2f}s   runs: {', '.join(f'{x:.2f}' for x in v)}")
        say(f"  standby command including the revert: median {statistics.median(walls):.2f}s   runs: "
            f"{', '.join(f'{x:.2f}' for x in walls)}")
        say(f"  ratio standby / pitr = {med['standby'] / med['pitr']:.3f}   (goal <= 0.2; with the revert "
            f"{statistics.median(walls) / med['pitr']:.3f})")
        say(f"  load average at the end: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        for pidfile in work.glob("*/postmaster.pid"):
            pg.Instance(pidfile.parent, 0).stop("immediate")
        shutil.rmtree(work, ignore_errors=True)
        if lines:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text("\n".join(["$ " + " ".join(["bench/standby_undo.py"] + sys.argv[1:])] + lines) + "\n")


if __name__ == "__main__":
    main()
