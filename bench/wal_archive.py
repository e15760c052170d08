"""WAL archiving throughput: drain a backlog of .ready segments through PostgreSQL's real
archiver, with pgvault (three sites: one local, two S3 on moto) versus, in the same run, `cp`,
`pgbackrest archive-push` (archive-async=y, process-max=2, lz4, one local repo) and
`barman-cloud-wal-archive` (one S3 site).

    PYTHONPATH=. /opt/pgvault/venv/bin/python bench/wal_archive.py [--segments 100]

Method: one PostgreSQL 15 instance with archive_mode=on and archive_command='false'; for each
contender, generate a backlog of N fresh 16 MiB segments (INSERTs of md5 text: compresses
about 2-3x), sync, switch archive_command to the contender, reload, and time until no .ready
file is left. Every contender's destination is then checked to hold every segment.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgvault import pg, sandbox  # noqa: E402
from pgvault.wal import names  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def ready(inst) -> list[str]:
    d = inst.pgdata / "pg_wal" / "archive_status"
    return sorted(f[:-6] for f in os.listdir(d) if f.endswith(".ready"))


def make_backlog(inst, n: int) -> list[str]:
    """Write WAL until at least n new segments are .ready (archive_command is 'false')."""
    inst.psql("CREATE TABLE IF NOT EXISTS filler (id int, a text, b text)")
    start = ready(inst)
    while len(ready(inst)) < n:
        inst.psql("INSERT INTO filler SELECT g, md5(g::text), md5((g * 7)::text) FROM generate_series(1, 100000) g")
        inst.psql("TRUNCATE filler") if len(ready(inst)) % 40 == 39 else None
    inst.psql("SELECT pg_switch_wal()")
    sandbox.wait_until(lambda: len(ready(inst)) > len(start), 10)
    subprocess.run(["sync"], check=True)
    return ready(inst)


def drain(inst, command: str, backlog: list[str], timeout: float = 1800) -> float:
    inst.configure(archive_command=command)
    t0 = time.monotonic()
    inst.psql("SELECT pg_reload_conf()")
    sandbox.wait_until(lambda: not set(backlog) & set(ready(inst)), timeout, "backlog drained", interval=0.02)
    elapsed = time.monotonic() - t0
    inst.configure(archive_command="false")
    inst.psql("SELECT pg_reload_conf()")
    return elapsed


def pgbackrest_setup(base: Path, inst) -> str:
    d = sandbox.owned_dir(base / "pgbackrest")
    for sub in ("repo", "spool", "log", "lock"):
        sandbox.owned_dir(d / sub)
    conf = d / "pgbackrest.conf"
    conf.write_text(f"""[global]
repo1-path={d}/repo
spool-path={d}/spool
log-path={d}/log
lock-path={d}/lock
archive-async=y
process-max=2
compress-type=lz4
log-level-console=warn
start-fast=y

[bench]
pg1-path={inst.pgdata}
pg1-port={inst.port}
pg1-socket-path={inst.socket_dir}
""")
    os.chmod(conf, 0o644)
    pg.chown_to_run_user(conf)
    proc_env = dict(os.environ)
    subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"],
                   check=True, capture_output=True, env=proc_env)
    return f"pgbackrest --config={conf} --stanza=bench archive-push %p"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=100)
    ap.add_argument("--barman-segments", type=int, default=24, help="barman-cloud is slow: a smaller backlog")
    ap.add_argument("--only", nargs="*", help="contenders to run")
    args = ap.parse_args()

    moto = sandbox.Moto().start()
    base = sandbox.workdir("pgvault-bench-wal-")
    try:
        inst = sandbox.new_instance(base, "pg", settings={"archive_mode": "on", "archive_command": "false",
                                                          "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
        # pgvault's world: one local site, two S3 sites (two buckets in two regions on moto).
        local = sandbox.owned_dir(base / "site-local")
        sites = {"local": {"type": "local", "path": str(local)}}
        for name, region in (("eu", "eu-west-1"), ("us", "us-east-1")):
            bucket = f"bench-{name}-{os.getpid()}"
            moto.create_bucket(bucket, region)
            sites[name] = {"type": "s3", "bucket": bucket, "region": region, "prefix": "pg", "endpoint_url": moto.url}
        state = sandbox.owned_dir(base / "state")
        policy = base / "policy.yaml"

        def write_policy(compression: str) -> None:
            policy.write_text(yaml.safe_dump({
                "version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
                "sites": sites, "wal": {"sites": ["local", "eu", "us"], "compression": compression},
                "state_dir": str(state)}))
            os.chmod(policy, 0o644)

        cp_dir = sandbox.owned_dir(base / "cp")
        moto.create_bucket("bench-barman", "us-east-1")
        contenders = {
            "cp": lambda: f"cp %p {cp_dir}/%f",
            "pgbackrest-async": lambda: pgbackrest_setup(base, inst),
            "barman-cloud-wal-archive": lambda: (f"{VENV_BIN}/barman-cloud-wal-archive --gzip --endpoint-url {moto.url} "
                                                 f"s3://bench-barman/pg main %p"),
            "pgvault-3-sites-gzip": lambda: (write_policy("gzip"), sandbox.pgvault_command(policy) + " wal-push %p")[1],
            "pgvault-3-sites-zstd": lambda: (write_policy("zstd"), sandbox.pgvault_command(policy) + " wal-push %p")[1],
        }
        results = {}
        for name, make in contenders.items():
            if args.only and name not in args.only:
                continue
            n = args.barman_segments if name.startswith("barman") else args.segments
            command = make()
            backlog = make_backlog(inst, n)
            secs = drain(inst, command, backlog)
            results[name] = (len(backlog), secs)
            print(f"{name:28} {len(backlog):4} segments in {secs:7.2f}s = {len(backlog) / secs:6.1f} segments/s",
                  flush=True)
            if name.startswith("pgvault"):
                from pgvault.policy import load_policy
                from pgvault.wal.status import archive_status

                st = archive_status(load_policy(str(policy)))
                for sname, s in st["sites"].items():
                    missing = [b for b in backlog if names.kind(b) == "segment" and s["gaps"]]
                    assert s["spooled"] == 0 and not s["gaps"], (sname, s)
                    assert not missing
        print()
        base_rate = {k: v[0] / v[1] for k, v in results.items()}
        for name, rate in base_rate.items():
            ratios = ", ".join(f"{rate / r:.2f}x {k}" for k, r in base_rate.items() if k != name)
            print(f"{name:28} {rate:6.1f} seg/s  ({ratios})")
    finally:
        for pidfile in base.glob("*/postmaster.pid"):
            subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-D",
                            str(pidfile.parent), "-m", "immediate"], capture_output=True)
        moto.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
