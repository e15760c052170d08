"""Real file systems for tests, the demo and benchmarks: a zfs-fuse pool on an image file and a
loop-mounted btrfs image, each with a unique name, always torn down.

zfs-fuse is one daemon per host (the ``zfs``/``zpool`` commands talk to it over a fixed socket),
so several test processes share it: each holds a shared flock on LOCK while it uses the daemon,
and only a process that can take the lock exclusively, and that (or a sibling) started the
daemon, ends it."""
from __future__ import annotations

import fcntl
import os
import signal
import uuid
from pathlib import Path

from .. import pg, proc
from . import owned_dir, wait_until

LOCK = Path(os.environ.get("PGVAULT_ZFS_LOCK", "/run/pgvault-zfs-fuse.lock"))
PIDFILE = Path(os.environ.get("PGVAULT_ZFS_PIDFILE", "/run/pgvault-zfs-fuse.pid"))


def _zfs_answers() -> bool:
    return proc.run(["zpool", "list"], check=False).returncode == 0


class ZfsDaemon:
    """The zfs-fuse daemon, started on first use and ended by the last user that started it."""

    # flock belongs to an open file description: a second open in this process would wait for
    # our own shared lock. So one process holds the lock once, counting its users.
    _held = {"fd": None, "users": 0}

    def __init__(self):
        self._fd = None

    def start(self) -> "ZfsDaemon":
        held = ZfsDaemon._held
        if held["fd"] is not None:
            held["users"] += 1
            self._fd = held["fd"]
            return self
        self._start()
        held["fd"], held["users"] = self._fd, 1
        return self

    def stop(self) -> None:
        held = ZfsDaemon._held
        if self._fd is None:
            return
        held["users"] -= 1
        if held["users"] > 0:
            self._fd = None
            return
        held["fd"] = None
        self._stop()

    def _start(self) -> None:
        self._fd = open(LOCK, "a+")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if not _zfs_answers():
                PIDFILE.unlink(missing_ok=True)
                proc.run(["zfs-fuse", "--pidfile", str(PIDFILE)])
                wait_until(_zfs_answers, 60, "the zfs-fuse daemon to answer", interval=0.1)
        finally:
            # Downgrade to shared: other processes may use the daemon while we do.
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def _stop(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # someone else still uses the daemon
        else:
            pools = proc.output(["zpool", "list", "-H", "-o", "name"], check=False).split()
            if not pools and PIDFILE.exists():
                self._end(int(PIDFILE.read_text().split()[0]))
                PIDFILE.unlink(missing_ok=True)
        finally:
            self._fd.close()
            self._fd = None

    @staticmethod
    def _end(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_until(gone, 60, f"zfs-fuse (pid {pid}) to exit", interval=0.1)


class ZfsPool:
    """A pool on an image file under ``base``, mounted at base/<pool>."""

    def __init__(self, base: Path, size: str = "512M", name: str | None = None):
        self.base = Path(base)
        self.name = name or f"pgv{uuid.uuid4().hex[:10]}"
        self.image = self.base / f"{self.name}.img"
        self.mountpoint = self.base / self.name
        self.size = size

    def create(self) -> "ZfsPool":
        proc.run(["truncate", "-s", self.size, str(self.image)])
        proc.run(["zpool", "create", "-m", str(self.mountpoint), self.name, str(self.image)])
        return self

    def dataset(self, rel: str, *, owner_postgres: bool = False) -> tuple[str, Path]:
        """Create <pool>/<rel>; return (name, mountpoint)."""
        name = f"{self.name}/{rel}"
        proc.run(["zfs", "create", "-p", name])
        mnt = Path(proc.output(["zfs", "list", "-H", "-o", "mountpoint", name]).strip())
        if owner_postgres:
            os.chmod(mnt, 0o755)
            pg.chown_to_run_user(mnt)
        return name, mnt

    def destroy(self) -> None:
        def gone() -> bool:
            if proc.run(["zpool", "list", self.name], check=False).returncode != 0:
                return True
            # Busy for a moment after a postmaster on it was stopped.
            return proc.run(["zpool", "destroy", "-f", self.name], check=False).returncode == 0
        wait_until(gone, 60, f"zpool destroy {self.name}", interval=0.3)
        self.image.unlink(missing_ok=True)


class BtrfsImage:
    """A btrfs file system on a loop-mounted image under ``base``."""

    def __init__(self, base: Path, size: str = "512M"):
        self.base = Path(base)
        tag = uuid.uuid4().hex[:10]
        self.image = self.base / f"btrfs-{tag}.img"
        self.mountpoint = self.base / f"btrfs-{tag}"

    def create(self, size: str = "512M") -> "BtrfsImage":
        proc.run(["truncate", "-s", size, str(self.image)])
        proc.run(["mkfs.btrfs", "-q", str(self.image)])
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        proc.run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])
        os.chmod(self.mountpoint, 0o755)
        return self

    def subvolume(self, rel: str, *, owner_postgres: bool = False) -> Path:
        path = self.mountpoint / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        proc.run(["btrfs", "subvolume", "create", str(path)])
        if owner_postgres:
            os.chmod(path, 0o755)
            pg.chown_to_run_user(path)
        return path

    def destroy(self) -> None:
        if os.path.ismount(self.mountpoint):
            # A just-stopped postmaster may hold the mount busy for a moment.
            wait_until(lambda: proc.run(["umount", str(self.mountpoint)], check=False).returncode == 0,
                       30, f"umount {self.mountpoint}", interval=0.2)
        try:
            self.mountpoint.rmdir()
        except OSError:
            pass
        self.image.unlink(missing_ok=True)


def instance_on(directory: Path, sockets: Path, *, settings: dict | None = None, start: bool = True) -> pg.Instance:
    """A fresh PG instance whose PGDATA is ``directory`` (on a dataset/subvolume); sockets
    stay outside the file system under test (FUSE mounts do not always carry Unix sockets)."""
    owned_dir(sockets, 0o755)
    inst = pg.Instance(directory, pg.free_port(), socket_dir=sockets)
    inst.initdb(extra_args=["--data-checksums"])
    conf = {"fsync": "off", "wal_level": "replica", "max_wal_senders": 4, "max_replication_slots": 4,
            "shared_buffers": "32MB", "log_min_messages": "warning", "unix_socket_permissions": "0777"}
    conf.update(settings or {})
    inst.configure(**conf)
    if start:
        inst.start()
    return inst
