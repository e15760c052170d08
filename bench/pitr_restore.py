"""PITR restore time: pgvault (Barman base at a local site + WAL through pgvault wal-fetch with
prefetch) versus pgBackRest (restore + archive-get with async prefetch), replaying the same WAL
to the same target, in one run on this machine.

    PYTHONPATH=. /opt/pgvault/venv/bin/python bench/pitr_restore.py --scale 50 --tx 20000

Both archives receive every segment from one archive_command (pgvault wal-push, then
pgbackrest archive-push). Both bases are taken before the pgbench run whose WAL is replayed (pgvault's first, so
it replays more);
the target is the time the pgbench run ended. Timed: from the restore command's start until
the restored instance has promoted (pgvault: `restore --start` returns then; pgBackRest:
`pgbackrest restore`, pg_ctl start, poll pg_is_in_recovery()). `sync` before each restore;
the tools alternate for --rounds rounds and medians are compared."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from pgvault import pg, proc, sandbox  # noqa: E402

BIN = "/usr/lib/postgresql/15/bin"


def sh(argv, **kw):
    return proc.run(argv, **kw)


def pgbackrest_conf(work: Path, inst: pg.Instance) -> Path:
    for d in ("pgbr-repo", "pgbr-log", "pgbr-lock", "pgbr-spool"):
        sandbox.owned_dir(work / d)
    conf = work / "pgbackrest.conf"
    conf.write_text(f"""[global]
repo1-path={work}/pgbr-repo
log-path={work}/pgbr-log
lock-path={work}/pgbr-lock
spool-path={work}/pgbr-spool
compress-type=lz4
start-fast=y
process-max=2
archive-async=y
archive-get-queue-max=1GiB
log-level-console=error
archive-timeout=600
repo1-retention-full=9

