"""One directory tree (PGDATA or a tablespace) as a tar stream, read once, checked as read.

``TreeTar`` is a readable stream (``read()`` returns the next piece, any size): the backup
engine hands it to the shared stream path (``BackupSession.add_stream``), which compresses it
and writes it to every site. While it reads, it records each file's size and sha256 (the
per-file manifest) and, when data checksums are on, verifies relation pages (pagecheck.py).

Files are read up to the size they had when listed (as pg_basebackup does): a relation that
grows or shrinks meanwhile is repaired by WAL replay from the backup's start; a shrunk file is
padded with zeros so the tar stays well-formed. ``tail()`` entries (``backup_label``, known only
after ``pg_backup_stop``) are appended after every file, and ``global/pg_control`` goes last
among the files, as pg_basebackup and Barman order it."""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Callable, Iterator

import numpy as np

from . import pagecheck

PIECE = 4 << 20        # read unit: whole pages, one lz4 block
# Files below this are page-checked in batches: one numpy pass costs the same ~270 vector calls
# for one page as for 512, and PGDATA holds hundreds of catalog files of a few pages each.
SMALL = 1 << 20

# What a base backup leaves out (PostgreSQL's basebackup.c excludeFiles / excludeDirContents;
# Barman's list is the same): the directories are kept, empty.
EXCLUDED_CONTENTS = ("pg_wal", "pg_dynshmem", "pg_notify", "pg_replslot", "pg_serial", "pg_snapshots",
                     "pg_stat_tmp", "pg_subtrans", "log", "pg_log")
EXCLUDED_FILES = ("postmaster.pid", "postmaster.opts", "pg_internal.init", "postgresql.auto.conf.tmp",
                  "current_logfiles.tmp", "backup_label", "tablespace_map", "recovery.signal", "standby.signal",
                  "backup_label.old", "recovery.conf")


def excluded(rel: str, is_dir: bool) -> bool:
    """Whether a path (relative to PGDATA) stays out of the base backup.

    >>> excluded("pg_wal/000000010000000000000001", False), excluded("pg_wal", True)
    (True, False)
    >>> excluded("base/5/pgsql_tmp", True), excluded("base/5/t3_16400", False), excluded("base/5/16400", False)
    (True, True, False)
    """
    name = rel.rsplit("/", 1)[-1]
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    if parent in EXCLUDED_CONTENTS or (parent == "pg_wal/archive_status"):
        return not (rel == "pg_wal/archive_status")
    if name.startswith("pgsql_tmp"):
        return True
    if is_dir:
        return False
    return name in EXCLUDED_FILES or fnmatch(name, "t[0-9]*_[0-9]*")


class Hasher:
    """Per-file sha256 on a thread of its own (hashlib releases the GIL): the reading thread
    hands each piece over and moves on. At most ``depth`` pieces wait, so memory stays bounded
    when hashing is the slower side."""

    def __init__(self, depth: int = 8):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="pgvault-sha")
        self.room = threading.BoundedSemaphore(depth)

    def update(self, sha, data: bytes) -> None:
        self.room.acquire()
        self.pool.submit(self._update, sha, data)

    def _update(self, sha, data: bytes) -> None:
        try:
            sha.update(data)
        finally:
            self.room.release()

    def hexdigest(self, sha) -> Future:
        return self.pool.submit(sha.hexdigest)     # after every update submitted before it

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class BadPage:
    file: str                  # relative to the tar's root
    block: int

    def __str__(self) -> str:
        return f"{self.file} block {self.block}"


