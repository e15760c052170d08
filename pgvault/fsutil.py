"""Durable local files, written once: atomic replace with fsync of the file and its directory.
Used by the local site driver, the WAL spool, job state and notification memory. Imports only
os and pathlib: it sits on the hot path of wal-push and tick."""
from __future__ import annotations

import os
from pathlib import Path

TMP_PREFIX = ".tmp-"  # never listed as an object by the local site, the spool or the state store


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


WRITEBACK_EVERY = 8 << 20  # a streamed file asks for writeback of each further 8 MiB
_sync_file_range = None      # libc's, resolved on first use; False where unavailable


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` of ``fd`` from ``offset`` to disk now, without
    waiting for it (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, as PostgreSQL's
    ``*_flush_after`` does). Durability still comes only from the fsync at commit; this only
    means that fsync finds little left to write instead of the whole file. A no-op elsewhere."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            _sync_file_range = fn
        except (OSError, AttributeError, ImportError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure is left to fsync


def give_dir_owner(fd: int, directory: str | os.PathLike) -> None:
    """As root, give a file just created its directory's owner (when that is not root): state
    and spool files root writes stay readable and writable by the PostgreSQL user who owns
    those directories (see pgvault.statedir). A no-op for other users."""
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def mkdirs(path: str | os.PathLike, mode: int = 0o700) -> Path:
    """``mkdir -p``; as root, each directory created takes its parent's owner (as files do)."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        if os.geteuid() == 0:
            st = os.stat(d.parent)
            if st.st_uid != 0:
                os.lchown(d, st.st_uid, st.st_gid)
    return path


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o600, sync: bool = True,
                 mkdir: bool = False, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once: a temp file beside it, written in full,
    (fsynced), renamed over it, (directory fsynced). A crash leaves the old file or the new one.
    ``sync_dir=False`` leaves the directory's fsync to a caller writing several files there."""
    path = Path(path)
    if mkdir:
        mkdirs(path.parent)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        give_dir_owner(fd, path.parent)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync and sync_dir:
        fsync_dir(path.parent)
