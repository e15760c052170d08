"""The test world: real PostgreSQL 15 instances (initdb in temp dirs, free ports), a real S3
endpoint (moto_server on 127.0.0.1) with buckets in several regions, and the pgvault CLI run
as a subprocess exactly as users run it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from pgvault import sandbox

ROOT = Path(__file__).resolve().parent.parent
# PostgreSQL runs this checkout's pgvault (archive_command, a restore's restore_command), not the
# installed /usr/local/bin/pgvault, which may be another checkout.
sandbox.use_this_checkout()


@pytest.fixture(scope="session")
def moto():
    m = sandbox.Moto().start()
    yield m
    m.stop()


@pytest.fixture
def workdir():
    d = sandbox.workdir("pgvault-test-")
    yield d
    # Stop any instance a test left behind before deleting its files.
    for pidfile in d.glob("*/postmaster.pid"):
        subprocess.run(["/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-D", str(pidfile.parent), "-m", "immediate"],
                       user="postgres" if os.geteuid() == 0 else None, capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pg(workdir):
    inst = sandbox.new_instance(workdir)
    yield inst
    inst.stop("immediate")


def bucket_name() -> str:
    return f"pgv-{uuid.uuid4().hex[:12]}"


class World:
    """Builds policies for a test: a cluster, local sites under the workdir, S3 buckets on moto."""

    def __init__(self, workdir: Path, instance, moto=None):
        self.workdir = workdir
        self.pg = instance
        self.moto = moto
        self.sites: dict = {}
        self.jobs: dict = {}
        self.extra: dict = {}
        self.cluster_name = "main"

    def local_site(self, name: str) -> Path:
        path = sandbox.owned_dir(self.workdir / f"site-{name}")
        self.sites[name] = {"type": "local", "path": str(path)}
        return path

    def s3_site(self, name: str, region: str = "us-east-1", prefix: str = "pg") -> str:
        bucket = bucket_name()
        self.moto.create_bucket(bucket, region)
        self.sites[name] = {"type": "s3", "bucket": bucket, "region": region, "prefix": prefix,
                            "endpoint_url": self.moto.url}
        return bucket

    def policy(self, **overrides) -> Path:
        doc = {"version": 1,
               "cluster": {"name": self.cluster_name, "conninfo": self.pg.conninfo(), "pgdata": str(self.pg.pgdata)},
               "sites": self.sites, "jobs": self.jobs}
        doc.update(self.extra)
        doc.update(overrides)
        path = self.workdir / "policy.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.chmod(path, 0o644)
        return path

    def cli(self, *args, check: bool = True, env: dict | None = None, input: str | None = None):
        """Run the real `pgvault` CLI in a subprocess against this world's policy."""
        full_env = dict(os.environ, PGVAULT_POLICY=str(self.workdir / "policy.yaml"), PYTHONPATH=str(ROOT))
        if env:
            full_env.update(env)
        cp = subprocess.run([sys.executable, "-m", "pgvault", *args], capture_output=True, text=True,
                            env=full_env, input=input, timeout=900)
        if check and cp.returncode != 0:
            raise AssertionError(f"pgvault {' '.join(args)} exited {cp.returncode}\n"
                                 f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
        return cp


def archiving_world(workdir: Path, moto) -> World:
    """A World whose instance (created, not started) archives through `pgvault wal-push` with
    the policy at workdir/policy.yaml, with site a (local) and eu (S3, eu-west-1)."""
    policy = workdir / "policy.yaml"
    inst = sandbox.new_instance(workdir, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy) + " wal-push %p"})
    w = World(workdir, inst, moto)
    w.local_site("a")
    w.s3_site("eu", "eu-west-1")
    return w


def base_world(workdir: Path, moto, *, extra_sites=(), **job) -> World:
    """An archiving_world, started, whose policy has a `base` job (method barman) to site a, eu
    and ``extra_sites`` (S3 sites named and regioned as given: (name, region)), WAL to a and eu."""
    w = archiving_world(workdir, moto)
    for name, region in extra_sites:
        w.s3_site(name, region)
    w.state = sandbox.owned_dir(workdir / "state")
    w.jobs["base"] = {"method": "barman", "sites": ["a", "eu", *(n for n, _r in extra_sites)], **job}
    w.policy(wal={"sites": ["a", "eu"], "retry_interval": "1s"}, state_dir=str(w.state))
    w.pg.start()
    return w


def db_now(inst) -> str:
    """The server's clock, UTC, as a recovery target (`restore --to-time`) takes it."""
    return inst.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')").strip()


@pytest.fixture
def world(workdir, pg):
    return World(workdir, pg)


@pytest.fixture
def s3world(workdir, pg, moto):
    return World(workdir, pg, moto)


class HAWorld(World):
    """A real Patroni cluster (etcd + 3 nodes, see pgvault.sandbox.ha) whose nodes archive
    through `pgvault wal-push`, each node with its own policy file (policy-n1.yaml, ...) as
    each host of a real cluster has its own: same sites and jobs, its own Patroni REST URL and
    state directory. Sites: a (local) and eu (S3, eu-west-1)."""

    def __init__(self, workdir: Path, moto, n: int = 3, **cluster_kw):
        from pgvault.sandbox.ha import HACluster

        super().__init__(workdir, None, moto)
        self.ha = HACluster(workdir / "ha", n, policies={f"n{i}": workdir / f"policy-n{i}.yaml"
                                                           for i in range(1, n + 1)}, **cluster_kw)
        (workdir / "ha").mkdir(exist_ok=True)
        os.chmod(workdir / "ha", 0o755)
        self.local_site("a")
        self.s3_site("eu", "eu-west-1")
        self.wal = {"sites": ["a", "eu"]}

    def policy_doc(self, node: str) -> dict:
        n = self.ha.nodes[node]
        doc = {"version": 1,
               "cluster": {"name": self.cluster_name, "conninfo": self.ha.conninfo(),
                           "pgdata": str(n.pgdata), "patroni": {"url": n.rest}},
               "sites": self.sites, "wal": self.wal, "jobs": self.jobs,
               "state_dir": str(sandbox.owned_dir(self.workdir / f"state-{node}", 0o755))}
        doc.update(self.extra)
        return doc

    def write_policies(self) -> None:
        for node in self.ha.nodes:
            path = self.workdir / f"policy-{node}.yaml"
            path.write_text(yaml.safe_dump(self.policy_doc(node), sort_keys=False))
            os.chmod(path, 0o644)

    def policy(self, **overrides) -> Path:  # the World API: node n1's policy
        self.write_policies()
        return self.workdir / "policy-n1.yaml"

    def cli(self, *args, node: str = "n1", check: bool = True, env: dict | None = None, input: str | None = None):
        env = dict(env or {}, PGVAULT_POLICY=str(self.workdir / f"policy-{node}.yaml"))
        return super().cli(*args, check=check, env=env, input=input)

    def start(self) -> "HAWorld":
        self.write_policies()
        self.ha.start()
        return self

    def stop(self) -> None:
        self.ha.stop()


def ha_world(moto, **cluster_kw):
    """Context manager: an HAWorld in its own directory, torn down (processes, then files) on
    exit, also when the test fails. For module-scoped fixtures."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        d = sandbox.workdir("pgvault-ha-")
        w = HAWorld(d, moto, **cluster_kw)
        try:
            yield w
        finally:
            w.stop()
            shutil.rmtree(d, ignore_errors=True)
    return cm()
