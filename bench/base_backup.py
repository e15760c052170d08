"""Base backup and base restore speed: pgvault's engine (method barman) to [local], [s3] and
[local, s3-eu, s3-us] against pgBackRest (full, lz4, process-max 2, one local repo) and
barman-cloud-backup --lz4 to moto, in one run, rounds interleaved; then the restores of each
base (the lay-down only: files in place, no WAL replay).

    PYTHONPATH=. /opt/pgvault/venv/bin/python bench/base_backup.py --scale 50 --rounds 2

The cluster is `pgbench -s SCALE` with pgbench_accounts.filler made of random hex (the blank
filler of pgbench -i compresses ~22x and flatters every compressor). archive_command is
pgBackRest's archive-push for everyone (pg_backup_stop waits for the stop segment in every
tool). pgvault's bytes read are the backup process's own /proc/self/io (rchar: every byte its
threads read, page cache included) against the size of what it backs up. moto_server shares
the two cores and is the bound of every S3 figure: a bare boto3 upload of the same bytes is
printed beside them. Beside each wall time: the CPU seconds of the tool's own processes (this
process's children: the pgvault or pgBackRest command and what it waited for, tar included)
and of moto_server during it — on 2 shared cores, wall times are noisy and CPU is the cost."""
from __future__ import annotations

import argparse
import json
import os
import resource
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
from pgvault.crypt import age  # noqa: E402

BIN = "/usr/lib/postgresql/15/bin"
OUT = ROOT / "bench/results/base_backup.txt"


def tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    work = sandbox.workdir("pgvault-bench-base-")
    moto = sandbox.Moto().start()
    policy = work / "policy.yaml"
    os.environ["PGBACKREST_CONFIG"] = str(work / "pgbackrest.conf")
    inst = sandbox.new_instance(work, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": "pgbackrest --stanza=bench archive-push %p",
        "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    for d in ("pgbr-repo", "pgbr-log", "pgbr-lock", "pgbr-spool"):
        sandbox.owned_dir(work / d)
    (work / "pgbackrest.conf").write_text(f"""[global]
repo1-path={work}/pgbr-repo
log-path={work}/pgbr-log
lock-path={work}/pgbr-lock
spool-path={work}/pgbr-spool
compress-type=lz4
start-fast=y
process-max=2
log-level-console=error
archive-timeout=600
repo1-retention-full=99

[bench]
pg1-path={inst.pgdata}
pg1-port={inst.port}
pg1-socket-path={inst.socket_dir}
""")
    os.chmod(work / "pgbackrest.conf", 0o644)
    buckets = {"s3": ("us-east-1", f"pgv-bench-{os.getpid()}-s3"), "s3-eu": ("eu-west-1", f"pgv-bench-{os.getpid()}-eu"),
               "s3-us": ("us-east-1", f"pgv-bench-{os.getpid()}-us"), "bc": ("us-east-1", f"pgv-bench-{os.getpid()}-bc"),
               "raw": ("us-east-1", f"pgv-bench-{os.getpid()}-raw")}
    for region, b in buckets.values():
        moto.create_bucket(b, region)
    local = sandbox.owned_dir(work / "site-local")
    sites = {"local": {"type": "local", "path": str(local)},
             # the same local site with encryption at rest (issue 15: base backup <= 1.1 x clear)
             "local-enc": {"type": "local", "path": str(sandbox.owned_dir(work / "site-local-enc")),
                           "encryption": {"recipients": [age.generate()[1]]}}}
    for n in ("s3", "s3-eu", "s3-us"):
        region, b = buckets[n]
        sites[n] = {"type": "s3", "bucket": b, "region": region, "prefix": "pg", "endpoint_url": moto.url}
    policy.write_text(yaml.safe_dump({
        "version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
        "sites": sites, "state_dir": str(sandbox.owned_dir(work / "state")),
        "jobs": {"one-local": {"method": "barman", "sites": ["local"]},
                 "one-local-enc": {"method": "barman", "sites": ["local-enc"]},
                 "one-s3": {"method": "barman", "sites": ["s3"]},
                 "three": {"method": "barman", "sites": ["local", "s3-eu", "s3-us"]}}}, sort_keys=False))
    os.chmod(policy, 0o644)
    env = dict(os.environ, PGVAULT_POLICY=str(policy), PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
               PATH=f"{BIN}:{os.environ['PATH']}")
    inst.start()
    try:
        proc.run(["pgbackrest", "--stanza=bench", "stanza-create"], user="postgres")
        t = time.monotonic()
        n = args.scale * 100000
        inst.psql("SELECT 1")
        proc.run([f"{BIN}/pgbench", "-i", "-q", "-I", "dt", "-s", str(args.scale), "-d", inst.conninfo()])
        inst.psql(f"""INSERT INTO pgbench_branches SELECT g, 0 FROM generate_series(1, {args.scale}) g;
            INSERT INTO pgbench_tellers SELECT g, (g - 1) / 10 + 1, 0 FROM generate_series(1, {args.scale * 10}) g;
            INSERT INTO pgbench_accounts SELECT g, (g - 1) / 100000 + 1, 0,
              substr(md5(random()::text) || md5(random()::text) || md5(random()::text), 1, 84)
            FROM generate_series(1, {n}) g""")
        proc.run([f"{BIN}/pgbench", "-i", "-q", "-I", "pv", "-s", str(args.scale), "-d", inst.conninfo()])
        inst.psql("CHECKPOINT")
        # the archiver's backlog of the load's WAL must not be paid by whichever backup runs first
        seg = inst.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        sandbox.wait_until(lambda: inst.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").strip() >= seg,
                           1800, "the load's WAL archived", interval=0.5)
        size = du(inst.pgdata) - du(inst.pgdata / "pg_wal")
        say(f"# base_backup — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
            f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip()}")
        say(f"load average before the rounds: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        say(f"cluster: pgbench -s {args.scale}, random hex filler, PGDATA without pg_wal {size / 2**20:.0f} MiB "
            f"(made in {time.monotonic() - t:.0f}s); {os.cpu_count()} cores, moto_server on the same cores")

        times: dict[str, list[float]] = {}
        cpu: dict[str, list[tuple[float, float]]] = {}   # (the tool's processes, moto_server) CPU seconds
        io: dict[str, list[dict]] = {}

        def moto_cpu() -> float:
            fields = Path(f"/proc/{moto.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def timed(name, fn):
            subprocess.run(["sync"], check=True)
            r0, m0 = resource.getrusage(resource.RUSAGE_CHILDREN), moto_cpu()
            t0 = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
            # the 2 cores are shared (moto_server, other sessions' tests): CPU seconds say more than wall
            r1, m1 = resource.getrusage(resource.RUSAGE_CHILDREN), moto_cpu()
            cpu.setdefault(name, []).append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, m1 - m0))

        def pgvault_backup(job):
            iofile = work / f"io-{job}.txt"
            # the CLI leaves through os._exit (no atexit): note /proc/self/io just before it
            code = ("import os, runpy, sys\n"
                    "_exit = os._exit\n"
                    f"def noted(code):\n    open({str(iofile)!r}, 'w').write(open('/proc/self/io').read())\n    _exit(code)\n"
                    "os._exit = noted\n"
                    f"sys.argv = ['pgvault', 'backup', {job!r}]\n"
                    "runpy.run_module('pgvault', run_name='__main__')\n")

            def run():
                cp = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
                if cp.returncode:
                    raise SystemExit(f"pgvault backup {job} failed:\n{cp.stdout}\n{cp.stderr}")
                io.setdefault(job, []).append(dict(line.split(": ") for line in iofile.read_text().split("\n") if line))
            return run

        def pgbackrest_backup():
            proc.run(["pgbackrest", "--stanza=bench", "--type=full", "backup"], user="postgres")

        def barman_cloud_backup():
            _region, b = buckets["bc"]
            subprocess.run([tool("barman-cloud-backup"), "--endpoint-url", moto.url, "--lz4", "--immediate-checkpoint",
                            "-J", "2", "-d", inst.conninfo(), f"s3://{b}/pg", "main"], env=env, check=True,
                           capture_output=True)

        cases = [("pgBackRest full (lz4, process-max 2, local repo)", pgbackrest_backup),
                 ("barman-cloud-backup --lz4 -J 2 to moto", barman_cloud_backup),
                 ("pgvault [local]", pgvault_backup("one-local")),
                 ("pgvault [local, encrypted]", pgvault_backup("one-local-enc")),
                 ("pgvault [s3]", pgvault_backup("one-s3")),
                 ("pgvault [local, s3-eu, s3-us]", pgvault_backup("three"))]
        for r in range(args.rounds):
            for name, fn in cases:
                timed(name, fn)
                print(f"  round {r + 1}: {name}: {times[name][-1]:.2f}s", flush=True)

        # bare boto3 upload of the same bytes pgvault stored (the bound moto puts on S3 figures)
        import boto3
        m = json.loads(subprocess.run([sys.executable, "-m", "pgvault", "list", "--site", "local", "--json"], env=env,
                                      cwd=ROOT, capture_output=True, text=True, check=True).stdout)[-1]
        man = json.loads((local / "clusters/main/backups" / m["backup_id"] / "manifest.json").read_text())
        tar = local / "clusters/main" / next(a["key"] for a in man["artifacts"] if a["name"] == "data.tar.lz4")
        client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="test",
                              aws_secret_access_key="test")
        for _ in range(args.rounds):
            # in this process: its CPU is not a child's, only moto's is counted
            timed("bare boto3 upload_file of data.tar.lz4 to moto", lambda: client.upload_file(str(tar), buckets["raw"][1], "x"))

        # restores: the base laid down (pgBackRest restore; pgvault's lay-down from a local and an S3 site;
        # barman-cloud-restore of pgvault's S3 copy and of barman-cloud-backup's own)
        inst.stop()
        bc_id = json.loads(subprocess.run([tool("barman-cloud-backup-list"), "--endpoint-url", moto.url, "--format", "json",
                                           f"s3://{buckets['bc'][1]}/pg", "main"], env=env, capture_output=True,
                                          text=True, check=True).stdout)["backups_list"][-1]["backup_id"]
        s3_manifest = json.loads(subprocess.run([sys.executable, "-m", "pgvault", "list", "--site", "s3", "--json"],
                                                env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout)[-1]
        targets = []

        def fresh(name):
            d = work / f"r-{name}-{len(targets)}"
            targets.append(d)
            return d

        def lay_down(site, bid, sync=False):
            def run():
                d = fresh("pgvault-" + site)
                code = ("import sys, json\nfrom pathlib import Path\nfrom pgvault.policy import load_policy\n"
                        "from pgvault.catalog.catalog import Catalog\nfrom pgvault.sites import open_site\n"
                        "from pgvault.restore.base_tar import lay_down\n"
                        f"p = load_policy({str(policy)!r}); s = open_site({site!r}, p.sites[{site!r}])\n"
                        f"m = Catalog(s, 'main').manifest({bid!r})\nd = Path({str(d)!r}); d.mkdir(mode=0o700)\n"
                        f"lay_down(p, {site!r}, m.model_dump(mode='json'), d)\n")
                subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True)
                if sync:
                    # pgBackRest's restore fsyncs every file it writes (its storage writes sync by
                    # default; only the directories' syncs are put off to the end); tar -x does not
                    # (PostgreSQL syncs the data directory when it starts from a backup_label):
                    # with the target's file system synced too, the two figures compare like for like
                    subprocess.run(["sync", "-f", str(d)], check=True)
            return run

        def pgbackrest_restore():
            d = sandbox.owned_dir(fresh("pgbackrest"))
            proc.run(["pgbackrest", "--stanza=bench", f"--pg1-path={d}", "restore"], user="postgres")

        def barman_cloud_restore(bucket, bid):
            def run():
                subprocess.run([tool("barman-cloud-restore"), "--endpoint-url", moto.url, f"s3://{bucket}/pg"
                                + ("/clusters" if bucket != buckets["bc"][1] else ""), "main", bid, str(fresh("bc"))],
                               env=env, check=True, capture_output=True)
            return run

        rcases = [("pgBackRest restore (local repo)", pgbackrest_restore),
                  ("pgvault lay-down from [local]", lay_down("local", m["backup_id"])),
                  ("pgvault lay-down from [local], then sync -f of the target",
                   lay_down("local", m["backup_id"], sync=True)),
                  ("pgvault lay-down from [s3]", lay_down("s3", s3_manifest["backup_id"])),
                  ("barman-cloud-restore of pgvault's S3 copy",
                   barman_cloud_restore(buckets["s3"][1], s3_manifest["backup_id"].rstrip("Z"))),
                  ("barman-cloud-restore of barman-cloud-backup's", barman_cloud_restore(buckets["bc"][1], bc_id))]
        for r in range(args.rounds):
            for name, fn in rcases:
                timed(name, fn)
                print(f"  round {r + 1}: {name}: {times[name][-1]:.2f}s", flush=True)
                for d in targets:
                    shutil.rmtree(d, ignore_errors=True)

        def table(title, names, baseline):
            base = statistics.median(times[baseline])
            say(f"\n## {title}\n| command | median s | runs | x {baseline} | CPU s, tool | CPU s, moto |\n"
                "|---|---:|---|---:|---:|---:|")
            for nme in names:
                med = statistics.median(times[nme])
                tool_cpu = statistics.median(c[0] for c in cpu[nme])
                say(f"| {nme} | {med:.2f} | {', '.join(f'{x:.2f}' for x in times[nme])} | {med / base:.2f} | "
                    f"{tool_cpu:.2f} | {statistics.median(c[1] for c in cpu[nme]):.2f} |")

        say(f"\nload average after the rounds: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        table("Base backup (wall time)", [c[0] for c in cases] + ["bare boto3 upload_file of data.tar.lz4 to moto"],
              cases[0][0])
        table("Base restore: files laid down (no WAL replay)", [c[0] for c in rcases], rcases[0][0])
        say("\n## Bytes read by pgvault's backup process (/proc/self/io), PGDATA without pg_wal "
            f"{size} bytes")
        for job, runs in io.items():
            for x in runs:
                say(f"- {job}: rchar {int(x['rchar'])} ({int(x['rchar']) / size:.3f} x PGDATA), "
                    f"read_bytes {int(x['read_bytes'])} (from disk; the cluster is in the page cache)")
        stored = sum(a["size"] for a in man["artifacts"])
        say(f"\nstored per site: {stored} bytes ({size / stored:.2f}x compression, lz4); tar {tar.stat().st_size} bytes")
        pgb = statistics.median(times[cases[0][0]])
        three = statistics.median(times["pgvault [local, s3-eu, s3-us]"])
        say(f"\nratios: pgvault three sites / pgBackRest one local repo = {three / pgb:.2f} (goal <= 1.0); "
            f"pgvault [local] / pgBackRest = {statistics.median(times['pgvault [local]']) / pgb:.2f}; "
            f"pgvault [local, encrypted] / [local] = "
            f"{statistics.median(times['pgvault [local, encrypted]']) / statistics.median(times['pgvault [local]']):.2f} (goal <= 1.1); "
            f"pgvault [s3] / barman-cloud-backup = {statistics.median(times['pgvault [s3]']) / statistics.median(times[cases[1][0]]):.2f}; "
            f"pgvault lay-down [local] / pgBackRest restore = "
            f"{statistics.median(times['pgvault lay-down from [local]']) / statistics.median(times[rcases[0][0]]):.2f} (goal <= 1.0)")
    finally:
        inst.stop("immediate") if pg.running_postmaster(inst.pgdata) else None
        moto.stop()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        if lines:
            OUT.write_text("\n".join(lines) + "\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
