"""Logical backup and restore: pgvault vs bare pg_dump pipelines, in the same run.

    /opt/pgvault/venv/bin/python bench/logical.py [--scale 50] [--reps 3]

Loads `pgbench -i -s SCALE` twice: as generated (filler blank: compresses ~22x) and with
pgbench_accounts.filler full of random hex (compresses ~5.6x, like real tables). Times bare
`pg_dump -Fd -j 2` (gzip), the best bare pipeline `pg_dump -Fc -Z0 | zstd -T2 -1 > file`,
`pgvault backup` to two local sites and to one local + one S3 site (moto), a bare boto3
upload of the same bytes, and restores: `zstd -dc | pg_restore` vs `pgvault restore`.

The headline ratio is against the single unsynced file. The like-for-like bare row does what
pgvault does with its output: two copies (tee), each fsynced before the command ends.

    --only blank|realistic   one data set;   --no-restore   skip the restore rounds"""
from __future__ import annotations

import argparse
import os
import shutil

import yaml
from common import pgvault, report, sh, timed, timed_together

from pgvault import sandbox


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=["blank", "realistic"], help="run one data set only")
    ap.add_argument("--no-restore", action="store_true", help="skip the restore rounds")
    args = ap.parse_args()
    base = sandbox.workdir("pgvault-bench-")
    moto = sandbox.Moto().start()
    inst = sandbox.new_instance(base, "pg", settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    try:
        bindir = inst.bindir
        ci = inst.conninfo("bench")
        inst.psql("CREATE DATABASE bench")
        sh(f"{bindir}/pgbench -i -q -s {args.scale} -d '{ci}'")
        for label in ("as generated (blank filler)", "realistic (random hex filler)"):
            if label.startswith("realistic"):
                inst.psql("UPDATE pgbench_accounts SET filler = substr(md5(random()::text) || md5(random()::text) "
                          "|| md5(random()::text), 1, 84)", dbname="bench")
                inst.psql("VACUUM FULL pgbench_accounts", dbname="bench")
            if args.only and not label.startswith({"blank": "as generated", "realistic": "realistic"}[args.only]):
                continue
            size = int(inst.psql("SELECT pg_database_size('bench')").strip())
            run_round(base, inst, moto, ci, bindir, args.reps, f"{label}, database {size / 1e6:.0f} MB",
                      restore=not args.no_restore)
    finally:
        moto.stop()
        inst.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def run_round(base, inst, moto, ci, bindir, reps, label, restore=True) -> None:
    out = base / "out"
    clean = lambda: (shutil.rmtree(out, ignore_errors=True), out.mkdir())  # noqa: E731
    rows = []
    rows.append(("pg_dump -Fd -j 2 (gzip)", timed(lambda: sh(f"{bindir}/pg_dump -Fd -j 2 -f {out}/d '{ci}'"), reps, clean)))
    bare = f"{bindir}/pg_dump -Fc -Z0 '{ci}' | zstd -q -T2 -1 > {out}/bench.dump.zst"
    two = (f"{bindir}/pg_dump -Fc -Z0 '{ci}' | zstd -q -T2 -1 | tee {out}/a.dump.zst > {out}/b.dump.zst"
           f" && sync {out}/a.dump.zst {out}/b.dump.zst")
    clean_two = lambda: [(out / f).unlink(missing_ok=True) for f in ("a.dump.zst", "b.dump.zst")]  # noqa: E731

    sites = {n: sandbox.owned_dir(base / n) for n in ("site1", "site2", "site3")}
    bucket = f"bench-{os.getpid()}-{len(label)}"
    moto.create_bucket(bucket, "eu-west-1")
    policy = {"version": 1, "cluster": {"name": "bench", "conninfo": inst.conninfo()},
              "sites": {"a": {"type": "local", "path": str(sites["site1"])},
                        "b": {"type": "local", "path": str(sites["site2"])},
                        "c": {"type": "local", "path": str(sites["site3"])},
                        "s3": {"type": "s3", "bucket": bucket, "region": "eu-west-1", "endpoint_url": moto.url}},
              "jobs": {"two-local": {"method": "logical", "sites": ["a", "b"], "databases": ["bench"], "globals": False},
                       "local-s3": {"method": "logical", "sites": ["c", "s3"], "databases": ["bench"], "globals": False}}}
    pfile = base / "policy.yaml"
    pfile.write_text(yaml.safe_dump(policy))
    env = {"PGVAULT_POLICY": str(pfile)}

    def wipe():
        for p in sites.values():
            for child in p.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    clean()
    # The bare pipelines and pgvault take turns, so load that comes and goes hits them alike.
    names = ["pg_dump -Fc -Z0 | zstd -T2 -1 > file", "same | tee 2 files, each fsynced (like for like)",
             "pgvault backup -> 2 local sites", "pgvault backup -> 1 local + 1 S3 (moto)"]
    secs = timed_together([(lambda: sh(bare), lambda: (out / "bench.dump.zst").unlink(missing_ok=True)),
                           (lambda: sh(two), clean_two),
                           (lambda: pgvault("backup", "two-local", env=env), wipe),
                           (lambda: pgvault("backup", "local-s3", env=env), wipe)], reps)
    rows += list(zip(names, secs))
    clean_two()
    dump_size = os.path.getsize(out / "bench.dump.zst")

    import boto3

    s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=moto.url)
    rows.append(("bare boto3 upload_file of the same dump to moto",
                 timed(lambda: s3.upload_file(str(out / "bench.dump.zst"), bucket, "bare/bench.dump.zst"), reps)))
    report(f"logical backup: {label}; dump {dump_size / 1e6:.0f} MB zstd", rows, "pg_dump -Fc -Z0 | zstd -T2 -1 > file")

    if not restore:
        return
    # Restores of the same dump into a fresh database.
    wipe()
    bid = pgvault("backup", "two-local", env=env).stdout.strip().splitlines()[-1]
    drop = lambda: inst.psql("DROP DATABASE IF EXISTS rtarget") and None  # noqa: E731

    def bare_restore():
        inst.psql("CREATE DATABASE rtarget TEMPLATE template0")
        sh(f"zstd -dc {out}/bench.dump.zst | {bindir}/pg_restore --exit-on-error -d '{inst.conninfo('rtarget')}'")

    secs = timed_together([(bare_restore, drop),
                           (lambda: pgvault("restore", bid, "--database", "bench", "--as", "rtarget", "--from-site", "a",
                                            env=env), drop)], reps)
    rrows = list(zip(["zstd -dc | pg_restore", "pgvault restore --as (local site)"], secs))
    drop()
    report(f"logical restore: {label}", rrows, "zstd -dc | pg_restore")


if __name__ == "__main__":
    main()