@dataclass
class TreeTar:
    """The tar of ``root``; ``prefix`` (e.g. ``PG_15_202209061``) limits a tablespace to its
    version directory. ``check_from``: verify page checksums of pages older than this LSN
    (None: data checksums are off). ``skip``: relative paths left out (tablespace links)."""

    root: str
    name: str                                   # what the tar is, for messages ("data", "16390")
    check_from: int | None = None
    prefix: str | None = None
    skip: frozenset = frozenset()
    last: tuple = ()                            # relative paths sent after every other file
    tail: Callable[[], list[tuple[str, bytes]]] | None = None
    files: dict = field(default_factory=dict)   # rel -> {"size", "sha256"}
    bad_pages: list = field(default_factory=list)
    pages_checked: int = 0
    bytes_read: int = 0

    def __post_init__(self):
        self._hasher = Hasher()
        self._gen = self._entries()
        self._batch: list[tuple[str, bytes, int]] = []   # (rel, whole pages, first block) to check
        self._batch_bytes = 0

    def read(self, n: int = -1) -> bytes:
        return next(self._gen, b"")

    # -- the tree

    def _walk(self) -> Iterator[tuple[str, os.stat_result]]:
        top = [self.prefix] if self.prefix else sorted(os.listdir(self.root))
        stack = list(reversed(top))
        later = []
        while stack:
            rel = stack.pop()
            full = os.path.join(self.root, rel)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue                         # dropped meanwhile: WAL replay knows
            is_dir = stat.S_ISDIR(st.st_mode)
            if rel in self.skip or excluded(rel, is_dir):
                continue
            if rel in self.last:
                later.append((rel, st))
                continue
            yield rel, st
            if is_dir:
                try:
                    children = sorted(os.listdir(full), reverse=True)
                except FileNotFoundError:
                    continue
                stack.extend(f"{rel}/{c}" for c in children)
        yield from later

    def _entries(self) -> Iterator[bytes]:
        for rel, st in self._walk():
            info = tarfile.TarInfo(rel)
            info.mtime = int(st.st_mtime)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                yield info.tobuf(tarfile.GNU_FORMAT)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(os.path.join(self.root, rel))
                yield info.tobuf(tarfile.GNU_FORMAT)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                yield info.tobuf(tarfile.GNU_FORMAT)
                yield from self._file(rel, st.st_size)
        self._check_batch()
        try:
            for rel, data in (self.tail() if self.tail else []):
                info = tarfile.TarInfo(rel)
                info.size, info.mode = len(data), 0o600
                yield info.tobuf(tarfile.GNU_FORMAT)
                yield from self._pad(data, rel)
        finally:
            self._hasher.close()
        for entry in self.files.values():
            if isinstance(entry["sha256"], Future):
                entry["sha256"] = entry["sha256"].result()
        yield b"\0" * (2 * tarfile.BLOCKSIZE)

    def _pad(self, data: bytes, rel: str) -> Iterator[bytes]:
        self.files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        yield data
        if len(data) % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE)

    def _file(self, rel: str, size: int) -> Iterator[bytes]:
        sha = hashlib.sha256()
        checked, first_block = pagecheck.checked_file(rel) if self.check_from is not None else (False, 0)
        full = os.path.join(self.root, rel)
        sent = 0
        try:
            fh = open(full, "rb", buffering=0)
        except FileNotFoundError:
            fh = None                            # dropped since listed: zeros, replay removes it
        try:
            while fh is not None and sent < size:
                data = fh.read(min(PIECE, size - sent))
                if not data:
                    break
                if checked and len(data) >= pagecheck.BLCKSZ:
                    if sent == 0 and len(data) == size < SMALL:
                        self._batched(rel, data, first_block)
                    else:
                        self._check(fh, rel, data, first_block + sent // pagecheck.BLCKSZ, sent)
                self._hasher.update(sha, data)
                sent += len(data)
                self.bytes_read += len(data)
                yield data
        finally:
            if fh is not None:
                fh.close()
        if sent < size:                          # shrunk meanwhile (truncated relation)
            zeros = b"\0" * (size - sent)
            self._hasher.update(sha, zeros)
            yield zeros
        self.files[rel] = {"size": size, "sha256": self._hasher.hexdigest(sha)}
        if size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)

    def _batched(self, rel: str, data: bytes, block0: int) -> None:
        whole = len(data) // pagecheck.BLCKSZ * pagecheck.BLCKSZ
        self._batch.append((rel, data[:whole] if whole < len(data) else data, block0))
        self._batch_bytes += whole
        if self._batch_bytes >= PIECE:
            self._check_batch()

    def _check_batch(self) -> None:
        """Check the small files gathered so far in one pass; a failing page is read again
        from its file, as in ``_check``."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        owners = [(rel, block0 + i, i * pagecheck.BLCKSZ)
                  for rel, data, block0 in batch for i in range(len(data) // pagecheck.BLCKSZ)]
        self.pages_checked += len(owners)
        blocks = np.fromiter((b for _r, b, _o in owners), dtype=np.int64, count=len(owners))
        for i in pagecheck.bad_indexes(b"".join(d for _r, d, _b in batch), blocks, self.check_from):
            rel, block, at = owners[i]
            try:
                with open(os.path.join(self.root, rel), "rb", buffering=0) as fh:
                    again = os.pread(fh.fileno(), pagecheck.BLCKSZ, at)
            except FileNotFoundError:
                continue                         # dropped since read: WAL replay removes it
            if len(again) == pagecheck.BLCKSZ and not pagecheck.bad_pages(again, block, self.check_from):
                continue
            self.bad_pages.append(BadPage(rel, block))

    def _check(self, fh, rel: str, data: bytes, block0: int, offset: int) -> None:
        n = len(data) // pagecheck.BLCKSZ
        self.pages_checked += n
        for block in pagecheck.bad_pages(data, block0, self.check_from):
            # A page being written while we read can be torn: read it once more (pgBackRest
            # does the same); a page written since the backup began is exempt (WAL has it).
            at = offset + (block - block0) * pagecheck.BLCKSZ
            again = os.pread(fh.fileno(), pagecheck.BLCKSZ, at)
            if len(again) == pagecheck.BLCKSZ and not pagecheck.bad_pages(again, block, self.check_from):
                continue
            self.bad_pages.append(BadPage(rel, block))