[bench]
pg1-path={inst.pgdata}
pg1-port={inst.port}
pg1-socket-path={inst.socket_dir}
""")
    os.chmod(conf, 0o644)
    return conf


def wait_promoted(inst: pg.Instance, timeout=3600) -> None:
    def promoted():
        try:
            return inst.psql("SELECT pg_is_in_recovery()").strip() == "f"
        except Exception:
            if not pg.running_postmaster(inst.pgdata) and inst.logfile.exists() and "FATAL" in inst.logfile.read_text():
                raise RuntimeError(inst.logfile.read_text()[-3000:])
            return False
    sandbox.wait_until(promoted, timeout, "promotion", interval=0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--tx", type=int, default=20000, help="pgbench transactions after the bases (the replayed WAL)")
    ap.add_argument("--rounds", type=int, default=3, help="restores per tool, alternating")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = sandbox.workdir("pgvault-bench-pitr-")
    policy = work / "policy.yaml"
    conf_placeholder = work / "pgbackrest.conf"
    os.environ["PGBACKREST_CONFIG"] = str(conf_placeholder)
    archive = (sandbox.pgvault_command(policy) + " wal-push %p && pgbackrest --stanza=bench archive-push %p")
    inst = sandbox.new_instance(work, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": archive, "max_wal_size": "2GB", "checkpoint_timeout": "30min"})
    site = sandbox.owned_dir(work / "site-local")
    state = sandbox.owned_dir(work / "state")
    policy.write_text(yaml.safe_dump({
        "version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
        "sites": {"local": {"type": "local", "path": str(site)}}, "state_dir": str(state),
        "wal": {"sites": ["local"], "batch": 1},  # one file per call: pgBackRest must see each one too
        "jobs": {"base": {"method": "barman", "sites": ["local"]}}}, sort_keys=False))
    os.chmod(policy, 0o644)
    pgbackrest_conf(work, inst)
    inst.start()
    env = dict(os.environ, PGVAULT_POLICY=str(policy), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cli = [sys.executable, "-m", "pgvault"]
    try:
        # Before any WAL is written: archive_command runs pgbackrest archive-push too.
        sh(["pgbackrest", "--stanza=bench", "stanza-create"], user="postgres")
        t = time.monotonic()
        sh([f"{BIN}/pgbench", "-i", "-q", "-s", str(args.scale), "-d", inst.conninfo()])
        print(f"pgbench -i -s {args.scale}: {time.monotonic() - t:.1f}s", flush=True)
        # pgvault's base first: WAL written between the two bases is replayed by pgvault only,
        # so any bias in the comparison is against pgvault.
        t = time.monotonic()
        subprocess.run(cli + ["backup", "base"], env=env, check=True, capture_output=True)
        print(f"pgvault backup (barman, local site): {time.monotonic() - t:.1f}s", flush=True)
        t = time.monotonic()
        sh(["pgbackrest", "--stanza=bench", "--type=full", "backup"], user="postgres")
        print(f"pgbackrest backup: {time.monotonic() - t:.1f}s", flush=True)
        start_lsn = inst.psql("SELECT pg_current_wal_lsn()").strip()
        sh([f"{BIN}/pgbench", "-n", "-c", "2", "-t", str(args.tx // 2), "-d", inst.conninfo()])
        target = inst.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')").strip()
        inst.psql("CREATE TABLE after_target AS SELECT 1 AS x")
        nbytes = int(inst.psql(f"SELECT pg_current_wal_lsn() - '{start_lsn}'::pg_lsn").strip())
        last = inst.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        status = inst.pgdata / "pg_wal" / "archive_status"
        sandbox.wait_until(lambda: (status / f"{last}.done").exists(), 1800, "archiving", interval=0.5)
        print(f"replayed WAL: {nbytes / 2**20:.0f} MiB ({nbytes / 2**24:.0f} segments); target {target} UTC", flush=True)
        expected = inst.psql("SELECT sum(abalance) FROM pgbench_accounts").strip()
        inst.stop()

        results: dict[str, list[float]] = {"pgvault": [], "pgbackrest": []}

        def run_pgvault(i):
            proc.run(["sync"])
            dest, port = work / f"r-pgvault-{i}", pg.free_port()
            t = time.monotonic()
            cp = subprocess.run(cli + ["restore", "--to-time", target, "--target-dir", str(dest), "--port", str(port),
                                       "--start"], env=env, capture_output=True, text=True)
            results["pgvault"].append(time.monotonic() - t)
            if cp.returncode:
                raise SystemExit(f"pgvault restore failed:\n{cp.stdout}\n{cp.stderr}")
            print("pgvault", cp.stdout.strip().splitlines()[-1], flush=True)
            r = pg.Instance(dest, port, socket_dir=dest)
            got = r.psql("SELECT sum(abalance) FROM pgbench_accounts").strip()
            assert got == expected, (got, expected)
            r.stop("immediate")
            shutil.rmtree(dest)

        def run_pgbackrest(i):
            proc.run(["sync"])
            dest2, port2 = sandbox.owned_dir(work / f"r-pgbackrest-{i}"), pg.free_port()
            t = time.monotonic()
            sh(["pgbackrest", "--stanza=bench", f"--pg1-path={dest2}", "--type=time", f"--target={target}+00",
                "--target-action=promote", "restore"], user="postgres")
            r2 = pg.Instance(dest2, port2, socket_dir=dest2)
            r2.configure(archive_mode=False, port=port2)
            r2.start(wait=False)
            wait_promoted(r2)
            results["pgbackrest"].append(time.monotonic() - t)
            print(f"pgbackrest {results['pgbackrest'][-1]:.1f}s", flush=True)
            got = r2.psql("SELECT sum(abalance) FROM pgbench_accounts").strip()
            assert got == expected, (got, expected)
            r2.stop("immediate")
            shutil.rmtree(dest2)

        # Alternate the tools so load from elsewhere on the shared machine hits both alike.
        for i in range(args.rounds):
            run_pgvault(i)
            run_pgbackrest(i)
        print()
        print(f"PITR restore (base + replay to target), scale {args.scale}, {args.tx} pgbench transactions replayed")
        import statistics

        med = {k: statistics.median(v) for k, v in results.items()}
        for k, v in results.items():
            print(f"  {k:12s} median {med[k]:6.1f}s   runs: {', '.join(f'{x:.1f}' for x in v)}")
        print(f"  ratio pgvault / pgbackrest (medians): {med['pgvault'] / med['pgbackrest']:.2f}x (goal <= 1.2x)")
    finally:
        for pidfile in work.glob("*/postmaster.pid"):
            pg.Instance(pidfile.parent, 0).stop("immediate")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
