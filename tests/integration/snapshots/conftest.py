"""Fixtures for snapshot tests: a real zfs-fuse pool and a real loop-mounted btrfs, PostgreSQL
15 on them, pgbench load, and a World (tests/conftest.py) bound to that instance."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pgvault import sandbox
from pgvault.sandbox.fs import BtrfsImage, ZfsDaemon, ZfsPool, instance_on
from tests.conftest import World

PG_BIN = "/usr/lib/postgresql/15/bin"
RUN_AS = "postgres" if os.geteuid() == 0 else None


@pytest.fixture(scope="session")
def zfs_daemon():
    d = ZfsDaemon().start()
    yield d
    d.stop()


class Instances(list):
    """Data directories of servers a test started; stopped before their file system goes."""

    def stop_all(self):
        for pgdata in reversed(self):
            if (Path(pgdata) / "postmaster.pid").exists():
                subprocess.run([f"{PG_BIN}/pg_ctl", "stop", "-D", str(pgdata), "-m", "immediate", "-w"],
                               user=RUN_AS, capture_output=True)
        self.clear()


@pytest.fixture
def instances():
    found = Instances()
    yield found
    found.stop_all()


@pytest.fixture
def zpool(workdir, zfs_daemon, instances):
    pool = ZfsPool(workdir).create()
    yield pool
    instances.stop_all()
    pool.destroy()


@pytest.fixture
def btrfs_fs(workdir, instances):
    fs = BtrfsImage(workdir).create()
    yield fs
    instances.stop_all()
    fs.destroy()


def start_pg(workdir: Path, pgdata: Path, instances: Instances, waldir: Path | None = None):
    inst = instance_on(pgdata, workdir / "sock", start=False)
    instances.append(str(pgdata))
    if waldir is not None:
        # initdb put pg_wal inside PGDATA; move it to the other volume behind a symlink,
        # as `initdb --waldir` would.
        import shutil

        from pgvault import pg

        shutil.move(str(pgdata / "pg_wal"), str(waldir))
        pg.chown_to_run_user(waldir, recursive=True)  # a copy across file systems is root's
        os.symlink(waldir, pgdata / "pg_wal")
        os.lchown(pgdata / "pg_wal", *_pg_ids())
    inst.start()
    return inst


def _pg_ids():
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def pgbench_init(inst, scale: int = 1) -> None:
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(scale), inst.conninfo()], check=True,
                   capture_output=True)


class Load:
    """pgbench running in the background (TPC-B-like: every transaction moves the same delta
    through accounts, tellers, branches and history, so their sums agree in any consistent copy)."""

    def __init__(self, inst, seconds: int = 120, clients: int = 2):
        self.proc = subprocess.Popen([f"{PG_BIN}/pgbench", "-n", "-c", str(clients), "-T", str(seconds),
                                      inst.conninfo()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.inst = inst
        sandbox.wait_until(lambda: int(inst.psql("SELECT count(*) FROM pgbench_history")) > 50, 60,
                           "pgbench to commit transactions")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def invariants(conninfo: str) -> dict:
    from pgvault import pg

    conn = pg.connect(conninfo)
    try:
        row = pg.query(conn, """SELECT (SELECT count(*) FROM pgbench_accounts),
                                       (SELECT count(*) FROM pgbench_history),
                                       (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
                                       (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
                                       (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
                                       (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches)""")[0]
    finally:
        conn.close()
    return dict(zip(["accounts", "history", "abalance", "delta", "tbalance", "bbalance"], row))


def consistent(inv: dict) -> bool:
    return inv["abalance"] == inv["delta"] == inv["tbalance"] == inv["bbalance"]


@pytest.fixture
def snapworld(workdir):
    def make(inst, moto=None) -> World:
        return World(workdir, inst, moto)
    return make
