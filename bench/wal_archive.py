"""WAL archiving throughput: drain a backlog of .ready segments through PostgreSQL's real
archiver, with pgvault (three sites: one local, two S3 on moto) versus, in the same run, `cp`,
`pgbackrest archive-push` (archive-async=y, process-max=2, lz4, one local repo) and
`barman-cloud-wal-archive` (one S3 site); and pgvault to its local site alone, the same kind
of destination as pgBackRest's (on moto, the S3 server is the bottleneck of three sites).

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
    ap.add_argument("--moto-nice", type=int, default=0,
                    help="run moto_server at this nice level: S3 is another machine in production, here "
                         "it competes with the archiver for the same 2 cores")
    ap.add_argument("--moto-disk", action="store_true",
                    help="let moto_server spill objects over 5 MB to this machine's disk (its default); by default "
                         "the bench keeps them in memory, as S3 is another machine's disk in production")
    ap.add_argument("--rounds", type=int, default=1, help="run the contenders this many times, interleaved")
    args = ap.parse_args()

    if not args.moto_disk:
        os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(1 << 30)
    moto = sandbox.Moto().start()
    if args.moto_nice:
        os.setpriority(os.PRIO_PROCESS, moto.proc.pid, args.moto_nice)
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

        def write_policy(compression: str, wal_sites=("local", "eu", "us"), sync_sites="all") -> None:
            policy.write_text(yaml.safe_dump({
                "version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
                "sites": sites, "wal": {"sites": list(wal_sites), "compression": compression, "sync_sites": sync_sites},
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
            "pgvault-3-sites-zstd-sync1": lambda: (write_policy("zstd", sync_sites=1),
                                                   sandbox.pgvault_command(policy) + " wal-push %p")[1],
            "pgvault-1-local-site-zstd": lambda: (write_policy("zstd", ["local"]),
                                                  sandbox.pgvault_command(policy) + " wal-push %p")[1],
        }
        results: dict[str, list] = {}
        commands: dict[str, str] = {}
        order = [n for n in contenders if not args.only or n in args.only]
        for name in order * args.rounds:
            make = contenders[name]
            n = args.barman_segments if name.startswith("barman") else args.segments
            command = commands.get(name) or make()
            commands[name] = command
            if name.startswith("pgvault"):
                make()  # (re)write its policy
            backlog = make_backlog(inst, n)
            t0 = time.monotonic()
            secs = drain(inst, command, backlog)
            results.setdefault(name, []).append((len(backlog), secs))
            print(f"{name:28} {len(backlog):4} segments in {secs:7.2f}s = {len(backlog) / secs:6.1f} segments/s"
                  " (archiver: pg_wal drained)", flush=True)
            if name.startswith("pgvault"):
                from pgvault.policy import load_policy
                from pgvault.sites import open_sites
                from pgvault.wal.status import list_wal

                pol = load_policy(str(policy))
                site_objs = open_sites(pol, pol.wal.sites)

                def complete() -> bool:
                    for site in site_objs.values():
                        held = {n for n, _m in list_wal(site, "main")}
                        if any(b not in held for b in backlog):
                            return False
                    return True

                # With sync_sites < all the other sites are fed by the background shipper:
                # time until every segment is at every site, and check none is lost.
                sandbox.wait_until(complete, 1800, "every segment at every site", interval=0.1)
                full = time.monotonic() - t0
                results.setdefault(name + " (all sites hold all)", []).append((len(backlog), full))
                print(f"{'':28} {len(backlog):4} segments at all {len(site_objs)} site(s) after {full:7.2f}s = "
                      f"{len(backlog) / full:6.1f} segments/s", flush=True)
            elif name == "cp":
                assert not [b for b in backlog if not (cp_dir / b).exists()]
        print()
        import statistics

        # per contender: the median rate over the rounds
        base_rate = {k: statistics.median(n / t for n, t in v) for k, v in results.items()}
        refs = [k for k in ("pgbackrest-async", "cp") if k in base_rate]
        print(f"median over {args.rounds} round(s)")
        for name, rate in base_rate.items():
            ratios = ", ".join(f"{rate / base_rate[k]:.2f}x {k}" for k in refs if k != name)
            print(f"{name:48} {rate:6.1f} seg/s  {ratios}")
    finally:
        for pidfile in base.glob("*/postmaster.pid"):
            subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-D",
                            str(pidfile.parent), "-m", "immediate"], capture_output=True)
        moto.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
