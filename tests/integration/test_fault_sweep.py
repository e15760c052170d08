"""The fault sweep: one injected storage failure at every call position, in turn, of the backup,
wal-push, expire and restore paths (the way the most trusted tools test their storage layer).

For each position the operation must either succeed or fail loudly (a PgvaultError, never an
internal error), and whatever it leaves must hold:
- everything a site lists verifies (a half-written backup is never listed);
- what was reported done is really there (a backup committed at a site, a WAL file archived);
- a clean re-run afterwards converges to the state a run without faults reaches.

Real parts: PostgreSQL and pg_dump, the local and S3 (moto_server) drivers; the fault is a
FaultySite (pgvault.sites.wrappers) around the real driver, wrapped in by `sites.wrapping`, so
the operations run in this process (their sites are opened here)."""
from __future__ import annotations

import hashlib
import shutil
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from pgvault import sandbox
from pgvault.backup import run_backup
from pgvault.catalog.catalog import Catalog
from pgvault.errors import PgvaultError
from pgvault.expire import expire_sites
from pgvault.policy.load import load_policy
from pgvault.restore.logical import restore_database
from pgvault.sites import open_site, wrapping
from pgvault.sites.wrappers import FaultySite
from pgvault.wal import names
from pgvault.wal.fetch import fetch
from pgvault.wal.push import Archiver

CLUSTER = "main"


