"""Where pgvault keeps its local state, who owns it, and the per-job lock.

Low in the layers (wal-push's shipper and the tick both lock through it); imports nothing heavy.

Which user runs what (README "Users"): the state directory and the WAL spool belong to the
PostgreSQL user (``postgres``), because ``archive_command`` runs as that user and must always be
able to write them. Everything else may run as root (tick, backups, restores need it for
zfs/btrfs/ownership). So a root process that creates one of these directories gives it to
``postgres``; files and directories root writes inside take their directory's owner (fsutil).
`pgvault check` reports a state dir or spool postgres cannot write. Where the directory cannot be made usable by the process
that needs it, ``ensure_dir`` raises StateDirUnusable (exit 3) naming the path, the owner it
needs and the command that fixes it — never a PermissionError traceback (exit 70).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import EXIT_ENVIRONMENT, PgvaultError

ENV = "PGVAULT_STATE_DIR"
DEFAULT_BASE = "/var/lib/pgvault"
OWNER = "postgres"   # the PostgreSQL run user (pgvault.pg.RUN_AS): archive_command runs as it


class StateDirUnusable(PgvaultError):
    """A state directory or spool this process cannot create or write (exit 3)."""

    exit_code = EXIT_ENVIRONMENT


def owner() -> tuple[int, int] | None:
    """(uid, gid) of the PostgreSQL user, or None when this host has no such user."""
    import pwd

    try:
        pw = pwd.getpwnam(OWNER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _me() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def fix_command(path: Path) -> str:
    """The root command that makes ``path`` the PostgreSQL user's, creating it if needed."""
    return f"install -d -o {OWNER} -g {OWNER} -m 0700 {path} && chown -R {OWNER}: {path}"


def ensure_dir(path: str | os.PathLike, what: str = "state directory") -> Path:
    """Make ``path`` a directory this process can write, owned by the PostgreSQL user.

    As root: create the missing components, each given to the PostgreSQL user (an existing
    directory is left as it is: `pgvault check` reports one postgres cannot write). As another
    user: create what it may; if that is not possible, or the directory is not writable, raise
    StateDirUnusable with the fix.
    Costs one access() call when all is well (it is on wal-push's path)."""
    path = Path(path)
    if os.access(path, os.W_OK | os.X_OK):
        return path
    missing = []
    p = path
    try:
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
    except OSError as exc:  # a parent we may not enter
        raise _unusable(path, what, f"cannot look into {p.parent}: {exc.strerror}") from None
    ids = owner() if os.geteuid() == 0 else None
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _unusable(path, what, f"cannot create {d}: {exc.strerror}") from None
        if ids:
            os.lchown(d, *ids)
    if not path.is_dir():
        raise _unusable(path, what, "it exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        st = path.stat()
        raise _unusable(path, what, f"it is not writable by {_me()} (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o})")
    return path


def problem_for_owner(path: str | os.PathLike) -> tuple[bool, str] | None:
    """Why the PostgreSQL user could not use ``path`` as a state dir or spool, or None when it
    can: (exists, reason). A missing directory is fine when postgres may create it (or a root
    run of pgvault will: it gives what it creates to postgres). Read-only: changes nothing."""
    import pwd

    try:
        pw = pwd.getpwnam(OWNER)
    except KeyError:
        return None
    import grp

    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if OWNER in g.gr_mem}

    def can(p: Path, bits: int) -> bool:  # bits: 0o3 = write+search, 0o1 = search
        st = p.stat()
        if pw.pw_uid == 0:
            return True
        if st.st_uid == pw.pw_uid:
            return (st.st_mode >> 6) & bits == bits
        if st.st_gid in groups:
            return (st.st_mode >> 3) & bits == bits
        return st.st_mode & bits == bits

    path = Path(path)
    try:
        exists = path.exists()
        target = path if exists else next(p for p in path.parents if p.exists())
        for anc in reversed([target, *target.parents]):
            if not can(anc, 0o1):
                return exists, f"{OWNER} cannot enter {anc}"
        if not target.is_dir():
            return exists, f"{target} is not a directory"
        if not can(target, 0o3):
            st = target.stat()
            if exists:
                return True, f"{OWNER} cannot write it (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o})"
            return False, f"it does not exist yet and {OWNER} cannot create it in {target}"
    except OSError as exc:
        return True, f"cannot inspect it: {exc.strerror}"
    return None


def _unusable(path: Path, what: str, why: str) -> StateDirUnusable:
    return StateDirUnusable(
        f"{what} {path} is not usable by {_me()}: {why}; it must be writable by the PostgreSQL user "
        f"({OWNER}), which runs archive_command",
        f"as root: {fix_command(path)}\n"
        f"(or set state_dir / wal.spool_dir in the policy, or ${ENV}, to a directory {OWNER} owns)")


def state_dir(configured: str | None, cluster: str) -> Path:
    """$PGVAULT_STATE_DIR, else the policy's state_dir, else /var/lib/pgvault/<cluster>.

    >>> str(state_dir(None, "main")) if "PGVAULT_STATE_DIR" not in os.environ else "/var/lib/pgvault/main"
    '/var/lib/pgvault/main'
    """
    return Path(os.environ.get(ENV) or configured or f"{DEFAULT_BASE}/{cluster}")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat()


class JobLock:
    """An exclusive, non-blocking flock() on a per-job file.

    The kernel releases a flock when its holder dies, so a killed tick never leaves a lock
    that blocks the next one. The file also holds the holder's pid and start time: an empty
    file means the last holder released it cleanly; a non-empty file found *after* acquiring
    means the previous holder died holding it (``stale``), which is reported."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.stale: dict | None = None

    def acquire(self, now: datetime, wait: float = 0.0) -> bool:
        """Take the lock; with ``wait`` > 0, wait up to that many seconds for its holder to let go."""
        from .fsutil import give_dir_owner

        ensure_dir(self.path.parent)  # locks live in the state dir or the spool: postgres's
        # O_CLOEXEC (Python's default) keeps the lock out of child processes such as pg_dump,
        # so an orphaned child never holds a job's lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        give_dir_owner(fd, self.path.parent)  # root's lock file stays openable by postgres
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                # flock has no timeout of its own; poll, backing off to 0.5 s
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.5)
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            try:
                self.stale = json.loads(previous)
            except ValueError:
                self.stale = {"raw": previous.decode(errors="replace")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started_at": _iso(now)}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return True

    def held(self) -> dict | None:
        """Who holds the lock now ({} if unknown), or None when it is free. Does not disturb the
        file, so a dead holder's note survives for the next real acquire to report."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder() or {}
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def holder(self) -> dict | None:
        """What the lock file says about its (last) holder, read without taking the lock."""
        try:
            return json.loads(self.path.read_bytes() or b"null")
        except (FileNotFoundError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        # Empty the file before unlocking: an empty lock file is the mark of a clean release.
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
