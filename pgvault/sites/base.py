"""The Site contract: a handful of primitives every driver implements identically.

- ``writer(key)`` returns a Writer; bytes written to it become visible under ``key`` only when
  ``commit()`` returns, all at once. ``abort()`` (or an exception inside ``with``) leaves nothing
  under ``key``. Committing over an existing key replaces it atomically (callers that must not
  overwrite check first: see ``put_if_absent``).
- ``get(key)`` returns a readable binary stream; a missing key raises ``ObjectNotFound`` on
  every driver.
- ``list(prefix)`` yields ObjectInfo for every committed object whose key starts with prefix,
  in key order; temporary/in-flight data is never listed.
- ``delete(key)`` is idempotent: deleting a missing key succeeds.
- ``describe()`` names the location without credentials.

Hashing and compression are stream wrappers above this (pgvault.catalog.streams); retry and
fault injection are Sites that wrap a Site (pgvault.sites.wrappers).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol

from ..errors import ObjectNotFound

CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Site(Protocol):
    name: str

    def writer(self, key: str) -> Writer: ...
    def get(self, key: str) -> BinaryIO: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def describe(self) -> str: ...


class WriterMixin:
    """Context-manager behaviour shared by drivers' writers: commit on success, abort on error."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def put_bytes(site: Site, key: str, data: bytes) -> None:
    w = site.writer(key)
    try:
        w.write(data)
    except BaseException:
        w.abort()
        raise
    w.commit()


def put_stream(site: Site, key: str, stream: BinaryIO) -> int:
    w = site.writer(key)
    n = 0
    try:
        while chunk := stream.read(CHUNK):
            w.write(chunk)
            n += len(chunk)
    except BaseException:
        w.abort()
        raise
    w.commit()
    return n


def get_bytes(site: Site, key: str) -> bytes:
    with site.get(key) as fh:
        return fh.read()


def exists(site: Site, key: str) -> bool:
    return site.head(key) is not None


def get_or_none(site: Site, key: str) -> bytes | None:
    try:
        return get_bytes(site, key)
    except ObjectNotFound:
        return None


class ClosingBytesIO(io.BytesIO):
    pass
