"""A self-contained world on this host: PostgreSQL instances in temporary directories and an
S3 endpoint (moto_server) on 127.0.0.1. Used by `pgvault demo`, the tests and the benchmarks."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from .. import pg, proc
from ..proc import wait_until  # noqa: F401  (the harness's name for it)

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def use_this_checkout() -> None:
    """Make every pgvault that PostgreSQL runs from here on (archive_command, and the
    restore_command a restore writes) this checkout's, not the installed one: the harness runs
    checkouts other than the installed one. Children inherit it through $PGVAULT_COMMAND."""
    os.environ[proc.COMMAND_ENV] = proc.checkout_command()


def pgvault_command(policy_file=None) -> str:
    """The harness's archive_command prefix: this checkout's pgvault (see use_this_checkout)."""
    os.environ.setdefault(proc.COMMAND_ENV, proc.checkout_command())
    return proc.pgvault_command(policy_file)


def workdir(prefix: str = "pgvault-") -> Path:
    """A temporary directory the postgres user can traverse (pytest's tmp_path is 0700 root)."""
    base = Path(os.environ.get("PGVAULT_SANDBOX_BASE", tempfile.gettempdir()))
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(d, 0o755)
    return d


def owned_dir(path: Path, mode: int = 0o700) -> Path:
    """A directory owned by the PostgreSQL run user (so archive_command can write there)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    pg.chown_to_run_user(path)
    return path


class Moto:
    """moto_server on 127.0.0.1: a real S3 HTTP endpoint that subprocesses can reach."""

    def __init__(self, port: int | None = None):
        self.port = port or pg.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)

    def start(self) -> "Moto":
        os.environ.update({k: os.environ.get(k, v) for k, v in S3_ENV.items()})
        beside = Path(sys.executable).parent / "moto_server"  # the one installed with pgvault first
        if beside.exists():  # moto importable by this interpreter: conditional writes made atomic (moto_atomic.py)
            argv = [sys.executable, str(Path(__file__).with_name("moto_atomic.py"))]
        else:
            argv = [shutil.which("moto_server") or "moto_server"]
        self.proc = subprocess.Popen([*argv, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._up, 60, "moto_server to answer")
        return self

    def _up(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {Path(self.log.name).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
            return True
        except Exception:
            return False

    def client(self, region: str = "us-east-1"):
        import boto3

        return boto3.client("s3", region_name=region, endpoint_url=self.url)

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        kw = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        self.client(region).create_bucket(Bucket=name, **kw)

    def pause(self) -> None:
        """Simulate an outage that keeps the data (moto keeps everything in memory)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers: a site behind
    a partition (a firewall that drops replies, a hung load balancer). Its thread ends by
    itself after ``lifetime`` seconds, or at ``stop()``."""

    def __init__(self, lifetime: float = 300.0):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._held: list = []
        self._stop = threading.Event()
        self._deadline = lifetime
        self._thread = threading.Thread(target=self._run, name="black-hole", daemon=True)

    def start(self) -> "BlackHole":
        self._thread.start()
        return self

    def _run(self) -> None:
        import socket
        import time

        end = time.monotonic() + self._deadline
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.accepted += 1
            self._held.append(conn)  # held open, never read from or written to
        for c in self._held:
            c.close()
        self.sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def new_instance(base: Path, name: str = "pg", *, port: int | None = None, settings: dict | None = None,
                 start: bool = True) -> pg.Instance:
    """initdb a fresh PostgreSQL instance under ``base`` (owned by postgres), configure, start."""
    owned_dir(base / f"{name}-sock", 0o755)
    inst = pg.Instance(base / name, port or pg.free_port(), socket_dir=base / f"{name}-sock")
    inst.initdb(extra_args=["--data-checksums"])
    conf = {"fsync": "off", "full_page_writes": "on", "max_wal_senders": 4, "wal_level": "replica",
            "max_replication_slots": 4, "shared_buffers": "64MB", "log_min_messages": "warning",
            "unix_socket_permissions": "0777"}
    conf.update(settings or {})
    inst.configure(**conf)
    if start:
        inst.start()
    return inst
