"""How long does `pgvault status` take on a big archive, against the bare listing it cannot
avoid? A local site and an S3 site (moto_server) each hold N WAL segments (empty objects with
real names: status only lists them) and one real logical backup.

    /opt/pgvault/venv/bin/python bench/status.py [N_LOCAL] [N_S3]

Compared in the same run: `find | wc -l` on the local site and a boto3 paginated listing of
the bucket (the floor: status must list every WAL object to find gaps), `pgvault wal-status`
(the wal module's own listing), and `pgvault status --json` / `--prometheus`."""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import yaml

from common import ROOT, pgvault, report, sh, timed

from pgvault import sandbox
from pgvault.wal import names


class Scene:
    """The archive status reads: a local and an S3 site with N WAL objects each, one logical backup."""

    def __init__(self, n_local: int, n_s3: int):
        self.n_local, self.n_s3 = n_local, n_s3
        self.work = sandbox.workdir("pgvault-bench-status-")
        self.moto = sandbox.Moto().start()
        self.inst = sandbox.new_instance(self.work)
        self.local = sandbox.owned_dir(self.work / "site-local")
        self.bucket = "pgv-bench-status"
        self.moto.create_bucket(self.bucket)
        policy = self.work / "policy.yaml"
        policy.write_text(yaml.safe_dump({
            "version": 1, "cluster": {"name": "main", "conninfo": self.inst.conninfo()},
            "sites": {"local": {"type": "local", "path": str(self.local)},
                      "s3": {"type": "s3", "bucket": self.bucket, "prefix": "pg", "endpoint_url": self.moto.url}},
            "wal": {"sites": ["local", "s3"]}, "state_dir": str(self.work / "state"),
            "jobs": {"nightly": {"method": "logical", "sites": ["local", "s3"], "schedule": "0 2 * * *"}},
            "objectives": {"rpo": "5m", "rto": "30m"}}))
        self.env = {"PGVAULT_POLICY": str(policy)}
        pgvault("backup", "nightly", env=self.env)
        for i in range(1, n_local + 1):
            name = names.segment_name(1, i)
            d = self.local / "clusters/main/wals" / name[:16]
            d.mkdir(parents=True, exist_ok=True)
            (d / (name + ".gz")).touch()
        self.client = self.moto.client()

        def put(i):
            name = names.segment_name(1, i)
            self.client.put_object(Bucket=self.bucket, Key=f"pg/clusters/main/wals/{name[:16]}/{name}.gz", Body=b"")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(1, n_s3 + 1)))

    def boto_list(self):
        n = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix="pg/clusters/main/wals/"):
            n += len(page.get("Contents", []))
        assert n == self.n_s3, n

    def close(self):
        self.inst.stop("immediate")
        self.moto.stop()
        sh(f"rm -rf {self.work}")


def main(n_local: int = 20000, n_s3: int = 3000) -> None:
    sc = Scene(n_local, n_s3)
    try:
        env, local = sc.env, sc.local
        prom = sc.work / "pgvault.prom"
        rows = [
            (f"find | wc -l (local, {n_local} WAL)", timed(lambda: sh(f"find {local}/clusters/main/wals -type f | wc -l"))),
            (f"boto3 list_objects_v2 (S3, {n_s3} WAL)", timed(sc.boto_list)),
            ("python -m pgvault --help (interpreter + CLI start)", timed(lambda: pgvault("--help"))),
            ("pgvault wal-status --json (both sites)", timed(lambda: pgvault("wal-status", "--json", env=env))),
            ("pgvault status --json (both sites)", timed(lambda: _status(env))),
            ("pgvault status --prometheus FILE", timed(lambda: _status(env, "--prometheus", str(prom)))),
        ]
        report("pgvault status on a large archive", rows, baseline="pgvault wal-status --json (both sites)",
               extra={"cluster": sc.inst.conninfo(), "python": sys.version.split()[0], "cpus": os.cpu_count()})
    finally:
        sc.close()


def _status(env, *extra, root=ROOT):
    import subprocess

    # status exits with the overall state (here WARNING/CRITICAL: the fake WAL is far ahead).
    # cwd=root: `python -m` imports the checkout in the working directory first.
    cp = subprocess.run([sys.executable, "-m", "pgvault", "status", "--json", *extra], capture_output=True,
                        env=dict(os.environ, PYTHONPATH=str(root), **env), check=False, text=True, cwd=root)
    assert cp.returncode in (0, 1, 2, 3) and json.loads(cp.stdout)["facts"], cp.stderr


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
