"""One WAL file on its way through wal-push (``Item``: its bytes, its compressed blob, the
sealed copies per recipient set, what each site did with it), how it is read from pg_wal, and
how a site is asked whether it already holds a file. Light on purpose: ``wal-fetch`` and the
drills import ``stored_variants`` without loading the archiver."""
from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import layout
from ..errors import PgvaultError
from . import codec, names


@dataclass
class Item:
    """One WAL file on its way: raw bytes, compressed blob, and what each site did with it."""

    name: str
    stored: str
    blob_future: Future | None = None
    blob: bytes | None = None
    raw: bytes | None = None
    error: PgvaultError | None = None
    done_sites: set = field(default_factory=set)  # sites whose task for it has finished
    stored_at: set = field(default_factory=set)   # sites that hold it now
    spool_for: set = field(default_factory=set)   # sites that failed: owed through the spool
    late: bool = False  # a site's task still runs past the grace (it will read the bytes)
    quarantined: set = field(default_factory=set)  # sites that hold it under quarantine/, not in wals/
    sealed: dict = field(default_factory=dict)  # recipients -> the blob encrypted to them (once per set)
    seal_lock: threading.Lock = field(default_factory=threading.Lock)

    def data(self) -> bytes:
        if self.blob is None and self.blob_future is not None:
            self.blob = self.blob_future.result()
        return self.blob

    def stored_bytes(self, recipients: tuple) -> bytes:
        """What a site with ``recipients`` stores: the blob, or the blob encrypted to them —
        once per recipient set however many sites share it (two threads may race to seal it
        first: both results are valid, one is kept)."""
        if not recipients:
            return self.data()
        with self.seal_lock:  # sites sharing a recipient set wait for the first to seal it
            out = self.sealed.get(recipients)
            if out is None:
                out = self.sealed[recipients] = codec.seal(self.data(), recipients)
        return out

    def content(self, compression: str) -> bytes:
        if self.raw is None:
            self.raw = codec.decompress(self.data(), compression)
        return self.raw


@dataclass
class PushResult:
    items: list[Item]
    drained: dict[str, int]

    @property
    def requested(self) -> Item:
        return self.items[0]


def stored_variants(site, cluster: str, name: str) -> list[str]:
    """Keys under which ``site`` already holds ``name`` (any compression suffix)."""
    keys = [layout.wal_key(cluster, name, s) for s in names.SUFFIXES.values()]
    if site.capabilities.cheap_head:  # a stat per variant is cheaper than walking the directory
        return [k for k in keys if site.head(k) is not None]
    base = layout.wal_key(cluster, name)
    return [o.key for o in site.list(base) if o.key in keys]


def read_wal(path: Path):
    """The file's bytes: a segment is mapped (read-only, populated from the page cache in one
    call) rather than read — copying 16 MiB into fresh memory cost a quarter of the CPU of
    compressing it (see docs/wal-archiving.md, "Performance"). PostgreSQL never rewrites or
    truncates a segment waiting to be archived; the mapping goes with the last reference."""
    if not names.has_header(path.name):
        return path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size < (1 << 20):
            return os.read(fd, 1 << 20)  # too short to be a segment: load() says why
        return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
    finally:
        os.close(fd)
