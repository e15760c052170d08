"""The lab's world: one PostgreSQL cluster (a primary and a streaming replica), a local site on
a small size-limited file system, two S3 sites in two regions of one moto_server, each behind
its own proxy (pgvault.sandbox.proxy), and a policy with logical, base and WAL jobs.

Everything runs as processes on this host (sockets and 127.0.0.1). ``World.teardown()`` stops
every process the lab started and removes its files; it is registered with atexit and runs
from the signal handler that ``tidy()`` installs, so a failed or interrupted run leaves
nothing behind."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from ... import pg, proc, sandbox
from ..proxy import Proxy

ROOT = Path(__file__).resolve().parents[3]   # the checkout (PYTHONPATH for the pgvault it runs)
LOCAL_FS_SIZE = "400M"   # room for two or three bases (Barman keeps WAL uncompressed), not for many
SANDBOX_ENV = "PGVAULT_SANDBOX"              # marks every process the lab starts (see cli/wal.py)
LOSE_WAL_ENV = "PGVAULT_TEST_LOSE_WAL"       # test-only: the broken wal-push (docs/lab.md)
REGIONS = {"eu": "eu-west-1", "us": "us-east-1"}


@dataclass
class Ran:
    """One pgvault command the lab ran: what it was, how it ended, how long it took."""

    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float

    def shown(self) -> str:
        return "pgvault " + proc.quote(self.argv)

    def tail(self, n: int = 600) -> str:
        return (self.out + self.err).strip()[-n:]


@dataclass
class World:
    base: Path
    say: callable = print
    base_sites: tuple = ("local", "eu")   # sites of the base job; --quick keeps eu alone (lab/run.py)
    primary: pg.Instance | None = None
    replica: pg.Instance | None = None
    moto: sandbox.Moto | None = None
    proxies: dict = field(default_factory=dict)
    buckets: dict = field(default_factory=dict)
    policy_file: Path | None = None
    local_fs: Path | None = None
    local_site: Path | None = None
    state_dir: Path | None = None
    commands: list = field(default_factory=list)
    on_teardown: list = field(default_factory=list)   # parts built later (the HA cluster) stop first
    first_segment: str = ""                  # the first WAL segment the lab archived
    first_base_time: datetime | None = None  # the first base backup's consistency point
    switched_at: datetime | None = None      # WAL written before this is archived (checks.archived)
    _torn_down: bool = False

    # -- building
    def build(self) -> "World":
        t0 = time.monotonic()
        self._local_fs()
        self.moto = sandbox.Moto().start()
        for short, region in REGIONS.items():
            self.buckets[short] = f"lab-{short}-{uuid.uuid4().hex[:8]}"
            self.moto.create_bucket(self.buckets[short], region)
            self.proxies[short] = Proxy(("127.0.0.1", self.moto.port), name=f"proxy-{short}").start()
        self.state_dir = sandbox.owned_dir(self.base / "state")
        self.policy_file = self.base / "policy.yaml"
        self.primary = sandbox.new_instance(self.base, "primary", start=False, settings={
            "archive_mode": "on", "archive_command": self.archive_command(), "archive_timeout": "10s",
            "track_commit_timestamp": "on", "max_connections": 25, "superuser_reserved_connections": 3,
            "wal_keep_size": "256MB"})
        self.write_policy()
        self.primary.start()
        self._replica()
        self.say(f"lab world in {self.base} ({time.monotonic() - t0:.1f}s): primary :{self.primary.port}, "
                 f"replica :{self.replica.port}, site local on a {LOCAL_FS_SIZE} file system, sites eu/us "
                 f"behind proxies :{self.proxies['eu'].port}/:{self.proxies['us'].port} to moto :{self.moto.port}")
        return self

    def archive_command(self, lose_wal: bool = False) -> str:
        cmd = sandbox.pgvault_command(self.policy_file) + " wal-push %p"
        if lose_wal:
            # Only this archive_command carries the switch: the lab sets it for a while, then
            # puts the honest one back (ALTER SYSTEM + reload), as a faulty release would behave.
            cmd = f"{SANDBOX_ENV}=1 {LOSE_WAL_ENV}=1 " + cmd
        return cmd

    def _local_fs(self) -> None:
        img = self.base / "local-fs.img"
        self.local_fs = self.base / "local-fs"
        self.local_fs.mkdir()
        proc.run(["truncate", "-s", LOCAL_FS_SIZE, str(img)])
        proc.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)])
        proc.run(["mount", "-o", "loop", str(img), str(self.local_fs)])
        os.chmod(self.local_fs, 0o755)
        self.local_site = sandbox.owned_dir(self.local_fs / "site")

    def _replica(self) -> None:
        path = sandbox.owned_dir(self.base / "replica")
        sandbox.owned_dir(self.base / "replica-sock", 0o755)
        proc.run([str(Path(self.primary.bindir) / "pg_basebackup"), "-D", str(path), "-R", "-X", "stream",
                  "-c", "fast", "-d", self.primary.conninfo()], user=pg.run_user())
        self.replica = pg.Instance(path, pg.free_port(), socket_dir=self.base / "replica-sock")
        # The replica archives only if promoted (archive_mode = on, not always).
        self.replica.configure(archive_mode="on", archive_command=self.archive_command(), hot_standby="on")
        self.replica.start()

    def write_policy(self) -> None:
        sites = {"local": {"type": "local", "path": str(self.local_site)}}
        for short, region in REGIONS.items():
            # Short timeouts: a partitioned region must cost seconds, not the defaults' minutes.
            sites[short] = {"type": "s3", "bucket": self.buckets[short], "region": region, "prefix": "lab",
                            "endpoint_url": self.proxies[short].url, "connect_timeout": 2, "read_timeout": 6,
                            "max_attempts": 1}
        doc = {
            "version": 1,
            "cluster": {"name": "lab", "conninfo": self.primary.conninfo(), "pgdata": str(self.primary.pgdata)},
            "sites": sites,
            "wal": {"sites": ["local", "eu", "us"], "compression": "zstd", "retry_interval": "2s",
                    "slow_site_grace": "3s", "keep_going": "2s"},
            "jobs": {
                "dump": {"method": "logical", "sites": ["local", "eu", "us"], "retain": {"count": 50}},
                "base": {"method": "barman", "sites": list(self.base_sites), "compression": "lz4",
                         "retain": {"count": 50}},
            },
            "objectives": {"rpo": "1m", "rto": "5m"},
            "state_dir": str(self.state_dir),
        }
        self.policy_file.write_text("# written by pgvault lab\n" + yaml.safe_dump(doc, sort_keys=False))
        os.chmod(self.policy_file, 0o644)

    def policy_doc(self) -> dict:
        return yaml.safe_load(self.policy_file.read_text())

    def rpo_budget(self) -> float:
        """objectives.rpo of the policy, in seconds."""
        from ...policy.durations import parse_duration

        return parse_duration(self.policy_doc()["objectives"]["rpo"]).total_seconds()

    def sites(self) -> list[str]:
        return list(self.policy_doc()["sites"])

    def wal_sites(self) -> list[str]:
        return list(self.policy_doc()["wal"]["sites"])

    # -- running pgvault as an operator would
    def env(self, policy_file: Path | None = None) -> dict:
        env = dict(os.environ, PGVAULT_POLICY=str(policy_file or self.policy_file), PYTHONPATH=str(ROOT),
                   **{SANDBOX_ENV: "1"}, **sandbox.S3_ENV)
        env.pop(LOSE_WAL_ENV, None)   # the switch reaches wal-push only through archive_command
        return env

    def pgvault(self, *args: str, policy_file: Path | None = None, timeout: float = 300) -> Ran:
        t0 = time.monotonic()
        argv = [str(a) for a in args]
        try:
            cp = subprocess.run([sys.executable, "-m", "pgvault", *argv], capture_output=True, text=True,
                                env=self.env(policy_file), timeout=timeout, start_new_session=True)
            ran = Ran(argv, cp.returncode, cp.stdout, cp.stderr, time.monotonic() - t0)
        except subprocess.TimeoutExpired as exc:
            ran = Ran(argv, -1, _text(exc.stdout), _text(exc.stderr) + f"\n(timed out after {timeout}s)",
                      time.monotonic() - t0)
        self.commands.append({"command": ran.shown(), "exit": ran.code, "seconds": round(ran.seconds, 2)})
        return ran

    def json_of(self, *args: str, **kw) -> tuple[Ran, dict | None]:
        ran = self.pgvault(*args, "--json", **kw)
        try:
            return ran, json.loads(ran.out)
        except ValueError:
            return ran, None

    def sql(self, sql: str, dbname: str = "lab") -> str:
        return self.primary.psql(sql, dbname=dbname).strip()

    def switch_wal(self) -> str:
        return self.sql("SELECT pg_walfile_name(pg_switch_wal())", "postgres")

    def last_archived(self) -> str:
        return self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", "postgres")

    def site_down_marked(self, site: str) -> bool:
        """wal-push has noticed the site failing (its circuit breaker in the spool)."""
        return (self.state_dir / "wal-spool" / "sites" / f"{site}.json").exists()

    def backlog(self) -> dict[str, int]:
        """Per site, the WAL files the spool still owes it."""
        pending = self.state_dir / "wal-spool" / "pending"
        return {d.name: n for d in (pending.iterdir() if pending.exists() else []) if (n := len(list(d.iterdir())))}

    # -- tidy
    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for stop in reversed(self.on_teardown):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - the rest must still be torn down
                self.say(f"teardown: {exc!r}")
        for pidfile in list(self.base.rglob("postmaster.pid")):
            pg.Instance(pidfile.parent, 0).stop("immediate")
        for p in self.proxies.values():
            p.stop()
        if self.moto:
            self.moto.stop()
        if self.local_fs and os.path.ismount(self.local_fs):
            proc.wait_until(lambda: proc.run(["umount", str(self.local_fs)], check=False).returncode == 0, 30,
                            f"umount {self.local_fs}", interval=0.2)
        shutil.rmtree(self.base, ignore_errors=True)


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


def tidy(world: World) -> None:
    """Tear ``world`` down at exit and on SIGTERM/SIGHUP (Ctrl-C arrives as KeyboardInterrupt
    and unwinds through the caller's finally)."""
    atexit.register(world.teardown)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