class Position:
    """Counts the storage calls made to one site (over every driver opened for it in this
    process) and fails the ``fail_at``-th; ``None`` only counts."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.n, self.lock = fail_at, 0, threading.Lock()
        self.failed: str | None = None

    def __call__(self, call) -> bool:
        with self.lock:
            self.n += 1
            if self.n == self.fail_at:
                self.failed = f"{call.op} {call.key}"
                return True
            return False


@contextmanager
def faulty(site: str, position: Position):
    with wrapping(site, lambda driver: FaultySite(driver, fail_on=position)):
        yield


def write_policy(workdir: Path, inst, sites: dict, **extra) -> Path:
    doc = {"version": 1, "cluster": {"name": CLUSTER, "conninfo": inst.conninfo(), "pgdata": str(inst.pgdata)},
           "sites": sites, "jobs": {"nightly": {"method": "logical", "databases": ["app"], "globals": False,
                                                "sites": list(sites), "retain": {"count": 2}}}}
    doc.update(extra)
    path = workdir / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def catalog(policy, site: str) -> Catalog:
    return Catalog(open_site(site, policy.sites[site]), CLUSTER)


def listed_and_verified(policy, site: str) -> set[str]:
    """The backups a site lists; each of them must verify."""
    cat = catalog(policy, site)
    ids = set(cat.backup_ids())
    report = cat.verify(sorted(ids))
    assert report.problems == [], f"site {site} lists a backup that does not verify: {report.problems}"
    return ids


def rows(inst, db: str) -> str:
    return inst.psql("SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x)) FROM t", dbname=db).strip()


@pytest.fixture(scope="module")
def app():
    """One source cluster for the backup, expire and restore sweeps (an initdb each cost more
    than some sweeps): they only read database app; each restores into names of its own."""
    d = sandbox.workdir("pgvault-sweep-")
    inst = sandbox.new_instance(d, "pg")
    inst.psql("CREATE DATABASE app")
    inst.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 5000)", dbname="app")
    yield inst
    inst.stop("immediate")
    shutil.rmtree(d, ignore_errors=True)


def test_backup_with_one_failed_storage_call_at_every_position(workdir, app, moto):
    bucket = sandbox_bucket(moto)
    sites = {"a": {"type": "local", "path": str(sandbox.owned_dir(workdir / "site-a"))},
             "b": {"type": "s3", "bucket": bucket, "region": "eu-west-1", "prefix": "sweep",
                   "endpoint_url": moto.url}}
    policy = load_policy(write_policy(workdir, app, sites))
    swept = 0
    for site in ("a", "b"):
        clean = Position()
        with faulty(site, clean):
            assert not run_backup(policy, "nightly").partial
        assert clean.n > 5
        # What the sites list (each verified) after one position is what the next starts from:
        # nothing runs in between, so it is verified once, not twice.
        after = {s: listed_and_verified(policy, s) for s in sites}
        for k in range(1, clean.n + 1):
            pos = Position(k)
            before = after
            reported: set[str] = set()
            with faulty(site, pos):
                try:
                    r = run_backup(policy, "nightly")
                    reported = set(r.sites)
                    assert set(r.failed_sites) <= {site}, r.failed_sites
                    bid = r.backup_id
                except PgvaultError:
                    bid = None  # failed loudly: fine, as long as what is left holds
            swept += pos.failed is not None
            after = {s: listed_and_verified(policy, s) for s in sites}
            for s in sites:
                new = after[s] - before[s]
                assert new <= ({bid} if bid else set()), f"fault at {site} call {k} ({pos.failed}): {s} lists {new}"
            for s in reported:  # reported committed there: it is there
                assert bid in after[s], f"fault at {site} call {k} ({pos.failed}): reported at {s}, not listed"
    assert swept > 10
    # A clean run converges: a backup at both sites that restores the rows.
    r = run_backup(policy, "nightly")
    assert not r.partial and set(r.sites) == {"a", "b"}
    restore_database(policy, r.backup_id, "app", app.conninfo(), new_name="restored")
    assert rows(app, "restored") == rows(app, "app")


def sandbox_bucket(moto) -> str:
    from tests.conftest import bucket_name

    bucket = bucket_name()
    moto.create_bucket(bucket, "eu-west-1")
    return bucket


@pytest.fixture
def segments(workdir):
    """Three real WAL segments of a real cluster, copied out by its archive_command."""
    out = sandbox.owned_dir(workdir / "collected")
    inst = sandbox.new_instance(workdir, "walsrc", start=False,
                                settings={"archive_mode": "on", "archive_command": f"cp %p {out}/%f"})
    inst.start()
    try:
        for _ in range(3):
            inst.psql("CREATE TABLE IF NOT EXISTS w (x int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()")
        sandbox.wait_until(lambda: len([f for f in out.iterdir() if names.is_wal_name(f.name)]) >= 3, 60,
                           "three archived segments")
    finally:
        inst.stop("fast")
    return sorted(f for f in out.iterdir() if names.is_wal_name(f.name))[:3]


def test_wal_push_with_one_failed_storage_call_at_every_position(workdir, segments, moto):
    seg = segments[0]
    original = hashlib.sha256(seg.read_bytes()).hexdigest()
    bucket = sandbox_bucket(moto)

    def policy_for(run: str):
        """Fresh sites (and spool) per run, so each run archives the file anew."""
        root = sandbox.owned_dir(workdir / run)
        sites = {"a": {"type": "local", "path": str(sandbox.owned_dir(root / "site-a"))},
                 "b": {"type": "s3", "bucket": bucket, "region": "eu-west-1", "prefix": run, "endpoint_url": moto.url}}
        path = write_policy(root, _NoInstance(), sites, state_dir=str(root / "state"),
                            wal={"sites": ["a", "b"], "retry_interval": "0s", "batch": 1})
        return load_policy(path)

    def archived_everywhere(policy) -> bool:
        for s in ("a", "b"):
            dest = workdir / "fetched"
            fetch(policy, seg.name, dest, from_site=s)
            if hashlib.sha256(dest.read_bytes()).hexdigest() != original:
                return False
        return True

    swept = 0
    for site in ("a", "b"):
        clean = Position()
        policy = policy_for(f"clean-{site}")
        with faulty(site, clean):
            assert Archiver(policy).push(seg, batch=1).requested.error is None
        assert archived_everywhere(policy)
        for k in range(1, clean.n + 1):
            pos = Position(k)
            policy = policy_for(f"{site}-{k}")
            with faulty(site, pos):
                item = Archiver(policy).push(seg, batch=1).requested
            swept += pos.failed is not None
            if item.error is None:  # reported archived: every site has the file, intact
                assert archived_everywhere(policy), f"fault at {site} call {k} ({pos.failed}): reported archived"
            else:
                assert isinstance(item.error, PgvaultError)
            # A clean re-run (PostgreSQL retries the same file) converges.
            assert Archiver(policy).push(seg, batch=1).requested.error is None
            assert archived_everywhere(policy)
    assert swept > 5


class _NoInstance:
    """The WAL sweep needs no running server: the segment header names the cluster."""

    pgdata = "/nonexistent"

    def conninfo(self) -> str:
        return "host=/nonexistent dbname=postgres"


def test_expire_with_one_failed_storage_call_at_every_position(workdir, app):
    sites = {s: {"type": "local", "path": str(sandbox.owned_dir(workdir / f"site-{s}"))} for s in ("a", "b")}
    policy = load_policy(write_policy(workdir, app, sites))
    made = [run_backup(policy, "nightly", now=datetime(2026, 11, 1 + i, 2, tzinfo=timezone.utc)).backup_id
            for i in range(4)]
    pristine = workdir / "pristine"
    for s in sites:
        shutil.copytree(workdir / f"site-{s}", pristine / s, symlinks=True)

    def reset():
        for s in sites:
            shutil.rmtree(workdir / f"site-{s}")
            shutil.copytree(pristine / s, workdir / f"site-{s}", symlinks=True)

    now = datetime(2026, 11, 10, tzinfo=timezone.utc)
    expire_sites(policy, now=now)
    kept = {s: listed_and_verified(policy, s) for s in sites}
    assert kept["a"] == kept["b"] == set(made[-2:])          # retain count 2
    swept = 0
    for site in sites:
        reset()
        clean = Position()
        with faulty(site, clean):
            expire_sites(policy, now=now)
        for k in range(1, clean.n + 1):
            reset()
            pos = Position(k)
            with faulty(site, pos):
                try:
                    expire_sites(policy, now=now)
                except PgvaultError:
                    pass
            swept += pos.failed is not None
            for s in sites:  # never the kept ones, and nothing listed that does not verify
                assert kept[s] <= listed_and_verified(policy, s), f"fault at {site} call {k} ({pos.failed})"
            expire_sites(policy, now=now)
            assert {s: listed_and_verified(policy, s) for s in sites} == kept, f"no convergence after {site} call {k}"
    assert swept > 5


def test_restore_with_one_failed_storage_call_at_every_position(workdir, app):
    sites = {s: {"type": "local", "path": str(sandbox.owned_dir(workdir / f"site-{s}"))} for s in ("a", "b")}
    policy = load_policy(write_policy(workdir, app, sites))
    bid = run_backup(policy, "nightly").backup_id
    expected = rows(app, "app")
    clean = Position()
    with faulty("a", clean):
        restore_database(policy, bid, "app", app.conninfo(), new_name="clean", from_site="a")
    assert rows(app, "clean") == expected and clean.n > 3
    outcomes = {"restored": 0, "failed": 0}
    for k in range(1, clean.n + 1):
        pos = Position(k)
        target = f"r{k}"
        with faulty("a", pos):
            try:
                restore_database(policy, bid, "app", app.conninfo(), new_name=target, from_site="a")
            except PgvaultError:
                outcomes["failed"] += 1
                continue
        outcomes["restored"] += 1
        assert rows(app, target) == expected, f"fault at a call {k} ({pos.failed}): restored wrong rows"
        app.psql(f"DROP DATABASE {target}")
    assert sum(outcomes.values()) == clean.n
    # A copy that reads back damaged at the first site: the restore comes from the second, intact.
    with wrapping("a", lambda d: FaultySite(d, corrupt_reads=lambda call: True)):
        restore_database(policy, bid, "app", app.conninfo(), new_name="from_b", from_site="a")
    assert rows(app, "from_b") == expected


def test_the_sweep_counts_and_fails_the_right_call():
    pos = Position(2)
    calls = [type("C", (), {"op": op, "key": "k"})() for op in ("list", "get", "head")]
    assert [pos(c) for c in calls] == [False, True, False] and pos.n == 3 and pos.failed == "get k"
