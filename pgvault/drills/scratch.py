"""Scratch instances for drills: a private directory, a free port, archiving off, and a
teardown that always runs and says whether it worked.

A drill never restores into anything it did not create: the scratch directory is new
(mkdtemp), the instance listens only on a socket inside it, and ``archive_mode = off`` keeps a
restored copy of production from ever pushing WAL into production's archive or a competing
timeline into the sites."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import pg

log = logging.getLogger("pgvault.drills.scratch")

ROOT_ENV = "PGVAULT_DRILL_DIR"

# Settings every scratch instance runs with. fsync off: a drill's instance is thrown away, and
# its durability is not what a drill proves.
SCRATCH_SETTINGS = {
    "archive_mode": "off",
    "archive_command": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "on",
    "shared_buffers": "64MB",
    "max_connections": 20,
    "log_min_messages": "warning",
    "unix_socket_permissions": "0777",
    "max_wal_senders": 0,
    "wal_level": "minimal",
    "max_replication_slots": 0,
}


def default_root() -> Path:
    """Where scratch directories go: $PGVAULT_DRILL_DIR, else <tmp>/pgvault-drills."""
    return Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / "pgvault-drills")


def slug(text: str) -> str:
    """A label safe to use in a directory name.
    >>> slug("nightly/ logical@a")
    'nightly-logical-a'
    """
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")[:40] or "drill"


@dataclass
class Teardown:
    ok: bool
    detail: str


class Scratch:
    """One drill's scratch area. Use as a context manager or call ``destroy()`` in ``finally``."""

    def __init__(self, label: str, *, root: str | os.PathLike | None = None, bindir: str | None = None):
        base = Path(root) if root else default_root()
        if not base.exists():
            base.mkdir(parents=True)
            # PostgreSQL runs as postgres and must traverse every parent of its data directory.
            # Only a directory we created is chmod'ed: never a user's (think --scratch-dir /tmp).
            os.chmod(base, 0o755)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{slug(label)}-", dir=base))
        os.chmod(self.dir, 0o755)
        self.socket_dir = self.dir / "sock"
        self.socket_dir.mkdir(mode=0o755)
        pg.chown_to_run_user(self.socket_dir)
        self.port = pg.free_port()
        self.bindir = bindir or pg.bin_dir()
        self.instance: pg.Instance | None = None
        self.cleanups: list[tuple[str, Callable[[], None]]] = []

    @property
    def pgdata(self) -> Path:
        return self.dir / "pgdata"

    def new_instance(self, pgdata: Path | None = None) -> pg.Instance:
        """The Instance that will run in this scratch area (on its own socket and port)."""
        self.instance = pg.Instance(pgdata or self.pgdata, self.port, socket_dir=self.socket_dir, bindir=self.bindir)
        return self.instance

    def fresh(self) -> pg.Instance:
        """initdb an empty instance (for logical restores), configure and start it."""
        inst = self.new_instance()
        inst.initdb(extra_args=["--data-checksums"])
        inst.configure(**SCRATCH_SETTINGS)
        inst.start()
        return inst

    def adopt_restored(self, pgdata: Path, **settings) -> pg.Instance:
        """Make a restored data directory safe to start here: no stale pid file, no copied
        replication slots (they would hold WAL and confuse monitoring), archiving off."""
        inst = self.new_instance(pgdata)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        slots = pgdata / "pg_replslot"
        if slots.is_dir():
            for child in slots.iterdir():
                shutil.rmtree(child, ignore_errors=True)
        conf = dict(SCRATCH_SETTINGS)
        # A physical copy keeps the source's WAL level; minimal would refuse to replay its WAL.
        conf.update({"wal_level": "replica", "max_wal_senders": 0})
        conf.update(settings)
        inst.configure(**conf)
        pg.chown_to_run_user(pgdata, recursive=True)
        return inst

    def on_teardown(self, what: str, fn: Callable[[], None]) -> None:
        """Register an extra cleanup (a zfs clone, a mount), run before the directory goes."""
        self.cleanups.append((what, fn))

    def destroy(self) -> Teardown:
        """Stop the instance (immediate), run cleanups, remove the directory; never raises."""
        problems = []
        inst = self.instance
        if inst is not None:
            try:
                inst.stop("immediate")
            except BaseException as exc:  # noqa: BLE001 - teardown must go on
                problems.append(f"pg_ctl stop: {getattr(exc, 'message', exc)}")
            pid = pg.running_postmaster(inst.pgdata)
            if pid:
                problems += _kill_postmaster(pid)
        for what, fn in reversed(self.cleanups):
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                problems.append(f"{what}: {getattr(exc, 'message', exc)}")
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            problems.append(f"{self.dir} could not be removed")
        if inst is not None and pg.running_postmaster(inst.pgdata):
            problems.append("a postmaster is still running")
        if problems:
            log.error("scratch %s teardown: %s", self.dir, "; ".join(problems))
            return Teardown(False, "; ".join(problems))
        return Teardown(True, f"stopped and removed {self.dir}")

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> bool:
        self.destroy()
        return False


def _kill_postmaster(pid: int) -> list[str]:
    """pg_ctl could not stop it: SIGQUIT (immediate shutdown), then SIGKILL."""
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return []
            time.sleep(0.1)
    return [f"postmaster {pid} survived SIGKILL"]


def wait_promoted(inst: pg.Instance, timeout: float = 3600.0) -> None:
    """Wait until a recovering instance has reached its target and accepts writes. Connections
    are refused while it replays (hot_standby off), so refusals are retried; a postmaster that
    died (a target the WAL cannot reach, a missing segment) is reported with its log."""
    from ..errors import DatabaseError

    deadline = time.monotonic() + timeout
    while True:
        try:
            with inst.connect() as conn:
                if not pg.scalar(conn, "SELECT pg_is_in_recovery()"):
                    return
        except DatabaseError:
            if not pg.running_postmaster(inst.pgdata):
                tail = inst.logfile.read_text(errors="replace")[-2000:] if inst.logfile.exists() else ""
                raise DatabaseError(f"the restored instance stopped during recovery:\n{tail.strip()}",
                                    "the WAL at this site may not reach the target; see the log above") from None
        if time.monotonic() > deadline:
            raise DatabaseError(f"recovery did not finish within {timeout:.0f}s", "raise the drill's rto or check the log")
        time.sleep(0.2)
